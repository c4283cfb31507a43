"""smctl: run the exchange locally, submit jobs, and look at jobs, offers, invoices and the ledger.

Reads go through the services' request-reply queries and writes are events (see clients.sdk);
smctl never touches a database. Errors are one line on stderr and exit code 1.
"""

import asyncio
import functools
import os
import re
import sys
from dataclasses import dataclass
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Awaitable, Callable, Optional, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from clients.sdk.client import (
    CancelOutcome,
    Exchange,
    ExchangeError,
    ManifestFileError,
    Outcome,
    format_dtu_hours,
    load_manifests,
)
from clients.smctl import money, render
from clients.smctl import stack as stack_mod
from clients.smctl.render import Output, eur
from libs.common.manifest import euro_to_micro, is_dns_label

T = TypeVar("T")

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

APPLY_TIMEOUT_S = 20.0
PIPE_WIDTH = 160
_VENDOR = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

app = typer.Typer(
    name="smctl",
    help="strongmoose: an open compute exchange. Run it locally, submit jobs, follow them, read invoices.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
ledger_app = typer.Typer(help="Audit the settlement ledger.", no_args_is_help=True)
app.add_typer(ledger_app, name="ledger")
wallet_app = typer.Typer(help="A tenant's wallet: deposits and balance.", no_args_is_help=True)
app.add_typer(wallet_app, name="wallet")
ops_app = typer.Typer(help="Operate the exchange: dead letters, replay, state digests.", no_args_is_help=True)
app.add_typer(ops_app, name="ops")
dlq_app = typer.Typer(help="Messages a service could not apply, with the reason: list, show, redrive.",
                      no_args_is_help=True)
ops_app.add_typer(dlq_app, name="dlq")


@dataclass
class Settings:
    nats_url: Optional[str]  # given by --nats-url or NATS_URL; None: from the state dir, else the default


class CliError(Exception):
    """A user-facing failure: printed as one line, exit code 1."""


def fail(message: str, code: int = 1) -> typer.Exit:
    err_console.print(Text(f"error: {message}", style="red"), soft_wrap=True)
    return typer.Exit(code)


def cli_errors(fn: Callable[..., T]) -> Callable[..., T]:
    """Turn expected failures into one clear line and exit code 1; no tracebacks (SMCTL_DEBUG=1 shows them)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except (ExchangeError, ManifestFileError, stack_mod.StackError, CliError, TimeoutError) as e:
            raise fail(str(e)) from None
        except KeyboardInterrupt:
            raise fail("interrupted", code=130) from None
        except Exception as e:
            if os.environ.get("SMCTL_DEBUG"):
                raise
            raise fail(f"unexpected {type(e).__name__}: {e} (SMCTL_DEBUG=1 shows the traceback)") from None

    return wrapper


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


def nats_url_of(ctx: typer.Context) -> str:
    """--nats-url / NATS_URL, else the URL `smctl up` recorded in the default state dir.

    Never a guess: a NATS that happens to listen on the default port may be somebody else's.
    """
    settings: Settings | None = ctx.find_root().obj
    if settings and settings.nats_url:
        return settings.nats_url
    url = stack_mod.nats_url_from_state(stack_mod.DEFAULT_STATE_DIR)
    if url is None:
        raise ExchangeError(f"no exchange started here ({stack_mod.DEFAULT_STATE_DIR}/infra.json is missing): "
                            "run `smctl up`, or name one with --nats-url or NATS_URL")
    return url


async def connect(ctx: typer.Context) -> Exchange:
    return await Exchange.connect(nats_url_of(ctx))


StateDir = Annotated[Path, typer.Option("--state-dir", envvar="SMCTL_STATE_DIR",
                                        help="Where servers, pids and logs of the local stack live.")]
OutputOpt = Annotated[Output, typer.Option("--output", "-o", help="table, json or yaml.")]
TenantOpt = Annotated[Optional[str], typer.Option("--namespace", "-n", "--tenant", help="The tenant (namespace).")]


@app.callback()
def main(
    ctx: typer.Context,
    nats_url: Annotated[Optional[str], typer.Option(
        "--nats-url", envvar="NATS_URL",
        help="NATS server of the exchange (default: the one `smctl up` started here).",
    )] = None,
) -> None:
    """strongmoose: an open compute exchange."""
    ctx.obj = Settings(nats_url=nats_url or None)
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        # piped or recorded output: wide tables rather than rich's 80-column default
        console.width = PIPE_WIDTH


# -- the local stack ---------------------------------------------------------------------------


def _progress(message: str) -> None:
    console.print(Text(message, style="dim"))


def stack_table(stack: stack_mod.Stack) -> Table:
    infra = stack.infra
    table = Table(title=f"strongmoose stack in {stack.state_dir}", title_justify="left")
    table.add_column("COMPONENT")
    table.add_column("PID", justify="right")
    table.add_column("WHERE")
    for name, server, url in (("nats", infra.nats, infra.nats_url), ("postgres", infra.postgres, infra.database_url)):
        pid = str(server.pid) if server is not None else "external"
        url = stack_mod.redact(url)
        table.add_row(name, pid, Text(f"{url}  (log {stack_mod.log_path(stack.state_dir, name)})"
                                      if server is not None else url))
    for p in stack.procs:
        table.add_row(p.name, str(p.pid), Text(f"log {p.log}"))
    return table


@app.command()
@cli_errors
def up(
    ctx: typer.Context,
    state_dir: StateDir = stack_mod.DEFAULT_STATE_DIR,
    vendors: Annotated[str, typer.Option(help="Demo vendors the agent runs: all, or NAME,NAME,...")] = "all",
    sync_interval: Annotated[str, typer.Option(
        envvar="NATS_SYNC_INTERVAL", help="JetStream fsync policy of a started NATS: default, always, or 2m.",
    )] = "default",
) -> None:
    """Start NATS, PostgreSQL, the five services and the vendor agent.

    Servers named by NATS_URL / DATABASE_URL are used instead of starting local ones.
    """
    vendors = _vendor_list(vendors)
    stack = stack_mod.up(state_dir, nats_url=ctx.find_root().obj.nats_url,
                         database_url=os.environ.get("DATABASE_URL") or None, vendors=vendors,
                         sync_interval=sync_interval, progress=_progress)
    if stack.already_up:
        console.print(f"the stack in {escape(str(stack.state_dir))} is already up")
    console.print(stack_table(stack))
    if not stack.already_up:
        console.print("next: [bold]smctl get offers[/]  ·  [bold]smctl apply -f examples/seed-job.yaml[/]  ·  "
                      "[bold]smctl down[/]")


def _vendor_list(vendors: str) -> str:
    names = [v.strip() for v in vendors.split(",") if v.strip()]
    if not names or names == ["all"]:
        return "all"
    bad = [n for n in names if not _VENDOR.match(n)]
    if bad:
        raise CliError(f"--vendors: {', '.join(bad)} is not a vendor name (lower-case letters, digits, '-')")
    return ",".join(names)


@app.command()
@cli_errors
def down(state_dir: StateDir = stack_mod.DEFAULT_STATE_DIR) -> None:
    """Stop exactly what `smctl up` started. Safe to run twice."""
    if stack_mod.down(state_dir, progress=_progress):
        console.print("the stack is down")
    else:
        console.print(f"nothing is up in {escape(str(state_dir))}")


@app.command()
@cli_errors
def logs(
    service: Annotated[str, typer.Argument(help=f"One of: {', '.join(stack_mod.LOG_NAMES)}.")],
    lines: Annotated[int, typer.Option("--lines", "-n", min=0, help="How many lines from the end.")] = 50,
    state_dir: StateDir = stack_mod.DEFAULT_STATE_DIR,
) -> None:
    """Print the end of a service's (or the agent's, NATS's, PostgreSQL's) log."""
    path = stack_mod.log_file(state_dir, service)
    sys.stdout.write(stack_mod.tail(path, lines))
    sys.stdout.flush()


# -- jobs ------------------------------------------------------------------------------------------


# a job that ended without running keeps its name: applying it again changes nothing
ENDED_UNRUN = ("refused", "expired", "cancelled")


def print_outcome(outcome: Outcome) -> None:
    who = escape(f"{outcome.tenant or '?'}/{outcome.name or '?'}")
    if outcome.resubmitted and outcome.status in ENDED_UNRUN:
        console.print(f"job [bold]{who}[/] [red]not run again[/]: it ended {escape(str(outcome.status))} and a job's "
                      "name is used once; apply it under a new metadata.name")
    elif outcome.resubmitted:
        console.print(f"job [bold]{who}[/] unchanged: it exists already (status {escape(str(outcome.status))})")
    elif outcome.accepted:
        extra = f" (status {outcome.status})" if outcome.status not in (None, "accepted") else ""
        console.print(f"job [bold]{who}[/] [green]accepted[/]{escape(extra)}  job id {outcome.job_id}")
    else:
        console.print(f"job [bold]{who}[/] [red]rejected[/]:")
        for e in outcome.errors or []:
            console.print(Text(f"  {e.field}: {e.reason}"), soft_wrap=True)


@app.command()
@cli_errors
def apply(
    ctx: typer.Context,
    file: Annotated[Path, typer.Option("--filename", "-f", help="A YAML file with one or more manifests.")],
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait for intake's decision (up to 20 s).")] = True,
) -> None:
    """Submit the job manifests in a file; exit code 1 if intake rejects one."""
    docs = load_manifests(file)

    async def go() -> bool:
        all_ok = True
        async with await connect(ctx) as ex:
            for doc in docs:
                result = await ex.apply(doc, wait=wait, timeout_s=APPLY_TIMEOUT_S)
                if isinstance(result, Outcome):
                    print_outcome(result)
                    all_ok = all_ok and result.accepted and not (result.resubmitted
                                                                 and result.status in ENDED_UNRUN)
                else:
                    md = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
                    who = f"{md.get('namespace') or '?'}/{md.get('name') or '?'}"
                    console.print(f"submitted {escape(who)}  event id {result}")
        return all_ok

    if not run(go()):
        raise typer.Exit(1)


KINDS = {"jobs": "jobs", "job": "jobs", "offers": "offers", "offer": "offers", "vendors": "vendors",
         "vendor": "vendors"}


@app.command()
@cli_errors
def get(
    ctx: typer.Context,
    kind: Annotated[str, typer.Argument(help="jobs, offers or vendors.")],
    tenant: TenantOpt = None,
    region: Annotated[Optional[str], typer.Option(help="Offers in a region code, country or EU.")] = None,
    vendor: Annotated[Optional[str], typer.Option(help="Offers of one vendor.")] = None,
    limit: Annotated[Optional[int], typer.Option(
        min=1, help="At most this many offers, cheapest first (default: 30 in table output, else all).")] = None,
    output: OutputOpt = Output.table,
) -> None:
    """List jobs, offers (cheapest first) or vendors."""
    what = KINDS.get(kind.lower())
    if what is None:
        raise CliError(f"cannot get {kind!r}; choose jobs, offers or vendors")

    async def go() -> Any:
        async with await connect(ctx) as ex:
            if what == "jobs":
                return await ex.jobs(tenant)
            if what == "offers":
                return await ex.offers(vendor=vendor, region=region)
            return await ex.vendors()

    data = run(go())
    if what == "offers":
        data = render.sort_offers(data)
        if limit is not None or output is Output.table:
            shown = data[: limit or 30]
            if output is Output.table:
                console.print(render.offers_table(shown, len(data)))
                if len(shown) < len(data):
                    console.print(f"[dim]{len(data) - len(shown)} more: --limit N, or -o json for all[/]")
                return
            data = shown
    if output is not Output.table:
        render.emit_data(console, data, output)
    elif what == "jobs":
        console.print(render.jobs_table(data))
    else:
        console.print(render.vendors_table(data))


@app.command()
@cli_errors
def describe(
    ctx: typer.Context,
    kind: Annotated[str, typer.Argument(help="job")],
    name: Annotated[str, typer.Argument(help="The job's metadata.name.")],
    tenant: Annotated[str, typer.Option("--namespace", "-n", "--tenant", help="The tenant (namespace).")],
    output: OutputOpt = Output.table,
) -> None:
    """Show a job's fields and its timeline."""
    if kind.lower() not in ("job", "jobs"):
        raise CliError(f"cannot describe {kind!r}; only job")

    async def go() -> Any:
        async with await connect(ctx) as ex:
            return await ex.job(tenant, name)

    job = run(go())
    if job is None:
        raise CliError(f"no job {tenant}/{name} (smctl get jobs -n {tenant} lists them)")
    if output is not Output.table:
        render.emit_data(console, job, output)
        return
    console.print(render.job_fields_table(job))
    console.print(render.timeline_table(job.get("timeline") or []))


