"""How smctl shows things: rich tables for people, JSON or YAML for scripts. Money is shown in EUR
with 6 decimals from integer micro-euros (Decimal, never float)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from decimal import Decimal
from enum import Enum
from typing import Any, Iterable

import yaml
from rich.console import Console
from rich.table import Table
from rich.text import Text

from clients.sdk.client import CancelOutcome, field_errors, format_dtu_hours, format_eur


class Output(str, Enum):
    table = "table"
    json = "json"
    yaml = "yaml"


STATUS_STYLE = {
    "rejected": "red", "failed": "red", "expired": "red", "waiting": "yellow", "accepted": "cyan",
    "matched": "cyan", "placed": "cyan", "running": "blue", "finished": "green", "metered": "green",
    "settled": "bold green", "cancelled": "magenta",
}


def emit_data(console: Console, data: Any, output: Output) -> None:
    """JSON or YAML of a query result, printed without markup or wrapping."""
    if output is Output.json:
        text = json.dumps(data, indent=2, default=str)
    else:
        text = yaml.safe_dump(_plain(data), sort_keys=False, allow_unicode=True).rstrip()
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _plain(data: Any) -> Any:
    # YAML of what JSON would show: UUIDs, Decimals and times as strings
    return json.loads(json.dumps(data, default=str))


def eur(micro: Any) -> str:
    return "-" if micro is None else format_eur(micro)


def short_time(value: Any) -> str:
    """An ISO time as `YYYY-MM-DD HH:MM:SS` in UTC; anything else as it is."""
    if not value:
        return "-"
    try:
        t = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return str(value)
    if t.tzinfo is not None:
        t = t.astimezone(timezone.utc)
    return t.strftime("%Y-%m-%d %H:%M:%S")


def num(value: Any) -> str:
    """A quantity (vCPUs, GiB) without a trailing `.0`: 117.0 -> 117, 1.50 -> 1.5."""
    if value is None:
        return "-"
    try:
        d = Decimal(str(value))
    except ArithmeticError:
        return str(value)
    if not d.is_finite():
        return str(value)
    d = d.normalize()
    return f"{d:f}"


def status_text(status: Any) -> Text:
    s = str(status or "-")
    return Text(s, style=STATUS_STYLE.get(s, ""))


def _t(value: Any) -> Text:
    """A cell from data: never interpreted as rich markup."""
    return Text("-" if value is None or value == "" else str(value))


def jobs_table(jobs: list[dict[str, Any]]) -> Table:
    table = Table(title=f"jobs ({len(jobs)})", title_justify="left")
    for col in ("TENANT", "NAME", "STATUS", "OUTCOME", "VENDOR", "NODE", "SUBMITTED", "UPDATED"):
        table.add_column(col, no_wrap=col in ("NAME", "STATUS"))
    table.add_column("TOTAL EUR", justify="right", no_wrap=True)
    for j in jobs:
        table.add_row(_t(j.get("tenant")), _t(j.get("name")), status_text(j.get("status")), _t(j.get("outcome")),
                      _t(j.get("vendor")), _t(j.get("node")), _t(short_time(j.get("submitted_at"))),
                      _t(short_time(j.get("updated_at"))), _t(eur(j.get("total_micro_eur"))))
    return table


def sort_offers(offers: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(offers, key=lambda o: (int(o.get("price_micro_eur_per_dtu_hour") or 0), str(o.get("vendor")),
                                         str(o.get("node"))))


def offers_table(offers: list[dict[str, Any]], total: int) -> Table:
    title = f"offers (cheapest {len(offers)} of {total})" if len(offers) < total else f"offers ({total})"
    table = Table(title=title, title_justify="left")
    for col in ("VENDOR", "NODE", "REGION", "COUNTRY", "EU"):
        table.add_column(col, no_wrap=col in ("VENDOR", "NODE"))
    for col in ("VCPU", "MEM GiB", "GPU", "EUR/DTU-h", "FREE VCPU"):
        table.add_column(col, justify="right", no_wrap=col == "EUR/DTU-h")
    table.add_column("UNTIL")
    for o in offers:
        gpu = f"{o.get('gpu_count')} {o.get('gpu_model') or ''}".strip() if o.get("gpu_count") else "-"
        price = eur(o.get("price_micro_eur_per_dtu_hour")) + ("*" if o.get("illustrative") else "")
        table.add_row(_t(o.get("vendor")), _t(o.get("node")), _t(o.get("region")), _t(o.get("country")),
                      _t("yes" if o.get("eu") else "no"), _t(num(o.get("vcpu"))), _t(num(o.get("memory_gib"))),
                      _t(gpu), _t(price), _t(num(o.get("free_vcpu"))), _t(short_time(o.get("available_until"))))
    if any(o.get("illustrative") for o in offers):
        table.caption = "* illustrative price (made up for the demo)"
    return table


def vendors_table(vendors: list[dict[str, Any]]) -> Table:
    table = Table(title=f"vendors ({len(vendors)})", title_justify="left")
    for col in ("VENDOR", "REGION", "COUNTRY", "EU"):
        table.add_column(col)
    for col in ("OFFERS", "FROM EUR/DTU-h", "FREE VCPU"):
        table.add_column(col, justify="right", no_wrap=True)
    for v in sorted(vendors, key=lambda v: str(v.get("vendor"))):
        table.add_row(_t(v.get("vendor")), _t(v.get("region")), _t(v.get("country")),
                      _t("yes" if v.get("eu") else "no"), _t(v.get("offers")),
                      _t(eur(v.get("min_price_micro_eur_per_dtu_hour"))), _t(num(v.get("free_vcpu"))))
    return table


def detail_text(entry: dict[str, Any]) -> str:
    """A timeline entry's detail on one line; a rejection as its `field: reason` list."""
    detail = entry.get("detail")
    if entry.get("type") == "JobRejected":
        return "; ".join(str(e) for e in field_errors(detail)) or "-"
    if detail is None or detail == "":
        return "-"
    if isinstance(detail, dict):
        return ", ".join(f"{k}={_money_aware(k, v)}" for k, v in detail.items())
    if isinstance(detail, list):
        return "; ".join(str(d) for d in detail)
    return str(detail)


