"""Pure money rules, in integer micro-euros.

- hold = (cap per DTU-hour x DTU rate + cap per GPU-hour x GPUs) x expected hours, rounded UP (the
  hold covers the caps). It is a pending transfer: posted (in steps), voided or expired exactly once.
- For the billable use so far (metering's cumulative DTU-hours; GPU-hours = GPUs x wall time), the
  exact amounts are   vendor = price per DTU-h x DTU-h + price per GPU-h x GPU-h,
                      fee    = vendor x fee_bps / 10,000.
  The vendor's share and the fee are each rounded DOWN to a micro-euro; the consumer pays their
  exact sum rounded half up; the 0-2 micro-euros between them go to the rounding account, where an
  auditor sees them. The consumer never pays more than the hold: when the use outgrows it, the
  consumer pays exactly the hold and the fee is cut first, then the vendor's share.
- Long jobs pay as they go: each reading posts the increase of the vendor's share and the fee
  (both monotone in the use); the rounding is posted with the final reading. A running charge stops
  two micro-euros short of the hold, which leaves the final split room for its rounding.
- Disputed use (metering's witness does not support it): that part of the vendor's share is held in
  the vendor's dispute account, not paid. What was already paid is not clawed back; a dispute that
  shrinks releases its excess to the vendor.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal, localcontext

RUNNING_MARGIN = 2  # micro-euros a running charge leaves in the hold for the final rounding


def _round(d: Decimal, rounding: str = ROUND_HALF_UP) -> int:
    return int(d.to_integral_value(rounding=rounding))


def hold_amount(cap_micro_eur_per_dtu_hour: int, dtu_rate: Decimal, expected_duration_s: int,
                gpus: int = 0, cap_micro_eur_per_gpu_hour: int = 0) -> int:
    # wide enough that no digit is lost before rounding up, whatever a valid manifest asks for
    with localcontext() as ctx:
        ctx.prec = 80
        per_hour = Decimal(cap_micro_eur_per_dtu_hour) * dtu_rate + gpus * cap_micro_eur_per_gpu_hour
        return _round(per_hour * expected_duration_s / 3600, ROUND_CEILING)


def gpu_micro_hours(gpus: int, wall_us: int) -> int:
    return _round(Decimal(gpus) * wall_us / 3600)


@dataclass(frozen=True)
class Paid:
    """What a hold has paid so far, cumulative: the vendor, its dispute account, the fee, the rounding."""

    vendor: int = 0
    disputed: int = 0
    fee: int = 0
    rounding: int = 0

    @property
    def total(self) -> int:
        return self.vendor + self.disputed + self.fee + self.rounding


@dataclass(frozen=True)
class Use:
    """Billable use so far (cumulative) and the prices it is charged at."""

    price_micro_eur_per_dtu_hour: int
    dtu_micro_hours: int
    price_micro_eur_per_gpu_hour: int = 0
    gpu_micro_hours: int = 0
    disputed_dtu_micro_hours: int = 0


def _exact_vendor(price_dtu: int, dtu: int, price_gpu: int, gpu: int) -> Decimal:
    return (Decimal(price_dtu) * dtu + Decimal(price_gpu) * gpu) / 1_000_000


def paid_after(hold: int, use: Use, fee_bps: int, before: Paid, *, final: bool) -> Paid:
    """What the hold has paid once `use` is charged, given what it paid `before`.

    Every component except the dispute account only grows, so each step is a set of non-negative
    transfers (see the module docstring); the total never exceeds the hold.
    """
    with localcontext() as ctx:
        ctx.prec = 80
        ev = _exact_vendor(use.price_micro_eur_per_dtu_hour, use.dtu_micro_hours,
                           use.price_micro_eur_per_gpu_hour, use.gpu_micro_hours)
        ef = ev * fee_bps / 10_000
        undisputed = _exact_vendor(use.price_micro_eur_per_dtu_hour,
                                   max(0, use.dtu_micro_hours - use.disputed_dtu_micro_hours),
                                   use.price_micro_eur_per_gpu_hour, use.gpu_micro_hours)
        v_full, f_full = _round(ev, ROUND_FLOOR), _round(ef, ROUND_FLOOR)
        consumer = _round(ev + ef)
        u_full = _round(undisputed, ROUND_FLOOR)
    vendor_before = before.vendor + before.disputed
    if not final:
        if v_full + f_full > hold - RUNNING_MARGIN:
            return before  # the use outgrew the hold: the final reading splits what is left
        vendor_all, fee, rounding = max(v_full, vendor_before), max(f_full, before.fee), before.rounding
    elif consumer <= hold:
        vendor_all, fee = max(v_full, vendor_before), max(f_full, before.fee)
        rounding = max(before.rounding, consumer - vendor_all - fee)
    else:  # capped: the consumer pays the hold; the fee keeps what it has and is cut before the vendor
        fee = max(before.fee, min(f_full, hold - min(v_full, hold)))
        vendor_all = max(vendor_before, min(v_full, hold - fee))
        rounding = max(before.rounding, hold - vendor_all - fee)
    vendor = max(before.vendor, min(u_full, vendor_all))
    return Paid(vendor=vendor, disputed=vendor_all - vendor, fee=fee, rounding=rounding)


def fee_on_disputed(fee: int, disputed: int, vendor: int) -> int:
    """The part of a job's fee charged on its disputed use: pro rata to the vendor's claim, floored.

    A dispute decided for the tenant refunds it with the disputed amount: the exchange keeps no fee on use
    that was not shown to be delivered. The rounding (at most 2 micro-euros) stays where it is.
    """
    return fee * disputed // (vendor + disputed) if vendor + disputed else 0