@app.command()
@cli_errors
def explain(
    ctx: typer.Context,
    kind: Annotated[str, typer.Argument(help="job")],
    name: Annotated[str, typer.Argument(help="The job's metadata.name.")],
    tenant: Annotated[str, typer.Option("--namespace", "-n", "--tenant", help="The tenant (namespace).")],
    output: OutputOpt = Output.table,
) -> None:
    """Why a job (matched or not) has the run it has: every offer in the book checked against it now, per
    constraint how many it excluded and the nearest miss, and the best run it could have now."""
    if kind.lower() not in ("job", "jobs"):
        raise CliError(f"cannot explain {kind!r}; only job")

    async def go() -> Any:
        async with await connect(ctx) as ex:
            return await ex.explain(tenant, name)

    data = run(go())
    if data is None:
        raise CliError(f"matching has no job {tenant}/{name} (only accepted jobs are in the book; "
                       f"smctl describe job {name} -n {tenant} shows why)")
    if output is not Output.table:
        render.emit_data(console, data, output)
        return
    for part in render.explain_lines(data):
        console.print(part)


@app.command()
@cli_errors
def cancel(
    ctx: typer.Context,
    kind: Annotated[str, typer.Argument(help="job")],
    name: Annotated[str, typer.Argument(help="The job's metadata.name.")],
    tenant: Annotated[str, typer.Option("--namespace", "-n", "--tenant", help="The tenant (namespace).")],
    reason: Annotated[str, typer.Option("--reason", help="Why, for the job's timeline.")] = "",
) -> None:
    """Cancel a job that has not ended; exit code 1 if intake refuses (no such job, or it has ended).

    Before it runs nothing is paid; a running job is stopped and only what it used is charged.
    Cancelling a cancelled job changes nothing.
    """
    if kind.lower() not in ("job", "jobs"):
        raise CliError(f"cannot cancel {kind!r}; only job")

    async def go() -> Any:
        async with await connect(ctx) as ex:
            return await ex.cancel(tenant, name, reason, timeout_s=APPLY_TIMEOUT_S)

    outcome: CancelOutcome = run(go())
    if not outcome.cancelled:
        raise CliError(f"cannot cancel: {outcome.reason}")
    console.print(render.cancel_line(outcome))