def _money_aware(key: str, value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        if key.endswith("micro_eur") or "micro_eur_per" in key:
            return f"{format_eur(value)} EUR"
        if key == "dtu_micro_hours":
            return f"{format_dtu_hours(value)} DTU-h"
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return str(value)


# the order of a job's life, for timeline entries with equal times (a derived event carries the time
# of the event that caused it, so a whole chain can share one timestamp)
LIFECYCLE = ("JobRejected", "JobResubmitted", "JobAccepted", "JobUnmatchable", "JobMatched", "WorkloadAssigned",
             "WorkloadStarted", "WorkloadFinished", "WorkloadFailed", "MeterClosed", "ChargePosted",
             "JobExpired", "JobCancelRefused", "JobCancelRepeated", "JobCancelled", "WorkloadCancelRequested",
             "WorkloadCancelled")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _when(value: Any) -> datetime:
    try:
        t = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return _EPOCH
    return t if t.tzinfo is not None else t.replace(tzinfo=timezone.utc)


def order_timeline(entries: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Entries by time, and in lifecycle order where times are equal (stable otherwise)."""
    rank = {t: i for i, t in enumerate(LIFECYCLE)}
    return sorted(entries, key=lambda e: (_when(e.get("time")), rank.get(str(e.get("type")), len(rank))))


def timeline_table(entries: list[dict[str, Any]]) -> Table:
    table = Table(title="timeline", title_justify="left")
    for col in ("TIME", "EVENT", "SOURCE"):
        table.add_column(col, no_wrap=True)
    table.add_column("DETAIL", overflow="fold")
    for e in order_timeline(entries):
        style = "red" if e.get("type") in ("JobRejected", "WorkloadFailed", "JobExpired", "JobUnmatchable",
                                           "JobCancelRefused") else ""
        table.add_row(_t(short_time(e.get("time"))), Text(str(e.get("type") or "-"), style=style),
                      _t(e.get("source")), _t(detail_text(e)))
    return table


def cancel_line(outcome: CancelOutcome) -> Text:
    """What a cancel did, in one line (a refusal is an error: smctl prints it on stderr)."""
    who = f"{outcome.tenant}/{outcome.name}"
    if outcome.already:
        return Text(f"job {who} is cancelled already; nothing changed")
    line = Text(f"job {who} ")
    line.append("cancelled", style="magenta")
    if outcome.previous_status == "running":
        line.append(" while running: its vendor stops it; only what it used is charged")
    elif outcome.previous_status:
        line.append(f" (it was {outcome.previous_status}): nothing ran, nothing is charged")
    return line


JOB_FIELDS = ("job_id", "tenant", "name", "status", "outcome", "vendor", "node", "submitted_at", "updated_at",
              "total_micro_eur")


def job_fields_table(job: dict[str, Any]) -> Table:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for key in JOB_FIELDS:
        if key not in job:
            continue
        value = job[key]
        if key == "status":
            cell = status_text(value)
        elif key == "total_micro_eur":
            key, cell = "total EUR", _t(eur(value))
        elif key.endswith("_at"):
            cell = _t(short_time(value))
        else:
            cell = _t(value)
        table.add_row(key, cell)
    return table


def explain_lines(ex: dict[str, Any]) -> list[Any]:
    """`smctl explain job`: what the job has, what it could have now, and per constraint what it excluded."""
    head = Table(show_header=False, box=None, pad_edge=False)
    head.add_column(style="bold")
    head.add_column()
    head.add_row("job", _t(f"{ex.get('tenant')}/{ex.get('name')}"))
    head.add_row("status", status_text(ex.get("status")))
    booked = ex.get("booked")
    if booked:
        when = f"from {short_time(booked.get('start_at'))} to {short_time(booked.get('end_at'))}"
        left = booked.get("left_book_at")
        gone = f"; its offer left the book at {short_time(left)}" if left else ""
        head.add_row("booked", _t(f"{booked.get('vendor')}/{booked.get('node')} {when}{gone}"))
    head.add_row("offers", _t(f"{ex.get('offers')} in the book at {short_time(ex.get('at'))}, "
                              f"{ex.get('fit')} fit the job"))
    best = ex.get("best_now")
    if best:
        price = f"{eur(best.get('price_micro_eur_per_dtu_hour'))}/DTU-h"
        if best.get("price_micro_eur_per_gpu_hour") is not None:
            price += f" + {eur(best.get('price_micro_eur_per_gpu_hour'))}/GPU-h"
        when = f"from {short_time(best.get('start_at'))} to {short_time(best.get('end_at'))}"
        where = f"{best.get('vendor')}/{best.get('node')} ({best.get('region')})"
        head.add_row("best now", _t(f"{where} {when} at {price}"))
    else:
        head.add_row("best now", Text("nothing fits", style="yellow"))
    table = Table(title="per constraint, in the order they are checked", title_justify="left")
    table.add_column("CONSTRAINT", no_wrap=True)
    table.add_column("EXCLUDED", justify="right", no_wrap=True)
    table.add_column("NEAREST MISS")
    for c in ex.get("constraints") or []:
        n = int(c.get("excluded") or 0)
        table.add_row(_t(c.get("constraint")), Text(str(n), style="red" if n else "green"), _t(c.get("detail") or ""))
    return [head, table]


def ledger_lines(result: dict[str, Any]) -> list[Text]:
    out = []
    for c in result.get("checks") or []:
        ok = bool(c.get("ok"))
        line = Text("✓ " if ok else "✗ ", style="green" if ok else "red")
        line.append(str(c.get("name") or "?"), style="bold")
        if c.get("detail") not in (None, ""):
            line.append(f"  {c.get('detail')}")
        out.append(line)
    verdict = bool(result.get("ok"))
    out.append(Text("ledger ok" if verdict else "ledger NOT ok", style="bold green" if verdict else "bold red"))
    return out
