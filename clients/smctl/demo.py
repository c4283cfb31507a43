"""`smctl demo`: the whole exchange on one machine, in a few minutes.

up → offers summary → the seed manifest exactly as first written (deadline in 2025: rejected, with
the field named) → the same manifest with only `spec.notAfter` moved to now + 2h, followed from
accepted to settled → a word count over the shared data folder on an EU vendor, followed to settled
→ a few CPU-seconds counting primes, so that money visibly moves → the jobs, the tenant's invoice, the
primes job traced transfer by transfer to its metered usage, the ledger check → down (always).

Succeeds (returns True) only if every job settled with outcome finished and the ledger is ok.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import re
import shutil
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.rule import Rule
from rich.text import Text

from clients.sdk.client import Exchange, Outcome, format_dtu_hours, format_eur, load_manifests
from clients.smctl import money, render
from clients.smctl import stack as stack_mod

EXAMPLES = stack_mod.REPO_ROOT / "examples"
SEED_MANIFEST = EXAMPLES / "seed-job.yaml"
WORDCOUNT_MANIFEST = EXAMPLES / "wordcount-job.yaml"
PRIMES_MANIFEST = EXAMPLES / "primes-job.yaml"
MARKER = ".smctl-demo"  # only a directory carrying it is emptied by --fresh
SEED_VENDORS = ("elastx", "safespring")
OFFERS_TIMEOUT_S = 45.0
JOB_TIMEOUT_S = 240.0
FINAL_STATUSES = {"settled", "expired", "rejected", "refused"}
GOOD_OUTCOMES = {"finished", "succeeded"}


class DemoError(Exception):
    pass


def run_demo(state_dir: Path, console: Console, *, nats_url: str | None = None, fresh: bool = True,
             vendors: str = "all") -> bool:
    """Run the demo in its own state dir; the stack is stopped again however the demo ends."""
    state_dir = Path(state_dir).resolve()

    def progress(message: str) -> None:
        console.print(Text(message, style="dim"))

    if fresh:
        _clean(state_dir, progress)
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / MARKER).touch()
    started = time.monotonic()
    try:
        console.print(Rule("1. start the exchange"))
        stack = stack_mod.up(state_dir, nats_url=nats_url, database_url=os.environ.get("DATABASE_URL") or None,
                             vendors=vendors, progress=progress)
        from clients.smctl.main import stack_table

        console.print(stack_table(stack))
        ok = asyncio.run(_story(stack.infra.nats_url, state_dir, console, wait_seed_vendors=vendors == "all"))
    finally:
        console.print(Rule("stop the exchange"))
        stack_mod.down(state_dir, progress=progress)
    verdict = "demo succeeded" if ok else "demo FAILED"
    console.print(Text(f"{verdict} in {time.monotonic() - started:.0f} s", style="bold green" if ok else "bold red"))
    if not ok:
        console.print(f"logs stay in {escape(str(state_dir / 'logs'))}", soft_wrap=True)
    return ok


def _clean(state_dir: Path, progress: Any) -> None:
    """Empty the demo's state dir from an earlier run, unless something still runs from it."""
    if not state_dir.exists():
        return
    if any(p.alive() for p in stack_mod.read_procs(state_dir)):
        raise stack_mod.StackError(f"a stack still runs from {state_dir}: smctl down --state-dir {state_dir}")
    infra = stack_mod.read_infra(state_dir)
    if infra is not None and any(s is not None and stack_mod.server_alive(s) for s in (infra.nats, infra.postgres)):
        raise stack_mod.StackError(f"servers still run from {state_dir}: smctl down --state-dir {state_dir}")
    if not any(state_dir.iterdir()):
        return
    if not (state_dir / MARKER).exists():
        raise stack_mod.StackError(f"{state_dir} is not a demo state dir (no {MARKER}); choose another "
                                   "--state-dir or use --keep-state")
    progress(f"starting from a clean state: emptying {state_dir}")
    shutil.rmtree(state_dir)


def _in_2h() -> str:
    return (datetime.now(timezone.utc) + timedelta(hours=2)).replace(microsecond=0).isoformat().replace(
        "+00:00", "Z")