FromOpt = Annotated[Optional[str], typer.Option(
    "--from", help="Period start: a date (2026-12-01, 00:00 UTC) or a time with a zone (2026-12-01T08:00:00+01:00).")]
ToOpt = Annotated[Optional[str], typer.Option("--to", help="Period end (excluded), as --from.")]
ReportOpt = Annotated[money.ReportOutput, typer.Option("--output", "-o", help="table, json, yaml or csv.")]


def _period(since: Optional[str], until: Optional[str]) -> tuple[Any, Any]:
    try:
        return money.parse_when(since, "--from"), money.parse_when(until, "--to")
    except money.PeriodError as e:
        raise CliError(str(e)) from None


def _report(data: Any, output: money.ReportOutput, lines: list[dict[str, Any]]) -> bool:
    """Print JSON, YAML or CSV; False when the caller should print its table."""
    if output == money.ReportOutput.csv:
        sys.stdout.write(money.lines_csv(lines))
        return True
    if output != money.ReportOutput.table:
        render.emit_data(console, data, Output(output.value))
        return True
    return False


@app.command()
@cli_errors
def invoice(
    ctx: typer.Context,
    tenant: Annotated[str, typer.Argument(help="The tenant (namespace).")],
    since: FromOpt = None,
    until: ToOpt = None,
    output: ReportOpt = money.ReportOutput.table,
) -> None:
    """A tenant's invoice for a period: a line per job charged in it (DTU-hours, price, fee, rounding, total)."""
    start, end = _period(since, until)

    async def go() -> Any:
        async with await connect(ctx) as ex:
            return await ex.invoice(tenant, start, end)

    inv = run(go())
    if _report(inv, output, inv.get("lines") or []):
        return
    if not inv.get("lines"):  # not an error: an empty period, as in JSON or CSV
        console.print(f"nothing was charged to tenant {tenant} {money.period_text(start, end)}")
        return
    fee = f", exchange fee {Decimal(inv['fee_bps']) / 100}%" if inv.get("fee_bps") is not None else ""
    console.print(money.lines_table(f"invoice for tenant {tenant}, {money.period_text(start, end)}{fee}",
                                    inv["lines"], who="vendor"))


