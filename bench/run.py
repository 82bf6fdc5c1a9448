#!/usr/bin/env python3
"""
Benchmarks of realtimed beside the Node.js reference Socket.IO server and
python-socketio, on one machine, in one run.

    bench/run.py [--scenario N ...] [--quick] [--servers realtimed,node,python-socketio]
                 [--profile DIR] [--json FILE] [--plots DIR] [--setup-only]

For each scenario and each server: start the server pinned to one core, run
the load generator (``bench/loadgen.js``) pinned to the other, stop the
server, and print realtimed's figure, each peer's, and realtimed/peer.

Scenarios:
  1  fan-out: one channel, 1,000 subscribers, 100-byte payloads; highest
     sustained deliveries/s, and p50/p99 latency at 50 publishes/s
  2  many rooms: 10,000 connections in rooms of 100, publishes spread over
     the rooms; highest sustained deliveries/s, and p50/p99 at 100 publishes/s
  3  idle memory: 10,000 idle subscribed connections, RSS per connection
  4  connect rate: handshake + auth + subscribe completed per second
  5  database events (realtimed only): a row change's commit to its receipt
     at 100 subscribers, p50/p99 at 1,000 and at 5,000 changes/s offered
  6  stored publishes per second per process (peers store nothing; their
     figure is what publishing costs without storage)
  7  several processes (realtimed only): scenario 1's fan-out with the
     subscribers spread over 1, 2 and 3 realtimed processes on one database,
     each figure beside the one-process figure

``--quick`` runs every scenario at a small size in a few seconds: it shows
that the harness works, not how fast anything is.  ``--plots DIR`` draws,
after the run, the latency of each ramp step against its offered rate
(scenario 1, and 2 when it ran) with ``bench/plots.py``.

What it needs: Node.js and npm (the Node peer and the load generator; its
packages are installed into bench/peers/node_modules), python3 with venv
(python-socketio, py-spy and matplotlib are installed into bench/.venv),
``taskset``, and for realtimed a Python that imports it and PostgreSQL at
``--postgres`` (default postgresql://postgres@127.0.0.1:5432), where each run
creates its own database and drops it afterwards.  Everything listens on and
connects to loopback addresses only.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PEERS = BENCH / "peers"
VENV = BENCH / ".venv"
LOADGEN = BENCH / "loadgen.js"

SERVERS = ("realtimed", "node", "python-socketio")
SCENARIOS = {
    1: "fan-out, 1 channel x 1,000 subscribers",
    2: "many rooms, 10,000 connections in rooms of 100",
    3: "idle memory, 10,000 connections",
    4: "connect rate (handshake + auth + subscribe)",
    5: "database events, 100 subscribers, 1,000 and 5,000 changes/s offered",
    6: "stored publishes per second, one process",
    7: "several processes, 1 channel x 1,000 subscribers over 1, 2, 3 processes",
}
QUICK_SCENARIOS = {
    1: "fan-out, 1 channel x 50 subscribers",
    2: "many rooms, 200 connections in rooms of 20",
    3: "idle memory, 200 connections",
    4: "connect rate (handshake + auth + subscribe)",
    5: "database events, 20 subscribers, 200 changes/s",
    6: "publishes per second, 5 publishers",
    7: "several processes, 1 channel x 60 subscribers over 1, 2, 3 processes",
}
#: The process counts of scenario 7.
PROCESS_COUNTS = (1, 2, 3)

LOADGEN_CPU = "0"
SERVER_CPU = "1"
JWT_SUBJECT = "bench-user"


class SetupError(Exception):
    """
    Something the benchmarks need is missing and could not be installed.
    """


def log(message: str) -> None:
    print(f"[run {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# Installing what the peers and the load generator need.


def ensure_node_packages() -> None:
    """
    Install bench/peers/node_modules from package-lock.json when it is
    missing or stale.
    """
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise SetupError("node and npm are needed for the Node peer and the load generator")
    lock = PEERS / "package-lock.json"
    marker = PEERS / "node_modules" / ".package-lock.json"
    installed = all((PEERS / "node_modules" / name).exists() for name in ("socket.io", "pg"))
    if installed and marker.exists() and marker.stat().st_mtime >= lock.stat().st_mtime:
        return
    log("installing the Node packages (npm ci in bench/peers)")
    proc = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=PEERS,
        check=False,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SetupError(f"npm ci in bench/peers failed:\n{proc.stdout}{proc.stderr}")


def ensure_bench_venv() -> Path:
    """
    Create bench/.venv with python-socketio, aiohttp, py-spy and matplotlib
    when it is missing or its requirements changed.  Returns its python.
    """
    python = VENV / "bin" / "python"
    requirements = PEERS / "requirements.txt"
    wanted = hashlib.sha256(requirements.read_bytes()).hexdigest()
    stamp = VENV / ".requirements-sha256"
    if python.exists() and stamp.exists() and stamp.read_text().strip() == wanted:
        return python
    log("installing python-socketio, aiohttp, py-spy and matplotlib into bench/.venv")
    base = getattr(sys, "_base_executable", None) or sys.executable
    if not python.exists():
        proc = subprocess.run(
            [base, "-m", "venv", str(VENV)], check=False, capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise SetupError(f"cannot create bench/.venv:\n{proc.stdout}{proc.stderr}")
    proc = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
            str(requirements),
        ],
        check=False,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SetupError(f"pip install into bench/.venv failed:\n{proc.stdout}{proc.stderr}")
    stamp.write_text(wanted + "\n")
    return python


def find_realtimed_python() -> Path:
    """
    A Python that can import realtimed: $REALTIMED_PYTHON, this one, or the
    repository's .venv.
    """
    candidates = [
        os.environ.get("REALTIMED_PYTHON"),
        sys.executable,
        str(ROOT / ".venv" / "bin" / "python"),
    ]
    tried = []
    for candidate in candidates:
        if not candidate or not Path(candidate).exists():
            continue
        proc = subprocess.run(
            [candidate, "-c", "import realtimed.tap, twisted.scripts.twistd"],
            cwd=ROOT,
            check=False,
            capture_output=True,
            text=True,
        )
        if proc.returncode == 0:
            return Path(candidate)
        tried.append(f"{candidate}: {proc.stderr.strip().splitlines()[-1:]}")
    raise SetupError("no Python here imports realtimed (set REALTIMED_PYTHON): " + "; ".join(tried))


def raise_file_limit(needed: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
            hard = needed
        except (ValueError, OSError):
            pass
    target = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


# ---------------------------------------------------------------------------
# Tokens.


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(secret: str, claims: dict[str, Any]) -> str:
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64(json.dumps(claims).encode())
    signature = hmac.new(secret.encode(), f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{_b64(signature)}"


# ---------------------------------------------------------------------------
# Servers.


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(cpu: str, command: list[str]) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        return ["taskset", "-c", cpu, *command]
    return command


def psql(postgres: str, database: str, sql: str) -> str:
    proc = subprocess.run(
        [
            "psql",
            f"{postgres}/{database}",
            "-X",
            "-q",
            "-t",
            "-A",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ],
        check=False,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SetupError(f"psql failed: {sql!r}: {proc.stderr.strip()}")
    return proc.stdout.strip()


@dataclass
class Secrets:
    jwt_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    api_key: str = field(default_factory=lambda: "ik_" + secrets.token_hex(16))
    anon_key: str = field(default_factory=lambda: "anon_" + secrets.token_hex(16))

    def user_token(self) -> str:
        now = int(time.time())
        return make_jwt(
            self.jwt_secret,
            {
                "sub": JWT_SUBJECT,
                "role": "authenticated",
                "iat": now,
                "exp": now + 6 * 3600,
            },
        )


@dataclass
class RunningServer:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    database_url: str | None = None
    database: str | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])


def wait_ready(server: RunningServer, timeout: float) -> None:
    """
    Wait until the server answers an Engine.IO polling handshake.  A server
    that answers HTTP but keeps refusing the handshake fails after 10 s.
    """
    url = f"http://127.0.0.1:{server.port}/socket.io/?EIO=4&transport=polling"
    deadline = time.monotonic() + timeout
    refused_since = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise SetupError(
                f"{server.name} exited with {server.process.returncode} while starting:\n"
                + server.log_tail()
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except urllib.error.HTTPError as e:
            refused_since = refused_since or time.monotonic()
            if time.monotonic() - refused_since > 10:
                raise SetupError(
                    f"{server.name} answers HTTP {e.code} to an Engine.IO handshake at /socket.io/"
                ) from None
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise SetupError(f"{server.name} did not answer within {timeout:.0f}s:\n{server.log_tail()}")


def http_json(method: str, url: str, body: object, api_key: str) -> tuple[int, Any]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method=method,
        headers={
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/json",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


@dataclass
class Bench:
    quick: bool
    workdir: Path
    postgres: str
    bench_python: Path | None = None
    realtimed_python: Path | None = None
    secrets: Secrets = field(default_factory=Secrets)
    keep_logs: Path | None = None
    #: messages stored in realtime.messages before each realtimed scenario
    prefill: int = 0

    @contextmanager
    def server(self, name: str, scenario: int | str) -> Iterator[RunningServer]:
        """
        C{name} started for C{scenario} (a scenario's number, or the name of
        another run, such as the soak's), stopped when the block ends;
        realtimed on a new database, dropped afterwards.
        """
        port = free_port()
        label = f"s{scenario}" if isinstance(scenario, int) else scenario
        log_path = self.workdir / f"{name}-{label}.log"
        env = dict(os.environ, BENCH_JWT_SECRET=self.secrets.jwt_secret)
        database = database_url = None
        if name == "node":
            command = ["node", str(PEERS / "node_server.js"), str(port)]
            cwd = PEERS
        elif name == "ceiling":
            command = ["node", str(PEERS / "ceiling_server.js"), str(port)]
            cwd = PEERS
        elif name == "python-socketio":
            assert self.bench_python is not None
            command = [
                str(self.bench_python),
                str(PEERS / "pysio_server.py"),
                str(port),
            ]
            cwd = PEERS
        elif name == "realtimed":
            assert self.realtimed_python is not None
            database = f"realtimed_bench_{os.getpid()}_{scenario}"
            database_url = f"{self.postgres}/{database}"
            psql(
                self.postgres,
                "postgres",
                f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)',
            )
            psql(self.postgres, "postgres", f'CREATE DATABASE "{database}"')
            data_dir = self.workdir / f"realtimed-data-{scenario}"
            command = self.realtimed_command(port, database_url, data_dir)
            cwd = self.workdir
        else:
            raise SetupError(f"unknown server {name}")
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(
                pinned(SERVER_CPU, command),
                cwd=cwd,
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        running = RunningServer(name, port, process, log_path, database_url, database)
        try:
            wait_ready(running, 60)
            if name == "realtimed":
                self.prepare_realtimed(running)
                assert database is not None
                prefill_messages(self.postgres, database, self.prefill)
            yield running
        finally:
            stop_process(process)
            if self.keep_logs is not None:
                shutil.copy(log_path, self.keep_logs / log_path.name)
            if database is not None:
                self.drop_database(database)

    def realtimed_command(self, port: int, database_url: str, data_dir: Path) -> list[str]:
        assert self.realtimed_python is not None
        data_dir.mkdir(exist_ok=True)
        return [
            str(self.realtimed_python),
            "-c",
            "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()",
            "-n",
            "--pidfile=",
            "realtimed",
            "--port",
            f"tcp:{port}:interface=127.0.0.1",
            "--database-url",
            database_url,
            "--data-dir",
            str(data_dir),
            "--jwt-secret",
            self.secrets.jwt_secret,
            "--api-key",
            self.secrets.api_key,
            "--anon-key",
            self.secrets.anon_key,
            # The load generator is one address publishing as fast as
            # it can: realtimed's per-socket publish rate and per-address
            # connection limits would measure the limits, not the server
            # (the peers have none).
            "--max-publish-rate",
            "0",
            "--max-connections-per-ip",
            "0",
        ]

    def drop_database(self, database: str) -> None:
        try:
            psql(self.postgres, "postgres", f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        except SetupError as e:
            log(str(e))

    @contextmanager
    def cluster(self, scenario: int, count: int) -> Iterator[list[RunningServer]]:
        """
        C{count} realtimed processes on one new database, the channels
        created; each pinned to a core of its own when the machine has
        enough (the load generator keeps cpu 0), else all to cpu 1.
        """
        database = f"realtimed_bench_{os.getpid()}_{scenario}_{count}"
        database_url = f"{self.postgres}/{database}"
        self.drop_database(database)
        psql(self.postgres, "postgres", f'CREATE DATABASE "{database}"')
        cores = os.cpu_count() or 2
        running: list[RunningServer] = []
        try:
            for i in range(count):
                port = free_port()
                name = f"realtimed{i + 1}"
                log_path = self.workdir / f"{name}-s{scenario}-n{count}.log"
                data_dir = self.workdir / f"realtimed-data-{scenario}-{count}-{i}"
                command = self.realtimed_command(port, database_url, data_dir)
                cpu = str(1 + i % (cores - 1)) if cores > 2 else SERVER_CPU
                with open(log_path, "wb") as log_file:
                    process = subprocess.Popen(
                        pinned(cpu, command),
                        cwd=self.workdir,
                        stdout=log_file,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                running.append(RunningServer(name, port, process, log_path, database_url, database))
            for server in running:
                wait_ready(server, 60)
            self.prepare_realtimed(running[0])
            prefill_messages(self.postgres, database, self.prefill)
            yield running
        finally:
            for server in running:
                stop_process(server.process)
                if self.keep_logs is not None:
                    shutil.copy(server.log_path, self.keep_logs / server.log_path.name)
            self.drop_database(database)

    def prepare_realtimed(self, server: RunningServer) -> None:
        """
        The channel rows the scenarios use, and the tracked table of
        scenario 5.
        """
        for pattern in ("bench", "room:*", "pub:*", "t"):
            status, body = http_json(
                "POST",
                f"http://127.0.0.1:{server.port}/api/realtime/channels",
                {"pattern": pattern},
                self.secrets.api_key,
            )
            if status not in (200, 201):
                raise SetupError(f"creating channel {pattern!r} failed: {status} {body}")
        assert server.database is not None
        psql(
            self.postgres,
            server.database,
            "CREATE TABLE t (id bigserial PRIMARY KEY, ts double precision NOT NULL, pad text);"
            "SELECT realtime.track_table('t');",
        )


# History: `count` messages published over the past 30 days, spread over the
# bench's channels and 20 event names (history-0 ... history-19), 32 to a
# transaction, as if realtimed had stored them (the same columns its
# triggers fill in).  One statement with the triggers off
# (session_replication_role) rather than `count` publishes: a million rows
# take well under two minutes.  Their transaction ids are made up, below
# the current one, so that they sort before every new message as real
# history would.  VACUUM ANALYZE afterwards, as autovacuum would have done
# long before: the figures compare a table's size, not a vacuum that
# happens to be running.
PREFILL = """
BEGIN;
SET LOCAL session_replication_role = replica;
WITH c AS (
    SELECT array_agg(id ORDER BY pattern) AS ids, array_agg(pattern::text ORDER BY pattern) AS names
    FROM realtime.channels
), now_xact AS (
    SELECT pg_current_xact_id()::text::bigint AS x
)
INSERT INTO realtime.messages (id, event_name, channel_id, channel_name, payload, sender_type,
                               sender_id, ws_audience_count, created_at, xact_id, seq)
SELECT gen_random_uuid(), 'history-' || (g % 20), c.ids[1 + g % cardinality(c.ids)],
       replace(c.names[1 + g % cardinality(c.names)], '*', (g % 100)::text),
       jsonb_build_object('t', g, 'p', repeat('x', 70)), 'user', 'bench-user', 1000,
       now() - interval '30 days' * ({count} - g) / {count},
       greatest(3, now_xact.x - 1 - ({count} - g) / 32)::text::xid8,
       nextval('realtime.messages_seq')
FROM generate_series(1, {count}) AS g, c, now_xact;
COMMIT;
VACUUM ANALYZE realtime.messages;
"""


def prefill_messages(postgres: str, database: str, count: int) -> None:
    """
    Store C{count} messages of history in C{database} before a scenario.
    """
    if count <= 0:
        return
    started = time.monotonic()
    subprocess_sql = PREFILL.format(count=int(count))
    proc = subprocess.run(
        ["psql", f"{postgres}/{database}", "-X", "-q", "-v", "ON_ERROR_STOP=1"],
        input=subprocess_sql,
        check=False,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SetupError(f"pre-filling realtime.messages failed: {proc.stderr.strip()}")
    log(f"stored {count:,} messages of history in {time.monotonic() - started:.1f} s")


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


# ---------------------------------------------------------------------------
# Profiling realtimed with py-spy while a phase of the load runs.


class Profiler:
    def __init__(self, bench_python: Path, out: Path, pid: int) -> None:
        self.py_spy = bench_python.parent / "py-spy"
        self.out = out
        self.pid = pid
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if self.process is not None:
            return
        log(f"py-spy recording pid {self.pid} into {self.out}")
        self.process = subprocess.Popen(
            [
                str(self.py_spy),
                "record",
                "--pid",
                str(self.pid),
                "--rate",
                "200",
                "--nonblocking",
                "--format",
                "raw",
                "--output",
                str(self.out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            _, err = self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, err = self.process.communicate()
        if not self.out.exists():
            log(f"py-spy wrote no profile: {err.decode(errors='replace')[-500:]}")
        else:
            summary = summarize_profile(self.out)
            self.out.with_suffix(".summary.txt").write_text(summary)
            log(f"profile summary in {self.out.with_suffix('.summary.txt')}")
        self.process = None


def summarize_profile(path: Path, top: int = 30) -> str:
    """
    Where the samples went, from py-spy's collapsed stacks: the functions
    with the most samples on top of the stack (self) and anywhere on it
    (inclusive).
    """
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [f for f in stack.split(";") if f and not f.startswith("process ")]
        if not frames:
            continue
        own[_short_frame(frames[-1])] += count
        for name in {_short_frame(f) for f in frames}:
            inclusive[name] += count
    if total == 0:
        return "no samples\n"
    lines = [f"{total} samples", "", "self %  function"]
    lines += [f"{100 * n / total:6.1f}  {name}" for name, n in own.most_common(top)]
    # Inclusive shares of realtimed's own functions: which of its paths the
    # time goes through (the reactor's frames would hold every sample).
    lines += ["", "incl %  realtimed function"]
    own_code = [(k, v) for k, v in inclusive.most_common() if "(realtimed/" in k]
    lines += [f"{100 * n / total:6.1f}  {name}" for name, n in own_code[:top]]
    return "\n".join(lines) + "\n"


def _short_frame(frame: str) -> str:
    # "function (path/to/module.py:123)" -> "function (module.py)"
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    file_part = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", "/lib/python3"):
        if marker in file_part:
            file_part = file_part.split(marker, 1)[1]
            break
    else:
        if str(ROOT) in file_part:
            file_part = file_part.split(str(ROOT) + "/", 1)[1]
    return f"{name} ({file_part})"


# ---------------------------------------------------------------------------
# Running a scenario.

PROFILED_PHASES: dict[int | str, str] = {1: "ramp", 4: "connect", 6: "publish"}


def run_loadgen(
    bench: Bench,
    scenario: int | str,
    server: RunningServer,
    profile_dir: Path | None,
    others: tuple[RunningServer, ...] = (),
    *,
    extra_config: dict[str, Any] | None = None,
    time_limit: float | None = None,
    on_message: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """
    Run the load generator against C{server} (and the processes C{others}
    of the same database, connections spread over them all).

    @param scenario: a scenario number of C{SCENARIOS}, or C{"soak"}.
    @param extra_config: more keys for the load generator's configuration.
    @param time_limit: seconds after which the load generator gives up
        (and 30 s later is killed); by default 120 in quick mode, else 600.
    @param on_message: called with every JSON line the load generator
        prints, as it prints it.
    """
    if time_limit is None:
        time_limit = 120 if bench.quick else 600
    config = {
        "scenario": scenario,
        "host": "127.0.0.1",
        "port": server.port,
        "ports": [s.port for s in [server, *others]],
        "token": bench.secrets.user_token(),
        "serverPid": server.pid,
        "serverPids": [s.pid for s in [server, *others]],
        "quick": bench.quick,
        "databaseUrl": server.database_url,
        "timeLimitSeconds": time_limit,
        **(extra_config or {}),
    }
    profiler = None
    if profile_dir is not None and server.name == "realtimed" and scenario in PROFILED_PHASES:
        assert bench.bench_python is not None
        profiler = Profiler(
            bench.bench_python, profile_dir / f"realtimed-s{scenario}.txt", server.pid
        )
    process = subprocess.Popen(
        pinned(LOADGEN_CPU, ["node", str(LOADGEN), json.dumps(config)]),
        stdout=subprocess.PIPE,
        stderr=None if not bench.quick else subprocess.PIPE,
        text=True,
    )
    stderr_lines: list[str] = []
    if process.stderr is not None:
        stream = process.stderr

        def keep() -> None:
            stderr_lines.extend(stream)

        threading.Thread(target=keep, daemon=True).start()
    result: dict[str, Any] | None = None
    error = None
    steps = []
    assert process.stdout is not None
    timer = threading.Timer(time_limit + 30, process.kill)
    timer.start()
    try:
        for line in process.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            kind = message.get("type")
            if on_message is not None:
                on_message(message)
            if (
                kind == "phase"
                and profiler is not None
                and message.get("name") == PROFILED_PHASES.get(scenario)
            ):
                if message.get("state") == "start":
                    profiler.start()
                else:
                    profiler.stop()
            elif kind == "step":
                steps.append(message)
            elif kind == "result":
                result = message
            elif kind == "error":
                error = message.get("message")
        process.wait()
    finally:
        timer.cancel()
        if profiler is not None:
            profiler.stop()
        if process.poll() is None:
            process.kill()
            process.wait()
    if result is not None:
        result["stepLog"] = steps
    if result is None:
        detail = "".join(stderr_lines[-10:])
        raise SetupError(f"load generator failed: {error or process.returncode}\n{detail}")
    return result


def server_errors(log_path: Path) -> str | None:
    """
    How many tracebacks the server logged, and the first one's exception.
    """
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    count = 0
    first = None
    for i, line in enumerate(lines):
        if "Traceback (most recent call last)" not in line:
            continue
        count += 1
        if first is None:
            block = []
            for following in lines[i + 1 :]:
                if not following.startswith(("\t", " ")):
                    break
                if following.strip():
                    block.append(following.strip())
            where = [b for b in block if b.startswith("File ")]
            first = (block[-1] if block else "?") + (f" (at {where[-1]})" if where else "")
    if count == 0:
        return None
    return f"the server logged {count} traceback(s); the first: {first}"


def run_processes(bench: Bench) -> dict[str, Any]:
    """
    Scenario 7: the fan-out once per process count, each on a new database.
    """
    by_count: dict[str, Any] = {}
    for count in PROCESS_COUNTS:
        log(f"scenario 7 with {count} realtimed process(es)")
        with bench.cluster(7, count) as servers:
            try:
                result = run_loadgen(bench, 7, servers[0], None, tuple(servers[1:]))
            except SetupError as e:
                logged = [server_errors(s.log_path) for s in servers]
                raise SetupError("\n".join([str(e), *[x for x in logged if x]])) from None
            logged = [x for x in (server_errors(s.log_path) for s in servers) if x]
            if logged:
                result["serverErrors"] = "; ".join(logged)
            for server in servers:
                if server.process.poll() is not None:
                    raise SetupError(f"{server.name} exited during the run:\n{server.log_tail()}")
        by_count[str(count)] = result
    return {"processes": by_count}


def run_one(bench: Bench, scenario: int, name: str, profile_dir: Path | None) -> dict[str, Any]:
    if scenario == 5 and name != "realtimed":
        return {"skipped": "no database events in this server"}
    if scenario == 7:
        if name != "realtimed":
            return {"skipped": "one process here; realtimed alone is run as several"}
        return run_processes(bench)
    with bench.server(name, scenario) as server:
        try:
            result = run_loadgen(bench, scenario, server, profile_dir)
        except SetupError as e:
            logged = server_errors(server.log_path)
            raise SetupError(f"{e}\n{logged}" if logged else str(e)) from None
        logged = server_errors(server.log_path)
        if logged:
            result["serverErrors"] = logged
        if name == "realtimed" and scenario == 6 and server.database:
            stored = psql(
                bench.postgres,
                server.database,
                "SELECT count(*) FROM realtime.messages"
                " WHERE channel_name LIKE 'pub:%' AND event_name = 'm'",
            )
            result["stored"] = int(stored)
        if server.process.poll() is not None:
            raise SetupError(f"{name} exited during the run:\n{server.log_tail()}")
    return result


# ---------------------------------------------------------------------------
# Tables.


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if digits == 0:
        return f"{round(value):,}"
    return f"{value:,.{digits}f}"


def metrics(scenario: int, r: dict[str, Any], quick: bool) -> list[tuple[str, Any, int]]:
    """
    (label, value, digits) rows of one server's result.
    """
    if scenario in (1, 2):
        sustained = r.get("sustained") or {}
        at = r.get("latencyAtRate") or {}
        lat = at.get("latency") or {}
        rate = 100 if scenario == 2 and not quick else 50
        kept_up = ("yes" if at.get("sustained") else "no") if at else None
        per = r.get("recipientsPerMessage")
        return [
            (
                "sustained deliveries/s",
                (sustained.get("rate") or 0) * (per or 0) or None,
                0,
            ),
            ("p99 ms at the sustained rate", (sustained.get("latency") or {}).get("p99"), 1),
            (f"p50 ms at {rate} publishes/s", lat.get("p50"), 1),
            (f"p99 ms at {rate} publishes/s", lat.get("p99"), 1),
            (f"kept up at {rate} publishes/s", kept_up, 0),
            *recovery_metrics(r, rate, quick),
        ]
    if scenario == 3:
        return [("RSS bytes per connection", r.get("bytesPerConnection"), 0)]
    if scenario == 4:
        return [("connections/s", r.get("perSecond"), 0)]
    if scenario == 5:
        rows: list[tuple[str, Any, int]] = []
        for one in r.get("atRates") or [{"offered": 200 if quick else 1000}]:
            lat = one.get("latency") or {}
            offered = f"{one['offered']:,}/s offered"
            rows += [
                (f"p50 ms commit to receipt, {offered}", lat.get("p50"), 1),
                (f"p99 ms commit to receipt, {offered}", lat.get("p99"), 1),
                (f"changes/s achieved, {offered}", one.get("changesPerSecond"), 0),
            ]
        return rows
    if scenario == 6:
        return [("acked publishes/s", r.get("perSecond"), 0)]
    if scenario == 7:
        return processes_metrics(r)
    return []


#: How long the common rate is published again right after the ramp.
RECOVERY_SECONDS = 15
QUICK_RECOVERY_SECONDS = 3


def recovery_metrics(r: dict[str, Any], rate: int, quick: bool) -> list[tuple[str, Any, int]]:
    """
    The rows of the common rate again, right after the ramp: p50/p99 in
    the first and the last third, and the seconds until the p99 of each
    second stayed within 1.2x of the p99 before the ramp.
    """
    after = r.get("afterRamp") or {}
    seconds = QUICK_RECOVERY_SECONDS if quick else RECOVERY_SECONDS
    third = seconds // 3
    early = after.get("early") or {}
    late = after.get("late") or {}
    recovered = after.get("recoveredAfterSeconds")
    if after and recovered is None:
        recovered = f"not in {seconds} s"
    return [
        (f"p50 ms at {rate} publishes/s, 0-{third} s after the ramp", early.get("p50"), 1),
        (f"p99 ms at {rate} publishes/s, 0-{third} s after the ramp", early.get("p99"), 1),
        (
            f"p50 ms at {rate} publishes/s, {seconds - third}-{seconds} s after the ramp",
            late.get("p50"),
            1,
        ),
        (
            f"p99 ms at {rate} publishes/s, {seconds - third}-{seconds} s after the ramp",
            late.get("p99"),
            1,
        ),
        ("s after the ramp until p99 is within 1.2x of before", recovered, 0),
    ]


def processes_metrics(r: dict[str, Any]) -> list[tuple[str, Any, int]]:
    """
    Scenario 7's rows: each process count's figures, each beside the
    one-process figure.
    """
    by_count = r.get("processes") or {}
    rows: list[tuple[str, Any, int]] = []
    figures = (
        ("sustained deliveries/s", lambda x: x[0]),
        ("p50 ms at 50 publishes/s", lambda x: x[2]),
        ("p99 ms at 50 publishes/s", lambda x: x[3]),
    )
    base: dict[str, Any] = {}
    for count in PROCESS_COUNTS:
        one = by_count.get(str(count))
        values = [v for _, v, _ in metrics(1, one, False)] if one else [None] * 5
        for label, pick in figures:
            value = pick(values)
            noun = "process" if count == 1 else "processes"
            rows.append((f"{label}, {count} {noun}", value, 0 if "deliveries" in label else 1))
            if count == 1:
                base[label] = value
            else:
                first = base.get(label)
                ratio = (
                    f"{value / first:.2f}x"
                    if isinstance(value, (int, float)) and isinstance(first, (int, float)) and first
                    else None
                )
                rows.append((f"{label}, {count} processes / 1 process", ratio, 0))
    return rows


def _cpu(r: dict[str, Any]) -> str:
    return (
        f"server cpu {r.get('serverCpu')}, loadgen cpu {r.get('loadgenCpu')}, "
        f"cores {r.get('coreBusy')}"
    )


def details(scenario: int, r: dict[str, Any]) -> str:
    """
    One line of context per result: what the machine was doing.
    """
    if "skipped" in r:
        return r["skipped"]
    if r.get("serverErrors"):
        return f"{r['serverErrors']}; " + details(scenario, {**r, "serverErrors": None})
    if scenario in (1, 2):
        s = r.get("sustained") or {}
        at = r.get("latencyAtRate") or {}
        steps = " ".join(
            f"{st['rate']}{'+' if st['sustained'] else '-'}" for st in r.get("steps", [])
        )
        note = f"; {r['note']}" if r.get("note") else ""
        return (
            f"{r.get('connections')} conns{note}; at the sustained rate: {_cpu(s)}; "
            "at the common rate: "
            f"server cpu {at.get('serverCpu')}, loadgen cpu {at.get('loadgenCpu')}, "
            f"delivered {at.get('delivered')}/{at.get('expected')}; steps (publishes/s) {steps}"
            + recovery_details(r.get("afterRamp"))
        )
    if scenario == 3:
        return (
            f"{r.get('connections')} conns, RSS {r.get('rssBeforeKb')} -> "
            f"{r.get('rssAfterKb')} kB, set up in {r.get('setupSeconds')} s"
        )
    if scenario == 4:
        lat = r.get("setupLatency") or {}
        return (
            f"{r.get('connections')} conns, {r.get('concurrency')} at a time, "
            f"{r.get('seconds')} s; per connection p50 {lat.get('p50')} ms "
            f"p99 {lat.get('p99')} ms; " + _cpu(r)
        )
    if scenario == 5:
        return "; ".join(
            f"{one.get('offered'):,}/s offered: {r.get('subscribers')} subscribers, "
            f"{one.get('changes')} changes, delivered {one.get('delivered')}/"
            f"{one.get('expected')}, max {(one.get('latency') or {}).get('max')} ms, most"
            f" inserts waiting {one.get('maxInFlight')}, " + _cpu(one)
            for one in r.get("atRates") or [r]
        )
    if scenario == 7:
        parts = []
        for count, one in sorted((r.get("processes") or {}).items()):
            at = one.get("latencyAtRate") or {}
            parts.append(
                f"{count}: {one.get('connections')} conns, delivered "
                f"{at.get('delivered')}/{at.get('expected')} at 50/s, at the sustained rate "
                + _cpu(one.get("sustained") or {})
            )
        return "publisher on the first process; " + "; ".join(parts)
    if scenario == 6:
        stored = f", stored {r['stored']}" if "stored" in r else ""
        return (
            f"{r.get('publishers')} publishers x {r.get('inFlightPerPublisher')} in flight, "
            f"{r.get('acked')} acked, {r.get('failed')} failed{stored}; server cpu "
            f"{r.get('serverCpu')}, loadgen cpu {r.get('loadgenCpu')}, cores {r.get('coreBusy')}"
        )
    return ""


def recovery_details(after: dict[str, Any] | None) -> str:
    if not after:
        return ""
    return (
        f"; after the ramp: p99 by second {after.get('p99BySecond')} ms, "
        f"delivered {after.get('delivered')}/{after.get('expected')}, " + _cpu(after)
    )


def table(
    scenario: int,
    title: str,
    results: dict[str, dict[str, Any]],
    servers: list[str],
    quick: bool,
    markdown: bool = False,
) -> str:
    peers = [s for s in servers if s != "realtimed"]
    ratio_columns = [f"realtimed/{p}" for p in peers] if "realtimed" in servers else []
    header = ["scenario " + str(scenario), *servers, *ratio_columns]
    rows: list[list[str]] = []
    labels: list[str] = []
    values: dict[str, dict[str, Any]] = {}
    for name in servers:
        r = results.get(name, {})
        if "error" in r or "skipped" in r:
            continue
        for label, value, digits in metrics(scenario, r, quick):
            if label not in labels:
                labels.append(label)
            values.setdefault(label, {})[name] = (value, digits)
    if not labels:
        labels = [label for label, _, _ in metrics(scenario, {}, quick)]
    for label in labels:
        row = [label]
        for name in servers:
            r = results.get(name, {})
            if "error" in r:
                row.append("failed")
            elif "skipped" in r:
                row.append("n/a")
            else:
                value, digits = values.get(label, {}).get(name, (None, 0))
                row.append(_fmt(value, digits))
        for peer in peers if ratio_columns else []:
            mine = values.get(label, {}).get("realtimed", (None, 0))[0]
            theirs = values.get(label, {}).get(peer, (None, 0))[0]
            if isinstance(mine, (int, float)) and isinstance(theirs, (int, float)) and theirs:
                row.append(f"{mine / theirs:.2f}x")
            else:
                row.append("-")
        rows.append(row)
    if markdown:
        lines = [f"**{title}**", ""]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join(["---"] + ["--:"] * (len(header) - 1)) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines.append("")
        for name in servers:
            r = results.get(name, {})
            what = f"failed: {r['error']}" if "error" in r else details(scenario, r)
            lines.append(f"- {name}: {what}")
        return "\n".join(lines) + "\n"
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [f"== {title}"]
    lines.append("  ".join(h.ljust(widths[i]) for i, h in enumerate(header)))
    for row in rows:
        lines.append(
            "  ".join(
                c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row)
            )
        )
    for name in servers:
        r = results.get(name, {})
        if "error" in r:
            lines.append(f"   {name}: failed: {r['error']}")
        else:
            lines.append(f"   {name}: {details(scenario, r)}")
    return "\n".join(lines)


PLOTS = BENCH / "plots.py"


def draw_plots(
    bench_python: Path, results: Path | None, out: Path, document: str = ""
) -> list[Path]:
    """
    Draw the plots of the JSON file C{results} (run.py's or soak.py's), or
    of the JSON C{document} when no file was written, into C{out} with
    C{bench/plots.py}, run by C{bench_python}, the Python that has
    matplotlib.  Returns the PNGs written.
    """
    if results is None:
        with tempfile.TemporaryDirectory(prefix="realtimed-plots-") as tmp:
            saved = Path(tmp) / "results.json"
            saved.write_text(document)
            return draw_plots(bench_python, saved, out)
    proc = subprocess.run(
        [str(bench_python), str(PLOTS), str(results), "--out", str(out)],
        check=False,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SetupError(f"bench/plots.py failed:\n{proc.stdout}{proc.stderr}".strip())
    return [Path(line) for line in proc.stdout.splitlines() if line.endswith(".png")]


def machine_line() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        node = subprocess.run(
            ["node", "--version"], check=False, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        node = "?"
    return (
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; nproc {os.cpu_count()}; {model}; "
        f"Linux {os.uname().release}; Node.js {node}; Python {sys.version.split()[0]}; "
        f"server pinned to cpu {SERVER_CPU}, load generator to cpu {LOADGEN_CPU}"
    )


# ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--scenario",
        type=int,
        action="append",
        choices=sorted(SCENARIOS),
        help="run only this scenario (repeatable); default: all",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes: checks the harness, measures nothing",
    )
    parser.add_argument(
        "--servers",
        default=",".join(SERVERS),
        help="comma-separated, from: "
        + ", ".join(SERVERS)
        + "; also 'ceiling', a bare broadcast server that shows the load generator's limit",
    )
    parser.add_argument(
        "--postgres",
        default=os.environ.get("BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432"),
        help="PostgreSQL server URL without a database, for realtimed",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="record py-spy profiles of realtimed in scenarios 1, 4 and 6 into DIR",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write all results as JSON")
    parser.add_argument("--logs", type=Path, metavar="DIR", help="keep each server's log in DIR")
    parser.add_argument(
        "--markdown", type=Path, metavar="FILE", help="also write the tables as Markdown"
    )
    parser.add_argument(
        "--plots",
        type=Path,
        metavar="DIR",
        help="after the run, draw latency against the offered rate of each ramp step "
        "(scenarios 1 and 2) as PNGs into DIR",
    )
    parser.add_argument(
        "--prefill",
        type=int,
        default=0,
        metavar="N",
        help="store N messages of history in realtimed's database before each scenario",
    )
    parser.add_argument(
        "--setup-only",
        action="store_true",
        help="install the Node packages and bench/.venv, then exit",
    )
    args = parser.parse_args(argv)

    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = [s for s in servers if s not in (*SERVERS, "ceiling")]
    if unknown:
        parser.error(f"unknown servers: {', '.join(unknown)}")
    scenarios = sorted(set(args.scenario or SCENARIOS))

    try:
        ensure_node_packages()
        bench_python = ensure_bench_venv()
        if args.setup_only:
            print("setup done: bench/peers/node_modules and bench/.venv are ready")
            return 0
        realtimed_python = find_realtimed_python() if "realtimed" in servers else None
    except SetupError as e:
        print(f"setup failed: {e}", flush=True)
        return 2

    limit = raise_file_limit(32768)
    if limit < 12000:
        log(f"open files limited to {limit}: scenarios with 10,000 connections may fail")
    for directory in (args.profile, args.logs):
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)

    all_results: dict[int, dict[str, dict[str, Any]]] = {}
    tables = []
    failed = False
    print(f"machine: {machine_line()}", flush=True)
    mode = "quick (sizes too small to measure anything)" if args.quick else "full"
    if args.prefill:
        mode += f"; {args.prefill:,} messages stored before each realtimed scenario"
    print(f"mode: {mode}", flush=True)
    with tempfile.TemporaryDirectory(prefix="realtimed-bench-") as tmp:
        bench = Bench(
            quick=args.quick,
            workdir=Path(tmp),
            postgres=args.postgres.rstrip("/"),
            bench_python=bench_python,
            realtimed_python=realtimed_python,
            keep_logs=args.logs,
            prefill=args.prefill,
        )
        for scenario in scenarios:
            results: dict[str, dict[str, Any]] = {}
            for name in servers:
                log(f"scenario {scenario} on {name}")
                try:
                    results[name] = run_one(bench, scenario, name, args.profile)
                except SetupError as e:
                    failed = True
                    results[name] = {"error": str(e).strip()}
                    log(f"scenario {scenario} on {name} failed: {e}")
            all_results[scenario] = results
            names = QUICK_SCENARIOS if args.quick else SCENARIOS
            title = f"scenario {scenario}: {names[scenario]}"
            text = table(scenario, title, results, servers, args.quick)
            tables.append(text)
            print(text, flush=True)
    print("\n" + "\n\n".join(tables) if len(tables) > 1 else "", flush=True)
    if args.markdown:
        names = QUICK_SCENARIOS if args.quick else SCENARIOS
        args.markdown.write_text(
            f"Machine: {machine_line()}\n\n"
            + "\n".join(
                table(n, f"scenario {n}: {names[n]}", all_results[n], servers, args.quick, True)
                for n in scenarios
            )
        )
    document = json.dumps(
        {"machine": machine_line(), "quick": args.quick, "results": all_results}, indent=2
    )
    if args.json:
        args.json.write_text(document)
    if args.plots:
        if not {1, 2} & set(scenarios):
            log("--plots: only scenarios 1 and 2 are plotted, and neither ran")
        else:
            try:
                for png in draw_plots(bench_python, args.json, args.plots, document):
                    print(f"plot: {png}", flush=True)
            except SetupError as e:
                log(str(e))
                failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