async def _story(nats_url: str, state_dir: Path, console: Console, *, wait_seed_vendors: bool) -> bool:
    async with await Exchange.connect(nats_url) as ex:
        console.print(Rule("2. the market: vendors and their offers"))
        await _offers_summary(ex, console, wait_seed_vendors)

        seed = load_manifests(SEED_MANIFEST)[0]
        tenant, name = seed["metadata"]["namespace"], seed["metadata"]["name"]
        console.print(Rule("3. the seed manifest exactly as first written"))
        console.print(f"smctl apply -f {SEED_MANIFEST.relative_to(stack_mod.REPO_ROOT)}   "
                      f"(spec.notAfter: {escape(str(seed['spec']['notAfter']))})")
        first = await ex.apply(seed)
        assert isinstance(first, Outcome)
        _print_outcome(console, first)
        if first.accepted:
            console.print(Text("unexpected: a deadline in the past was accepted", style="red"))

        console.print(Rule(f"4. tenant {tenant} pays €100 into its wallet; the same manifest, due in two hours"))
        before = await ex.wallet(tenant)
        await ex.deposit(tenant, "100", reference=f"demo-{uuid.uuid4()}")
        wallet = await _wait_wallet(ex, tenant, before["balance_micro_eur"] + 100_000_000)
        console.print(f"smctl wallet deposit {tenant} 100   → {render.eur(wallet['balance_micro_eur'])} EUR available "
                      "(a job's hold must fit in it before the job is placed)")
        seed_now = copy.deepcopy(seed)
        seed_now["spec"]["notAfter"] = _in_2h()
        console.print(f"spec.notAfter: {seed['spec']['notAfter']} → {seed_now['spec']['notAfter']} "
                      "(nothing else changed)")
        job1 = await _apply_and_follow(ex, console, seed_now)
        _show_output(console, state_dir, job1)

        wordcount = await _example(ex, console, state_dir, WORDCOUNT_MANIFEST,
                                   "5. a word count over the shared data folder, on an EU vendor", lines=12)
        primes = await _example(ex, console, state_dir, PRIMES_MANIFEST,
                                "6. the primes below two million, in Sweden: a few CPU-seconds, so that money moves",
                                lines=3)
        job2, job3 = wordcount[1], primes[1]

        console.print(Rule(f"7. tenant {tenant}: jobs and invoice"))
        names = {name, wordcount[0], primes[0]}
        jobs = [j for j in await ex.jobs(tenant) if j.get("name") in names]
        console.print(render.jobs_table(jobs))
        try:
            inv = await ex.invoice(tenant)
            console.print(money.lines_table(f"smctl invoice {tenant}", inv.get("lines") or [], who="vendor"))
            journal = await ex.journal(tenant, primes[0])
            if journal:
                console.print(f"smctl ledger journal --job {primes[0]} -n {tenant}   (its invoice line, transfer by "
                              "transfer, each with the event that caused it and the usage it charges for):")
                for t in journal["transfers"]:
                    use = (f"  for +{format_dtu_hours(t['usage_dtu_micro_hours'])} DTU-h metered ({t['reading']} "
                           "reading)" if t.get("reading") in ("usage", "final") else "")
                    console.print(f"  {t['kind']:<9} {t['debit']:>22} → {t['credit']:<22} "
                                  f"{render.eur(t['amount']):>10} EUR  event {t['event_id']}{use}", soft_wrap=True)
                statement = await ex.statement(journal["vendor"])
                console.print(f"smctl vendor statement {journal['vendor']}   → payable "
                              f"{render.eur(statement['payable_micro_eur'])} EUR, in dispute "
                              f"{render.eur(statement['in_dispute_micro_eur'])} EUR")
        except Exception as e:  # the invoice is shown for the reader; the verdict rests on jobs and ledger
            console.print(Text(f"invoice: {e}", style="red"))

        wallet = await ex.wallet(tenant)
        console.print(f"wallet {tenant}: {render.eur(wallet['balance_micro_eur'])} EUR available, "
                      f"{render.eur(wallet['held_micro_eur'])} EUR held")

        console.print(Rule("8. ledger check"))
        ledger = await ex.ledger_check()
        for line in render.ledger_lines(ledger):
            console.print(line, soft_wrap=True)

    good = [_settled_ok(j) for j in (job1, job2, job3)]
    for job, ok in zip((job1, job2, job3), good, strict=True):
        if not ok:
            who = f"{job.get('tenant')}/{job.get('name')}" if job else "a job"
            state = f"status {job.get('status')}, outcome {job.get('outcome')}" if job else "never accepted"
            console.print(Text(f"{who} did not settle as finished ({state})", style="red"))
    return all(good) and bool(ledger.get("ok"))


async def _example(ex: Exchange, console: Console, state_dir: Path, path: Path, title: str,
                   lines: int) -> tuple[str, dict[str, Any] | None]:
    """Apply an example manifest due in two hours, follow it to settled and show its output: (name, job)."""
    manifest = load_manifests(path)[0]
    manifest.setdefault("spec", {}).setdefault("notAfter", _in_2h())
    console.print(Rule(title))
    spec = manifest["spec"]
    console.print(Text(f"{path.relative_to(stack_mod.REPO_ROOT)}: {' '.join(spec.get('command') or [])}, "
                       f"env {spec.get('env') or {}}, region {spec.get('restrictions', {}).get('region')}, "
                       f"notAfter {spec['notAfter']}"), soft_wrap=True)
    job = await _apply_and_follow(ex, console, manifest)
    _show_output(console, state_dir, job, lines=lines)
    return manifest["metadata"]["name"], job


