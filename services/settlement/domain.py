"""Pure money rules, in integer micro-euros (rounded half up where a fraction arises).

- hold   = (cap per DTU-hour x DTU rate + cap per GPU-hour x GPUs) x expected hours, rounded UP
  (the hold covers the caps)
- vendor = vendor's price per DTU-hour x measured DTU-hours + its price per GPU-hour x GPU-hours
  (GPUs are allocated whole: GPU-hours = GPUs x the workload's wall time)
- fee    = vendor x fee_bps / 10,000
- total  = vendor + fee, never more than the hold: the consumer never pays beyond what it allowed;
  if the measured use would exceed it, the fee is cut first, then the vendor amount
- release = hold - total
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal, localcontext


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
class Charge:
    vendor: int
    fee: int
    release: int

    @property
    def total(self) -> int:
        return self.vendor + self.fee


def charge(hold: int, price_micro_eur_per_dtu_hour: int, dtu_micro_hours: int, fee_bps: int,
           price_micro_eur_per_gpu_hour: int = 0, gpu_micro_hours: int = 0) -> Charge:
    with localcontext() as ctx:
        ctx.prec = 80
        vendor = _round((Decimal(price_micro_eur_per_dtu_hour) * dtu_micro_hours
                         + Decimal(price_micro_eur_per_gpu_hour) * gpu_micro_hours) / 1_000_000)
        fee = _round(Decimal(vendor) * fee_bps / 10_000)
    if vendor + fee > hold:
        fee = max(0, hold - vendor)
        vendor = min(vendor, hold)
    return Charge(vendor=vendor, fee=fee, release=hold - vendor - fee)