@ledger_app.command("check")
@cli_errors
def ledger_check(ctx: typer.Context, output: OutputOpt = Output.table) -> None:
    """Check the ledger's invariants (balanced, within holds, ...); exit code 1 when one fails."""

    async def go() -> Any:
        async with await connect(ctx) as ex:
            return await ex.ledger_check()

    result = run(go())
    if output is not Output.table:
        render.emit_data(console, result, output)
    else:
        for line in render.ledger_lines(result):
            console.print(line, soft_wrap=True)
    if not result.get("ok"):
        raise typer.Exit(1)


@app.command()
@cli_errors
def demo(
    ctx: typer.Context,
    state_dir: Annotated[Path, typer.Option(
        "--state-dir", help="The demo's own state dir, emptied first unless --keep-state.")] = Path(".state/demo"),
    keep_state: Annotated[bool, typer.Option(
        "--keep-state/--fresh", help="Reuse data from an earlier demo instead of starting clean.")] = False,
    vendors: Annotated[str, typer.Option(help="Demo vendors the agent runs: all, or NAME,NAME,...")] = "all",
) -> None:
    """Run the whole exchange once: seed job and word count, invoice, ledger check.

    The seed manifest as first written is rejected (its deadline is past).

    Then it runs with a deadline two hours from now, and a word count runs on an EU vendor.

    Exit code 0 only if both settled as finished and the ledger check is ok; the stack is stopped at the end.
    """
    from clients.smctl.demo import run_demo

    ok = run_demo(state_dir, console, nats_url=ctx.find_root().obj.nats_url, fresh=not keep_state,
                  vendors=_vendor_list(vendors))
    raise typer.Exit(0 if ok else 1)



