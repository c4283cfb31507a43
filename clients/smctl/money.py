"""smctl's money views: report periods, invoices and payout statements as tables or CSV, disputes."""

from __future__ import annotations

import csv
import io
from datetime import date, datetime, timezone
from decimal import Decimal
from enum import Enum
from typing import Any

from rich.table import Table
from rich.text import Text

from clients.sdk.client import format_dtu_hours
from clients.smctl.render import eur, short_time


class ReportOutput(str, Enum):
    table = "table"
    json = "json"
    yaml = "yaml"
    csv = "csv"


class PeriodError(ValueError):
    """A report period the user typed is not a time we can use; the message names the option."""


def parse_when(value: str | None, option: str) -> datetime | None:
    """`2026-12-01` (that day, 00:00 UTC) or an ISO 8601 time WITH a time zone; anything else is refused."""
    if value is None:
        return None
    try:
        if len(value) == 10:
            return datetime.combine(date.fromisoformat(value), datetime.min.time(), tzinfo=timezone.utc)
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise PeriodError(f"{option}: {value!r} is not a date (2026-12-01) or a time (2026-12-01T08:00:00Z)") from None
    if t.tzinfo is None or t.utcoffset() is None:
        raise PeriodError(f"{option}: {value!r} has no time zone (add Z or +01:00)")
    return t


def period_text(since: datetime | None, until: datetime | None) -> str:
    """"all time", or "from A to B" with "the start" and "now" for an open end."""
    if since is None and until is None:
        return "all time"
    start = short_time(since.isoformat()) if since else "the start"
    return f"from {start} to {short_time(until.isoformat()) if until else 'now'}"


def _micro_eur(v: Any) -> str:
    return f"{Decimal(int(v or 0)) / 1_000_000:.6f}"


def _hours(v: Any) -> str:
    return f"{Decimal(int(v or 0)) / 1_000_000:.6f}"


LINE_COLUMNS = [
    ("job", lambda ln: ln.get("name")), ("job_id", lambda ln: ln.get("job_id")),
    ("tenant", lambda ln: ln.get("tenant")), ("vendor", lambda ln: ln.get("vendor")),
    ("dtu_hours", lambda ln: _hours(ln.get("dtu_micro_hours"))),
    ("eur_per_dtu_hour", lambda ln: _micro_eur(ln.get("price_micro_eur_per_dtu_hour"))),
    ("gpu_hours", lambda ln: _hours(ln.get("gpu_micro_hours"))),
    ("eur_per_gpu_hour", lambda ln: _micro_eur(ln.get("price_micro_eur_per_gpu_hour"))),
    ("vendor_eur", lambda ln: _micro_eur(ln.get("vendor_micro_eur"))),
    ("disputed_eur", lambda ln: _micro_eur(ln.get("disputed_micro_eur"))),
    ("fee_eur", lambda ln: _micro_eur(ln.get("fee_micro_eur"))),
    ("rounding_eur", lambda ln: _micro_eur(ln.get("rounding_micro_eur"))),
    ("total_eur", lambda ln: _micro_eur(ln.get("total_micro_eur"))),
    ("status", lambda ln: ln.get("status")), ("last_charged_at", lambda ln: ln.get("at")),
]


def lines_csv(lines: list[dict[str, Any]]) -> str:
    """One row per job, exact euros with 6 decimals: what a spreadsheet or an accounting import reads."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([name for name, _ in LINE_COLUMNS])
    for ln in lines:
        w.writerow(["" if (v := get(ln)) is None else str(v) for _, get in LINE_COLUMNS])
    return buf.getvalue()


def _sum(lines: list[dict[str, Any]], key: str) -> int:
    return sum(int(ln.get(key) or 0) for ln in lines)


def lines_table(title: str, lines: list[dict[str, Any]], *, who: str) -> Table:
    """Invoice (who="vendor") or statement (who="tenant") lines with totals in the footer."""
    table = Table(title=title, title_justify="left", show_footer=True)
    table.add_column("JOB", footer="total")
    table.add_column(who.upper(), footer="")
    table.add_column("DTU-h", justify="right", footer=format_dtu_hours(_sum(lines, "dtu_micro_hours")))
    table.add_column("EUR/DTU-h", justify="right", footer="")
    gpus = any(int(ln.get("gpu_micro_hours") or 0) for ln in lines)
    if gpus:
        table.add_column("GPU-h", justify="right", footer=format_dtu_hours(_sum(lines, "gpu_micro_hours")))
        table.add_column("EUR/GPU-h", justify="right", footer="")
    money = [("VENDOR EUR", "vendor_micro_eur"), ("DISPUTED EUR", "disputed_micro_eur"), ("FEE EUR", "fee_micro_eur"),
             ("ROUNDING EUR", "rounding_micro_eur"), ("TOTAL EUR", "total_micro_eur")]
    for header, key in money:
        table.add_column(header, justify="right", footer=Text(eur(_sum(lines, key)),
                                                              style="bold" if key == "total_micro_eur" else ""))
    table.add_column("STATUS", footer="")
    table.add_column("LAST CHARGE", footer="")
    for ln in lines:
        gpu_cells = [format_dtu_hours(int(ln.get("gpu_micro_hours") or 0)),
                     eur(ln.get("price_micro_eur_per_gpu_hour"))] if gpus else []
        table.add_row(Text(str(ln.get("name"))), Text(str(ln.get(who))),
                      format_dtu_hours(int(ln.get("dtu_micro_hours") or 0)),
                      eur(ln.get("price_micro_eur_per_dtu_hour")),
                      *gpu_cells, *[eur(ln.get(key)) for _, key in money], Text(str(ln.get("status") or "-")),
                      short_time(ln.get("at")))
    return table


def disputes_table(disputes: list[dict[str, Any]]) -> Table:
    table = Table(title="disputes: the vendor's claim vs metering's independent measurement", title_justify="left")
    for col in ("JOB", "TENANT", "VENDOR", "CLAIMED DTU-h", "WITNESS DTU-h", "DISPUTED DTU-h", "HELD EUR", "STATUS",
                "OPENED"):
        table.add_column(col, justify="right" if "DTU" in col or "EUR" in col else "left")
    for d in disputes:
        witness = d.get("witness_dtu_micro_hours")
        status = d.get("status")
        table.add_row(Text(str(d.get("name"))), Text(str(d.get("tenant"))), Text(str(d.get("vendor"))),
                      format_dtu_hours(int(d.get("claimed_dtu_micro_hours") or 0)),
                      "-" if witness is None else format_dtu_hours(int(witness)),
                      format_dtu_hours(int(d.get("disputed_dtu_micro_hours") or 0)), eur(d.get("held_micro_eur")),
                      Text("open" if status == "open" else f"paid to {status}",
                           style="yellow" if status == "open" else "green"), short_time(d.get("opened_at")))
    return table