async def _wait_wallet(ex: Exchange, tenant: str, balance: int, timeout_s: float = 30.0) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        wallet = await ex.wallet(tenant)
        if wallet["balance_micro_eur"] >= balance or asyncio.get_running_loop().time() > deadline:
            return wallet
        await asyncio.sleep(0.2)


def _settled_ok(job: dict[str, Any] | None) -> bool:
    return bool(job) and job.get("status") == "settled" and job.get("outcome") in GOOD_OUTCOMES


async def _offers_summary(ex: Exchange, console: Console, wait_seed_vendors: bool) -> None:
    """Wait until the agent's offers are in the order book (and stop growing), then summarise them."""
    deadline = time.monotonic() + OFFERS_TIMEOUT_S
    last_count, stable_since = -1, time.monotonic()
    while True:
        vendors = await ex.vendors()
        names = {v.get("vendor") for v in vendors}
        count = sum(int(v.get("offers") or 0) for v in vendors)
        now = time.monotonic()
        if count != last_count:
            last_count, stable_since = count, now
        seeds_in = not wait_seed_vendors or all(s in names for s in SEED_VENDORS)
        if count > 0 and seeds_in and now - stable_since >= 1.5:
            break
        if now >= deadline:
            console.print(Text(f"offers still arriving after {OFFERS_TIMEOUT_S:g}s; going on", style="yellow"))
            break
        await asyncio.sleep(0.5)
    offers = await ex.offers()
    eu = sum(1 for o in offers if o.get("eu"))
    console.print(f"{len(vendors)} vendors offer {len(offers)} machine types ({eu} in the EU)")
    sweden = render.sort_offers(o for o in offers if o.get("country") == "Sweden")
    if sweden:
        best = sweden[0]
        note = " (illustrative price)" if best.get("illustrative") else ""
        console.print(f"cheapest in Sweden: [bold]{escape(str(best.get('vendor')))}[/] "
                      f"{escape(str(best.get('node')))} at {format_eur(best['price_micro_eur_per_dtu_hour'])} "
                      f"EUR/DTU-h{note}")
        console.print(render.offers_table(sweden[:5], len(sweden)))
    else:
        console.print(Text("no offers in Sweden: the seed job will wait for one", style="yellow"))


def _print_outcome(console: Console, outcome: Outcome) -> None:
    from clients.smctl.main import print_outcome

    print_outcome(outcome)


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _show_output(console: Console, state_dir: Path, job: dict[str, Any] | None, lines: int = 6) -> None:
    """Best effort: the start of what the job printed, where the embedded agent keeps it
    (`<state>/workloads/<workload id>/stdout.log`); nothing if it is not there."""
    for entry in (job or {}).get("timeline") or []:
        if entry.get("type") != "WorkloadAssigned":
            continue
        for wid in _UUID.findall(str(entry.get("detail") or "")):
            out = state_dir / "workloads" / wid / "stdout.log"
            if out.is_file():
                console.print(Text(f"  output ({out.relative_to(state_dir)}):", style="dim"))
                console.print(Text(stack_mod.tail_head(out, lines)), soft_wrap=True)
                return


def _key(entry: dict[str, Any]) -> str:
    return json.dumps(entry, sort_keys=True, default=str)


async def _apply_and_follow(ex: Exchange, console: Console, manifest: dict[str, Any]) -> dict[str, Any] | None:
    """Apply a manifest and print its life as it happens: each new timeline entry, until it settles."""
    tenant, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
    before = await ex.job(tenant, name)
    seen = {_key(e) for e in (before or {}).get("timeline") or []}
    started = time.monotonic()
    outcome = await ex.apply(manifest)
    assert isinstance(outcome, Outcome)
    _print_outcome(console, outcome)
    if not outcome.accepted:
        return None
    deadline = started + JOB_TIMEOUT_S
    status, job = None, None
    while True:
        job = await ex.job(tenant, name)
        fresh = [e for e in (job or {}).get("timeline") or [] if _key(e) not in seen]
        for entry in render.order_timeline(fresh):
            seen.add(_key(entry))
            line = Text(f"  +{time.monotonic() - started:5.1f}s  ", style="dim")
            line.append(f"{entry.get('type') or '?':<16}", style="red" if entry.get("type") in (
                "JobRejected", "WorkloadFailed", "JobExpired") else "bold")
            line.append(f" {entry.get('source') or '-':<10} ")
            line.append(render.detail_text(entry))
            console.print(line, soft_wrap=True)
        new_status = job.get("status") if job else None
        if new_status != status:
            status = new_status
            console.print(Text.assemble("  → ", render.status_text(status)))
        # intake learns the outcome from placement's stream, the charge from settlement's: wait for both
        if status in FINAL_STATUSES and (status != "settled" or (job or {}).get("outcome")):
            return job
        if time.monotonic() >= deadline:
            console.print(Text(f"  {tenant}/{name} still {status} after {JOB_TIMEOUT_S:g}s; giving up", style="red"))
            return job
        await asyncio.sleep(0.2)