@dlq_app.command("list")
@cli_errors
def dlq_list(ctx: typer.Context, limit: Annotated[int, typer.Option("--limit", help="The newest N.")] = 50,
             output: OutputOpt = Output.table) -> None:
    """Dead letters: which consumer refused which message, and why."""

    async def go() -> Any:
        async with await connect(ctx) as ex:
            return await ex.dead_letters(limit)

    letters = run(go())
    if output is not Output.table:
        render.emit_data(console, [{k: v for k, v in d.items() if k != "body"} for d in letters], output)
        return
    table = Table(title=f"dead letters ({len(letters)})", title_justify="left")
    for col in ("SEQ", "CONSUMER", "ORIGINAL SUBJECT", "STREAM SEQ", "ERROR"):
        table.add_column(col, overflow="fold")
    for d in letters:
        table.add_row(str(d["seq"]), d["consumer"], d["original_subject"],
                      f"{d['original_stream']} {d['original_seq'] or ''}".strip(), escape(d["error"]))
    console.print(table)


@dlq_app.command("show")
@cli_errors
def dlq_show(ctx: typer.Context, seq: int, output: OutputOpt = Output.yaml) -> None:
    """One dead letter with the message body as it was published."""

    async def go() -> Any:
        async with await connect(ctx) as ex:
            return await ex.dead_letter(seq)

    letter = run(go())
    if letter is None:
        raise CliError(f"no dead letter {seq}")
    render.emit_data(console, letter, Output.json if output is Output.json else Output.yaml)


@dlq_app.command("redrive")
@cli_errors
def dlq_redrive(ctx: typer.Context, seqs: Annotated[Optional[list[int]], typer.Argument(help="Sequences.")] = None,
                all_: Annotated[bool, typer.Option("--all", help="Every dead letter.")] = False) -> None:
    """Publish dead letters again on their original subjects (after fixing the cause), and remove them."""
    if not seqs and not all_:
        raise CliError("name the dead letters to redrive (see `smctl ops dlq list`), or --all")

    async def go() -> list[str]:
        async with await connect(ctx) as ex:
            todo = [d["seq"] for d in await ex.dead_letters(10_000)] if all_ else list(seqs or [])
            missing = []
            for seq in todo:  # each as it goes: one missing letter does not hide the ones redriven
                try:
                    r = await ex.redrive(seq)
                except ExchangeError:
                    missing.append(seq)
                    continue
                console.print(f"redrove {r['seq']} to {r['subject']} ({r['stream']} seq {r['new_seq']})")
            return missing

    missing = run(go())
    if missing:
        raise CliError(f"no dead letter {', '.join(map(str, missing))} (smctl ops dlq list shows them)")


@wallet_app.command("deposit")
@cli_errors
def wallet_deposit(ctx: typer.Context, tenant: str,
                   amount: Annotated[str, typer.Argument(help="EUR, at most 6 decimals, e.g. 100 or 12.50.")],
                   reference: Annotated[Optional[str], typer.Option(
                       "--reference", help="The payment's id: the same reference deposits once.")] = None) -> None:
    """Pay money into a tenant's wallet (the only way money enters the exchange)."""
    try:
        euro_to_micro(amount)  # refused here, before anything is sent
    except ValueError as e:
        raise CliError(f"amount: {e}") from None

    async def go() -> Any:
        async with await connect(ctx) as ex:
            before = await ex.wallet(tenant)
            booked = [d for d in before["deposits"] if reference and d["reference"] == reference]
            if booked and booked[0]["amount"] == euro_to_micro(amount):
                console.print(f"reference {reference!r} was deposited already; booked once, nothing changed")
                return before
            if booked:
                raise CliError(f"reference: {reference!r} was deposited already with {eur(booked[0]['amount'])} EUR; "
                               "a payment reference books one amount once")
            await ex.deposit(tenant, amount, reference)
            deadline = asyncio.get_running_loop().time() + 20
            while asyncio.get_running_loop().time() < deadline:
                after = await ex.wallet(tenant)
                if after["deposited_micro_eur"] != before["deposited_micro_eur"]:
                    return after
                await asyncio.sleep(0.2)
            return None

    after = run(go())
    if after is None:
        raise CliError(f"the deposit was sent but not booked within 20 s (same reference again?); "
                       f"see `smctl wallet show {tenant}`")
    console.print(f"wallet {tenant}: {eur(after['balance_micro_eur'])} EUR available, "
                  f"{eur(after['held_micro_eur'])} EUR held for running jobs")


