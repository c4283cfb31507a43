"""`make demo` as a user runs it: its own servers, five service processes, the vendor agent."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.support import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_the_demo_runs_every_job_to_settled_and_the_ledger_balances() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "DATABASE_URL")}
    smctl = Path(sys.executable).parent / "smctl"
    # not pytest's tmp_path: a pytest session started meanwhile closes its folder to other users, and the
    # PostgreSQL server runs as an unprivileged one when we are root
    tmp_path = Path(tempfile.mkdtemp(prefix="strongmoose-demo-test-"))
    try:
        run = subprocess.run([str(smctl), "demo", "--state-dir", str(tmp_path / "demo")], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=240)
    finally:
        subprocess.run([str(smctl), "down", "--state-dir", str(tmp_path / "demo")], cwd=REPO, env=env,
                       capture_output=True, timeout=120)
        shutil.rmtree(tmp_path, ignore_errors=True)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    assert "spec.notAfter" in out and "already past" in out  # the verbatim seed manifest is refused
    assert out.count("→ settled") == 3
    # the primes job's charge is traced to its metered usage, transfer by transfer
    journal = out[out.index("smctl ledger journal --job primes"):]
    assert re.search(r"charge .* for \+\d+\.\d+ DTU-h metered", journal), journal[:2000]
    assert "ledger ok" in out
    # nothing the demo started is left running
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(tmp_path) not in ps
