"""The local stack behind `smctl up` / `smctl down` / `smctl logs`: servers, five services, one agent.

Everything lives under one state directory:

    <state>/infra.json        where NATS and PostgreSQL are, and which of them `up` started
    <state>/procs.json        the service and agent processes `up` started (pid + create time)
    <state>/logs/<name>.log   each process's stdout and stderr
    <state>/nats.log, postgres.log, nats/, pgdata/   the servers (see libs.common.localinfra)

`down` signals exactly the processes recorded in procs.json (checked by create time, so a recycled
pid is never hit) and stops exactly the servers recorded as started in infra.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import psutil

from clients.sdk.client import SERVICES, Exchange, ExchangeError, redact
from libs.common.localinfra import Infra, ensure_infra

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_STATE_DIR = Path(".state")
AGENT = "agent"
SERVERS = ("nats", "postgres")
LOG_NAMES = (*SERVICES, AGENT, *SERVERS)
UP_TIMEOUT_S = 60.0
TERM_TIMEOUT_S = 10.0


class StackError(Exception):
    """The stack could not be started, inspected or stopped; the message says why."""


@dataclass(frozen=True)
class Proc:
    name: str
    pid: int
    create_time: float
    log: str

    def alive(self) -> bool:
        """Whether this very process runs (a recycled pid with another create time does not count)."""
        try:
            p = psutil.Process(self.pid)
            return p.status() != psutil.STATUS_ZOMBIE and abs(p.create_time() - self.create_time) < 1
        except psutil.Error:
            return False


@dataclass
class Stack:
    """What `up` started (or found already running)."""

    state_dir: Path
    infra: Infra
    procs: list[Proc]
    already_up: bool = False


def infra_file(state_dir: Path) -> Path:
    return Path(state_dir) / "infra.json"


def procs_file(state_dir: Path) -> Path:
    return Path(state_dir) / "procs.json"


def log_path(state_dir: Path, name: str) -> Path:
    if name in SERVERS:
        return Path(state_dir) / f"{name}.log"  # written by localinfra
    return Path(state_dir) / "logs" / f"{name}.log"


def read_infra(state_dir: Path) -> Infra | None:
    path = infra_file(state_dir)
    if not path.exists():
        return None
    try:
        return Infra.from_json(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as e:
        raise StackError(f"{path} is damaged ({e}); remove it after checking no servers run from it") from None


def read_procs(state_dir: Path) -> list[Proc]:
    path = procs_file(state_dir)
    if not path.exists():
        return []
    try:
        return [Proc(**p) for p in json.loads(path.read_text())["procs"]]
    except (ValueError, KeyError, TypeError) as e:
        raise StackError(f"{path} is damaged ({e}); stop its processes by hand and remove it") from None


def nats_url_from_state(state_dir: Path) -> str | None:
    """The NATS URL `smctl up` recorded in `<state>/infra.json`, if any."""
    try:
        return json.loads(infra_file(state_dir).read_text())["nats_url"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def _spawn(name: str, module: str, state_dir: Path, env: dict[str, str]) -> Proc:
    log = log_path(state_dir, name)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as f:
        f.write(f"=== smctl up: {module} at {time.strftime('%Y-%m-%dT%H:%M:%S%z')} ===\n".encode())
        f.flush()
        proc = subprocess.Popen([sys.executable, "-m", module], stdin=subprocess.DEVNULL, stdout=f,
                                stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env, start_new_session=True)
    try:
        created = psutil.Process(proc.pid).create_time()
    except psutil.Error:
        created = time.time()
    return Proc(name, proc.pid, created, str(log))


def _child_env(infra: Infra, state_dir: Path, vendors: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(NATS_URL=infra.nats_url, DATABASE_URL=infra.database_url, AGENT_VENDORS=vendors,
               AGENT_STATE_DIR=str(state_dir), PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    return env


def server_alive(server: Any) -> bool:
    """Whether a server recorded in infra.json still runs (same pid and create time)."""
    pid, created = getattr(server, "pid", None), getattr(server, "create_time", None)
    if not pid:
        return False
    try:
        p = psutil.Process(pid)
        same = created is None or abs(p.create_time() - created) < 1
        return same and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _servers_alive(infra: Infra) -> bool:
    servers = [s for s in (infra.nats, infra.postgres) if s is not None]
    return all(server_alive(s) for s in servers)


def up(state_dir: Path, *, nats_url: str | None = None, database_url: str | None = None, vendors: str = "all",
       sync_interval: str = "default", progress: Callable[[str], None] = lambda _m: None,
       timeout_s: float = UP_TIMEOUT_S) -> Stack:
    """Start (or find) the servers, then the five services and the vendor agent; wait until every
    service answers its health query. On failure, everything this call started is stopped again.

    Raises:
        StackError: something did not start; the message names it and shows the end of its log.
    """
    state_dir = Path(state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    recorded = read_procs(state_dir)
    running = [p for p in recorded if p.alive()]
    previous = read_infra(state_dir)
    if running:
        if previous is None:
            raise StackError(f"{procs_file(state_dir)} lists running processes but {infra_file(state_dir)} "
                             "is missing; run smctl down first")
        return _restart_exited(state_dir, previous, recorded, vendors, progress, timeout_s)

    infra: Infra | None = None
    procs: list[Proc] = []
    try:
        if previous is not None and previous.started and _servers_alive(previous):
            # servers of an earlier `up` whose services are gone: reuse them, never start a second
            # server on the same data directory
            progress(f"reusing running {', '.join(previous.started)} from {infra_file(state_dir)}")
            infra = previous
        else:
            if previous is not None:
                previous.stop()  # only what it started; harmless when already stopped
            progress(_servers_message(nats_url, database_url))
            try:
                infra = ensure_infra(state_dir, nats_url=nats_url, database_url=database_url,
                                     sync_interval=sync_interval)
            except (RuntimeError, TimeoutError, OSError, ValueError) as e:
                raise StackError(f"could not start the servers: {e}") from None
        _write_json(infra_file(state_dir), infra.to_json())

        env = _child_env(infra, state_dir, vendors)
        for name in SERVICES:
            procs.append(_spawn(name, f"services.{name}", state_dir, env))
        procs.append(_spawn(AGENT, "clients.agent", state_dir, env))
        _write_json(procs_file(state_dir), {"state_dir": str(state_dir), "procs": [p.__dict__ for p in procs]})
        progress(f"started {len(procs)} processes; waiting for the services to answer")
        asyncio.run(_wait_healthy(infra.nats_url, state_dir, procs, timeout_s))
        return Stack(state_dir, infra, procs)
    except BaseException:
        _stop_procs(procs)
        procs_file(state_dir).unlink(missing_ok=True)
        if infra is not None:
            infra.stop()
            infra_file(state_dir).unlink(missing_ok=True)
        raise


def _restart_exited(state_dir: Path, infra: Infra, recorded: list[Proc], vendors: str,
                    progress: Callable[[str], None], timeout_s: float) -> Stack:
    """The stack is up: start again only the recorded processes that have exited since."""
    exited = [p for p in recorded if not p.alive()]
    if not exited:
        return Stack(state_dir, infra, recorded, already_up=True)
    if not _servers_alive(infra):
        raise StackError(f"the stack in {state_dir} is half up (a server is gone); run smctl down, then smctl up")
    progress(f"restarting {', '.join(p.name for p in exited)} (exited; see smctl logs NAME)")
    env = _child_env(infra, state_dir, vendors)
    fresh = {p.name: _spawn(p.name, "clients.agent" if p.name == AGENT else f"services.{p.name}", state_dir, env)
             for p in exited}
    procs = [fresh.get(p.name, p) for p in recorded]
    _write_json(procs_file(state_dir), {"state_dir": str(state_dir), "procs": [p.__dict__ for p in procs]})
    asyncio.run(_wait_healthy(infra.nats_url, state_dir, procs, timeout_s))
    return Stack(state_dir, infra, procs, already_up=True)


async def _wait_healthy(nats_url: str, state_dir: Path, procs: list[Proc], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    pending = set(SERVICES)
    try:
        ex = await Exchange.connect(nats_url, timeout_s=1.0)
    except ExchangeError as e:
        raise StackError(str(e)) from None
    async with ex:
        while True:
            for p in procs:
                if not p.alive():
                    raise StackError(f"{p.name} exited at start-up: {last_line(Path(p.log))} "
                                     f"(smctl logs {p.name} --state-dir {state_dir})")
            for name in sorted(pending):
                try:
                    await ex.health(name)
                    pending.discard(name)
                except ExchangeError:
                    pass
            if not pending:
                return
            if time.monotonic() >= deadline:
                names = ", ".join(sorted(pending))
                first = sorted(pending)[0]
                raise StackError(f"{names} did not answer health queries within {timeout_s:g}s; last line of "
                                 f"{first}'s log: {last_line(log_path(state_dir, first))} "
                                 f"(smctl logs {first} --state-dir {state_dir})")
            await asyncio.sleep(0.3)


def _stop_procs(procs: list[Proc], timeout_s: float = TERM_TIMEOUT_S) -> list[str]:
    """SIGTERM each live recorded process, wait, then SIGKILL what is left (with its descendants,
    which a killed parent could no longer stop). Returns the names that needed SIGKILL."""
    live = [p for p in procs if p.alive()]
    for p in live:
        try:
            os.kill(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout_s
    while any(p.alive() for p in live) and time.monotonic() < deadline:
        _reap(live)
        time.sleep(0.1)
    killed = []
    for p in live:
        if not p.alive():
            continue
        killed.append(p.name)
        try:
            victims = [psutil.Process(p.pid), *psutil.Process(p.pid).children(recursive=True)]
        except psutil.Error:
            continue
        for v in victims:
            try:
                v.kill()
            except psutil.Error:
                pass
    _reap(live)
    return killed


def _reap(procs: list[Proc]) -> None:
    """Collect exit statuses of processes that are our own children, so they do not linger as zombies."""
    for p in procs:
        try:
            os.waitpid(p.pid, os.WNOHANG)
        except ChildProcessError:
            pass


def down(state_dir: Path, progress: Callable[[str], None] = lambda _m: None) -> bool:
    """Stop the processes and servers an earlier `up` started. Idempotent; False if nothing was up."""
    state_dir = Path(state_dir).resolve()
    procs = read_procs(state_dir)
    infra = read_infra(state_dir)
    if not procs and infra is None:
        return False
    live = [p for p in procs if p.alive()]
    if live:
        progress(f"stopping {', '.join(p.name for p in live)}")
        killed = _stop_procs(live)
        if killed:
            progress(f"killed {', '.join(killed)} (no exit within {TERM_TIMEOUT_S:g}s of SIGTERM)")
    procs_file(state_dir).unlink(missing_ok=True)
    if infra is not None:
        if infra.started:
            progress(f"stopping {', '.join(infra.started)}")
        try:
            infra.stop()
        except (TimeoutError, subprocess.TimeoutExpired, RuntimeError) as e:
            raise StackError(f"could not stop the servers: {e}") from None
        infra_file(state_dir).unlink(missing_ok=True)
    return True


def last_line(path: Path) -> str:
    """The last non-empty line of a log (for a one-line error), or a note that there is none."""
    try:
        lines = [ln.strip() for ln in tail(path, 40).splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    return lines[-1] if lines else "(empty log)"


def _servers_message(nats_url: str | None, database_url: str | None) -> str:
    start = [name for name, given in (("NATS JetStream", nats_url), ("PostgreSQL", database_url)) if not given]
    use = [f"{name} at {redact(url)}" for name, url in (("NATS", nats_url), ("PostgreSQL", database_url)) if url]
    return "; ".join(filter(None, [f"starting {' and '.join(start)}" if start else "",
                                   f"using {' and '.join(use)}" if use else ""]))


def tail(path: Path, n: int) -> str:
    """The last `n` lines of a text file."""
    with open(path, encoding="utf-8", errors="replace") as f:
        return "".join(deque(f, maxlen=max(n, 0)))


def tail_head(path: Path, n: int, indent: str = "    ") -> str:
    """The first `n` lines of a text file, indented, without the final newline."""
    with open(path, encoding="utf-8", errors="replace") as f:
        return "".join(indent + line for _, line in zip(range(n), f, strict=False)).rstrip("\n")


def log_file(state_dir: Path, name: str) -> Path:
    """The log of a stack component.

    Raises:
        StackError: unknown name (the message lists the known ones), or no log was written yet.
    """
    if name not in LOG_NAMES:
        raise StackError(f"unknown log {name!r}; known: {', '.join(LOG_NAMES)}")
    path = log_path(state_dir, name)
    if not path.exists():
        hint = " (started outside smctl up?)" if name in SERVERS else " (is the stack up? smctl up)"
        raise StackError(f"no log for {name} at {path}{hint}")
    return path