@wallet_app.command("show")
@cli_errors
def wallet_show(ctx: typer.Context, tenant: str, output: OutputOpt = Output.table) -> None:
    """A tenant's balance, what is held for its jobs, and its deposits."""
    if not is_dns_label(tenant):
        raise CliError(f"tenant: {tenant!r} is not a DNS-1123 label")

    async def go() -> Any:
        async with await connect(ctx) as ex:
            return await ex.wallet(tenant)

    w = run(go())
    if output is not Output.table:
        render.emit_data(console, w, output)
        return
    console.print(f"wallet {tenant}: {eur(w['balance_micro_eur'])} EUR available, "
                  f"{eur(w['held_micro_eur'])} EUR held for running jobs, "
                  f"{eur(w['deposited_micro_eur'])} EUR deposited in all ({len(w['deposits'])} deposits)")


@ledger_app.command("journal")
@cli_errors
def ledger_journal(ctx: typer.Context, job: Annotated[str, typer.Option("--job", help="The job's name.")],
                   tenant: Annotated[str, typer.Option("--namespace", "-n", "--tenant", help="The tenant.")],
                   output: OutputOpt = Output.table) -> None:
    """Every transfer of a job, with the event that caused it (trace an invoice line to its money)."""

    async def go() -> Any:
        async with await connect(ctx) as ex:
            return await ex.journal(tenant, job)

    j = run(go())
    if j is None:
        raise CliError(f"no money moved for job {tenant}/{job} (never matched, or refused)")
    if output is not Output.table:
        render.emit_data(console, j, output)
        return
    table = Table(title=f"journal of {tenant}/{job}: hold {eur(j['hold_micro_eur'])} EUR ({j['hold_status']})",
                  title_justify="left")
    for col in ("AT", "KIND", "FROM", "TO", "EUR", "FOR METERED USE", "CAUSED BY EVENT"):
        table.add_column(col, justify="right" if col == "EUR" else "left", no_wrap=col != "CAUSED BY EVENT")
    for t in j["transfers"]:
        use = (f"+{format_dtu_hours(t['usage_dtu_micro_hours'])} DTU-h ({t['reading']} reading)"
               if t.get("reading") in ("usage", "final") else "")
        table.add_row(str(t["at"])[:19].replace("T", " "), t["kind"], t["debit"], t["credit"], eur(t["amount"]),
                      use, str(t["event_id"]))
    console.print(table)


# -- operator: replay and digests ---------------------------------------------------------------------


def _ops_errors(fn: Callable[..., T]) -> Callable[..., T]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        from clients.smctl.ops import OpsError

        try:
            return fn(*args, **kwargs)
        except OpsError as e:
            raise CliError(str(e)) from None

    return wrapper


@ops_app.command("replay")
@cli_errors
@_ops_errors
def ops_replay(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument(help="intake, matching, placement, metering or settlement.")],
    from_seq: Annotated[Optional[list[str]], typer.Option(
        "--from-seq", help="Start every input stream at sequence N, or STREAM:N (repeatable; others from 1).")] = None,
    from_time: Annotated[Optional[str], typer.Option(
        "--from-time", help="Start every input stream at this ISO 8601 time (UTC if no zone).")] = None,
    schema: Annotated[Optional[str], typer.Option(
        "--schema", help="The fresh schema to build (default <live schema>_replay_<UTC time>).")] = None,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Messages per transaction.")] = 200,
    drop: Annotated[bool, typer.Option("--drop", help="Drop the replay schema after comparing.")] = False,
    database_url: Annotated[Optional[str], typer.Option(
        "--database-url", envvar="DATABASE_URL", help="PostgreSQL (default: the one `smctl up` started here).")] = None,
    state_dir: StateDir = stack_mod.DEFAULT_STATE_DIR,
    output: OutputOpt = Output.table,
) -> None:
    """Rebuild a service's state from its input streams into a fresh schema, and compare it with the live one.

    Runs here, with the service's code; its settings come from this environment (use the services' values).

    The service's own consumers do not move, and nothing is published: what the replay emits stays in its outbox.
    """
    from clients.smctl import ops

    ops.check_service(service)
    seq, since = ops.parse_from_seq(from_seq or []), ops.parse_from_time(from_time)
    if seq is not None and since is not None:
        raise CliError("give --from-seq or --from-time, not both")
    db = ops.database_url(database_url, state_dir)
    table = output is Output.table

    def progress(r: Any) -> None:
        if table:
            _progress(f"... {r.events} events, {r.events_per_s:,.0f}/s")

    result = run(ops.run_replay(nats_url=nats_url_of(ctx), database_url=db, service=service, schema=schema,
                                from_seq=seq, from_time=since, batch_size=batch, drop=drop, progress=progress))
    if not table:
        render.emit_data(console, {"replay": result.report.as_dict(), "digest": result.replay_digest,
                                   "live": result.live_digest,
                                   "equal": None if result.live_digest is None
                                   else not ops.differing_tables(result.live_digest, result.replay_digest),
                                   "dropped": result.dropped}, output)
        return
    for line in ops.report_lines(result.report):
        console.print(line, soft_wrap=True)
    if result.report.events == 0 and (seq is not None or since is not None):
        console.print(Text("no event at or after that point: the start is past the end of the input streams",
                           style="yellow"), soft_wrap=True)
    if result.live_digest is None:
        console.print(ops.digest_table(result.replay_digest))
        console.print(*ops.digest_lines(result.replay_digest), sep="\n", soft_wrap=True)
        console.print(Text(f"no live digest to compare with: {result.live_note}", style="yellow"), soft_wrap=True)
    else:
        labels = ("live", "replay")
        console.print(ops.comparison_heading(result.live_digest, result.replay_digest, labels), soft_wrap=True)
        console.print(ops.comparison_table(result.live_digest, result.replay_digest, labels))
        console.print(ops.verdict(result.live_digest, result.replay_digest, labels), soft_wrap=True)
        emitted = ops.emitted_line(result.live_digest, result.replay_digest)
        if emitted is not None:
            console.print(emitted, soft_wrap=True)
        if seq is not None or since is not None:
            console.print(Text("(a replay from a later point rebuilds only what those events build)", style="dim"))
    if result.dropped:
        console.print(f"dropped schema {result.report.schema}")
    else:
        console.print(f"kept schema {result.report.schema}: smctl ops digest {service} --against "
                      f"{result.report.schema}")


