"""The fault tests' state directory: not pytest's tmp_path, which a pytest session started meanwhile closes to
other users, while PostgreSQL runs as an unprivileged user when the tests run as root."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def state_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="strongmoose-fault-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
