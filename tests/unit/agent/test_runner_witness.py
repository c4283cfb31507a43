"""The runner's witness: a second reading of the workload's usage, taken over its whole process session."""

from __future__ import annotations

import sys
from pathlib import Path

from clients.agent.runner import Usage, run_process

# the main process starts a busy child, waits until the child has used 0.3 s of CPU, and exits without
# waiting for it: the kernel's figure for the main process never includes the child; the session does
ORPHANING = """
import subprocess, sys, time, psutil
child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
c = psutil.Process(child.pid)
while sum(c.cpu_times()[:2]) < 0.3:
    time.sleep(0.01)
"""


async def run(code: str, workdir: Path) -> tuple[list[Usage], Usage]:
    seen: list[Usage] = []

    async def on_sample(u: Usage) -> None:
        seen.append(u)
    outcome = await run_process([sys.executable, "-c", code], {}, workdir, timeout_s=60, on_sample=on_sample,
                                interval_s=0.05)
    assert outcome.exit_code == 0, outcome.message
    return seen, outcome.usage


async def test_every_sample_carries_a_cumulative_witness(tmp_path: Path) -> None:
    seen, final = await run("sum(i * i for i in range(3_000_000))", tmp_path)
    assert seen[-1] == final
    assert final.witness_cpu_us is not None and final.witness_cpu_us >= final.cpu_us
    witnessed = [u.witness_cpu_us for u in seen if u.witness_cpu_us is not None]
    assert witnessed == sorted(witnessed)  # cumulative, never going back


async def test_the_witness_sees_what_the_main_process_left_running(tmp_path: Path) -> None:
    _, final = await run(ORPHANING, tmp_path)
    assert final.witness_cpu_us is not None
    assert final.witness_cpu_us >= final.cpu_us + 300_000