@ops_app.command("digest")
@cli_errors
@_ops_errors
def ops_digest(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument(help="intake, matching, placement, metering or settlement.")],
    schema: Annotated[Optional[str], typer.Option(
        "--schema", help="Digest this schema of the service (a replay) instead of its live one.")] = None,
    against: Annotated[Optional[str], typer.Option(
        "--against", help="Compare with this schema (e.g. a replay); exit code 1 when they differ.")] = None,
    output: OutputOpt = Output.table,
) -> None:
    """A digest of a service's state: rows and sha256 per table, and one sha256 over all of them.

    Left out: inbox, outbox, migrations, and the columns a service declares as processing-order artefacts.
    """
    from clients.smctl import ops

    ops.check_service(service)

    digests = run(ops.fetch_digests(nats_url_of(ctx), service, schema, against))
    differ = len(digests) == 2 and bool(ops.differing_tables(digests[0], digests[1]))
    if output is not Output.table:
        render.emit_data(console, digests[0] if len(digests) == 1 else
                         {"a": digests[0], "b": digests[1], "equal": not differ}, output)
    elif len(digests) == 1:
        console.print(ops.digest_table(digests[0]))
        console.print(*ops.digest_lines(digests[0]), sep="\n", soft_wrap=True)
    else:
        labels = ("live" if schema is None else "schema", "against")
        console.print(ops.comparison_heading(digests[0], digests[1], labels), soft_wrap=True)
        console.print(ops.comparison_table(digests[0], digests[1], labels))
        console.print(ops.verdict(digests[0], digests[1], labels), soft_wrap=True)
    if differ:
        raise typer.Exit(1)


# -- vendors: statements and payouts; operators: disputes ------------------------------------------------

vendor_app = typer.Typer(help="A vendor's offers and money: withdrawals, payout statements and payouts.",
                         no_args_is_help=True)
app.add_typer(vendor_app, name="vendor")
dispute_app = typer.Typer(help="Usage a vendor claimed that metering's own measurement does not support.",
                          no_args_is_help=True)
ops_app.add_typer(dispute_app, name="dispute")


@vendor_app.command("statement")
@cli_errors
def vendor_statement(ctx: typer.Context, vendor: str, since: FromOpt = None, until: ToOpt = None,
                     output: ReportOpt = money.ReportOutput.table) -> None:
    """What a vendor earned per job in a period, what is held in dispute, and what was paid out."""
    start, end = _period(since, until)

    async def go() -> Any:
        async with await connect(ctx) as ex:
            return await ex.statement(vendor, start, end)

    st = run(go())
    if _report(st, output, st.get("lines") or []):
        return
    console.print(money.lines_table(f"payout statement of {vendor}, {money.period_text(start, end)}",
                                    st.get("lines") or [], who="tenant"))
    paid = sum(int(p["amount"]) for p in st.get("payouts") or [])
    console.print(f"paid out in the period: {eur(paid)} EUR in {len(st.get('payouts') or [])} payouts; "
                  f"payable now: {eur(st.get('payable_micro_eur'))} EUR; "
                  f"held in dispute: {eur(st.get('in_dispute_micro_eur'))} EUR")
    if st.get("disputes"):
        console.print(money.disputes_table(st["disputes"]))


