"""Runs one assigned workload as a local process and measures it.

Usage is measured twice over: while the process runs, psutil samples its CPU time (with its
children) and resident memory; when it exits, `wait4` gives the kernel's exact CPU time. The
workload is its process session: when the main process exits, what it left behind is killed. Samples are
cumulative and their seq increases, so metering can integrate them and spot repeats.

Beside the figure it reports, the runner takes a second, independent reading (the witness metering
compares the claim with): the CPU time and resident memory of every process in the workload's session,
summed (so also children that were never waited for, and what outlives the main process), and at exit
the kernel's `wait4` figure plus whatever the session still ran.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

import psutil

PID_FILE = "pid"


def stop_leftover(workdir: Path) -> bool:
    """Kill the process session a previous agent started in `workdir`, if it still runs there."""
    try:
        pid = int((workdir / PID_FILE).read_text())
        if Path(psutil.Process(pid).cwd()) != workdir:
            return False  # the pid was reused by something else
        os.killpg(pid, signal.SIGKILL)
        return True
    except (FileNotFoundError, ValueError, psutil.Error, ProcessLookupError, PermissionError):
        return False


@dataclass
class Usage:
    cpu_us: int
    wall_us: int
    rss_peak_bytes: int
    witness_cpu_us: int | None = None  # the independent reading (see the module docstring)
    witness_rss_peak_bytes: int | None = None


def session_usage(sid: int) -> tuple[int, int] | None:
    """(CPU µs, resident bytes) summed over the processes of session `sid`, None when none is left.

    Each process counts its own CPU time and that of the children it waited for; a child still
    running counts itself, so nothing is counted twice.
    """
    cpu = rss = 0
    found = False
    for pid in psutil.pids():
        try:
            if os.getsid(pid) != sid:
                continue
            p = psutil.Process(pid)
            with p.oneshot():
                t = p.cpu_times()
                mem = p.memory_info().rss
        except (psutil.Error, OSError):
            continue  # gone (or a zombie) between the listing and the reading
        cpu += int((t.user + t.system + t.children_user + t.children_system) * 1e6)
        rss += mem
        found = True
    return (cpu, rss) if found else None


@dataclass
class Outcome:
    exit_code: int | None
    usage: Usage
    message: str


def map_path(value: str, mounts: dict[str, Path]) -> str:
    """Rewrite a path under a mount prefix (e.g. /myjobs/x.py) to the host folder it is mounted from."""
    for prefix, host in mounts.items():
        if value == prefix or value.startswith(prefix + "/"):
            return str(host) + value[len(prefix):]
    return value


async def run_process(command: list[str], env: dict[str, str], workdir: Path, timeout_s: float,
                      on_sample: Callable[[Usage], Awaitable[None]], interval_s: float = 0.5) -> Outcome:
    """Run `command` until it exits or `timeout_s` passes; call `on_sample` with cumulative usage."""
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with open(workdir / "stdout.log", "wb") as out, open(workdir / "stderr.log", "wb") as err:
        try:
            proc = subprocess.Popen(command, env=env, cwd=workdir, stdout=out, stderr=err, start_new_session=True)
        except OSError as e:
            return Outcome(None, Usage(0, 0, 0), f"could not start {command[0]!r}: {e}")
    (workdir / PID_FILE).write_text(str(proc.pid))  # so a restarted agent can stop what it left running
    peak = 0
    last = Usage(0, 0, 0)
    waiter = asyncio.ensure_future(asyncio.to_thread(os.wait4, proc.pid, 0))
    message = ""
    while not waiter.done():
        done, _ = await asyncio.wait({waiter}, timeout=interval_s)
        if done:
            break
        wall = int((time.monotonic() - started) * 1e6)
        if wall > timeout_s * 1e6:
            os.killpg(proc.pid, signal.SIGKILL)
            message = f"killed at its deadline after {timeout_s:.0f} s"
            continue
        try:
            p = psutil.Process(proc.pid)
            with p.oneshot():
                t = p.cpu_times()
                cpu = int((t.user + t.system + t.children_user + t.children_system) * 1e6)
                peak = max(peak, p.memory_info().rss)
        except psutil.Error:
            continue  # exited between the checks; wait4 has the final figures
        seen = await asyncio.to_thread(session_usage, proc.pid)  # a scan of every pid: off the event loop
        if seen is not None:
            w_cpu = max(seen[0], last.witness_cpu_us or 0)  # cumulative: a reaped orphan's time is not lost
            w_peak = max(seen[1], last.witness_rss_peak_bytes or 0)
        else:
            w_cpu, w_peak = last.witness_cpu_us, last.witness_rss_peak_bytes
        last = Usage(max(cpu, last.cpu_us), wall, peak, w_cpu, w_peak)
        await on_sample(last)
    _, status, ru = waiter.result()
    # what the main process left running in its session, read before it is killed
    left = await asyncio.to_thread(session_usage, proc.pid) or (0, 0)
    try:  # the workload ends with its main process: whatever it left running in its session goes too
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    wall = int((time.monotonic() - started) * 1e6)
    cpu = int((ru.ru_utime + ru.ru_stime) * 1e6)
    # memory is what psutil saw: ru_maxrss of a forked child also counts the agent's own pages before exec
    final = Usage(max(cpu, last.cpu_us), max(wall, last.wall_us), peak,
                  max(cpu + left[0], last.witness_cpu_us or 0), max(left[1], last.witness_rss_peak_bytes or 0))
    await on_sample(final)
    code = os.waitstatus_to_exitcode(status)
    if code != 0 and not message:
        tail = (workdir / "stderr.log").read_bytes()[-300:].decode(errors="replace").strip()
        message = f"exit code {code}" + (f": {tail}" if tail else "")
    return Outcome(code, final, message)