@vendor_app.command("payout")
@cli_errors
def vendor_payout(ctx: typer.Context, vendor: str,
                  amount: Annotated[str, typer.Argument(help="EUR, at most 6 decimals.")],
                  reference: Annotated[str, typer.Option("--reference", help="The payout's id: pays once.")]) -> None:
    """Pay (part of) a vendor's payable out of the exchange (the only way money leaves it)."""
    try:
        euro_to_micro(amount)
    except ValueError as e:
        raise CliError(f"amount: {e}") from None

    async def go() -> tuple[Any, dict[str, Any]]:
        async with await connect(ctx) as ex:
            before = await ex.statement(vendor)
            if any(p["reference"] == reference for p in before["payouts"]):
                raise CliError(f"reference: {reference!r} was paid out already; a payout is booked once")
            outcome = await ex.payout(vendor, amount, reference, wait=True)
            return outcome, await ex.statement(vendor)

    outcome, after = run(go())
    if not outcome.paid:
        raise CliError(f"amount: {amount} EUR is more than the payable of {vendor}, "
                       f"{eur(outcome.available_micro_eur or 0)} EUR; nothing was paid out "
                       f"(smctl vendor statement {vendor} shows what it earned)")
    console.print(f"paid out {amount} EUR; {vendor} payable now {eur(after['payable_micro_eur'])} EUR")


@vendor_app.command("withdraw")
@cli_errors
def vendor_withdraw(ctx: typer.Context, vendor: str, node: str,
                    reason: Annotated[str, typer.Option(help="Why, for the jobs booked elsewhere.")] = "") -> None:
    """Take a node's offer off the market now; its jobs that have not started are booked elsewhere."""

    async def go() -> Any:
        async with await connect(ctx) as ex:
            return await ex.withdraw(vendor, node, reason)

    outcome = run(go())
    if not outcome.withdrawn:
        raise CliError(f"node: {vendor}/{node} has no offer in the book (never published, or out already); "
                       f"smctl get offers --vendor {vendor} lists its offers")
    console.print(f"withdrew {vendor}/{node}: its capacity left the book; jobs booked on it that had not started "
                  "are booked elsewhere")


@dispute_app.command("list")
@cli_errors
def dispute_list(ctx: typer.Context, vendor: Annotated[Optional[str], typer.Option(help="Only this vendor.")] = None,
                 output: OutputOpt = Output.table) -> None:
    """Every dispute, open or decided."""

    async def go() -> Any:
        async with await connect(ctx) as ex:
            return await ex.disputes(vendor)

    ds = run(go())
    if output is not Output.table:
        render.emit_data(console, ds, output)
    elif not ds:
        console.print("no disputes")
    else:
        console.print(money.disputes_table(ds))


class Payee(str, Enum):
    vendor = "vendor"
    tenant = "tenant"


@dispute_app.command("resolve")
@cli_errors
def dispute_resolve(ctx: typer.Context, job: Annotated[str, typer.Argument(help="The job's name.")],
                    tenant: Annotated[str, typer.Option("--namespace", "-n", "--tenant", help="The tenant.")],
                    pay: Annotated[Payee, typer.Option(help="Who gets the held amount.")],
                    note: Annotated[str, typer.Option(help="Why (kept with the decision).")] = "") -> None:
    """Decide a dispute: the held part of the vendor's pay goes to the vendor or back to the tenant."""

    async def go() -> Any:
        async with await connect(ctx) as ex:
            ds = [d for d in await ex.disputes() if d["tenant"] == tenant and d["name"] == job]
            if not ds:
                raise CliError(f"job {tenant}/{job} has no dispute")
            if ds[0]["status"] != "open":
                raise CliError(f"the dispute of {tenant}/{job} was decided already: paid to the {ds[0]['status']}")
            await ex.resolve_dispute(tenant, job, pay.value, note)
            deadline = asyncio.get_running_loop().time() + 20
            while asyncio.get_running_loop().time() < deadline:
                d = [d for d in await ex.disputes() if d["tenant"] == tenant and d["name"] == job][0]
                if d["status"] != "open":
                    return d
                await asyncio.sleep(0.2)
            return None

    d = run(go())
    if d is None:
        raise CliError("the decision was sent but not booked within 20 s; see `smctl ops dispute list`")
    refunded = d.get("fee_refunded_micro_eur")
    fee = f" and the fee charged on it, {eur(refunded)} EUR," if refunded else ""
    console.print(f"dispute of {tenant}/{job} decided: {eur(d['held_micro_eur'])} EUR{fee} paid to the {d['status']}")


if __name__ == "__main__":
    app()
