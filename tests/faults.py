"""
Fault injection: steady publishing through two realtimed processes on one
throwaway PostgreSQL cluster, while faults are injected one after the
other, and an account of every message: published, acknowledged, failed,
stored, and delivered to each subscriber (lost, duplicated, out of order).

Shared by ``tests/test_faults.py`` (a short run in the test suite) and
``bench/faults.py`` (longer, with more clients and repeats).  Blocking code
with threads; no reactor.

The clients:

- publishers: python-socketio sockets, one per process, each publishing
  ``{"p": name, "n": 1, 2, ...}`` at a steady rate and waiting for each
  ack; after a reconnect they subscribe again;
- subscribers: stock socket.io-client sockets (connection state recovery,
  no option beyond reconnecting quickly), and python-socketio sockets that
  subscribe again ``since`` the offset of the last message they received.

Every client reaches its process through a TCP proxy, which stands for the
network and the load balancer: it can cut every connection, hang them
silently, or send new ones to the other process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg2
import socketio
from attrs import define, field

from tests.processes import RealtimedProcess, free_port
from tests.test_realtime import token
from tests.test_realtime_js import JSClient

CHANNEL = "load"

#: How long the account waits for the last messages to arrive after a
#: phase, at most.
SETTLE = 60.0


def _postgres_bin() -> Path:
    """
    Where the PostgreSQL server programs are.
    """
    pg_config = shutil.which("pg_config")
    if pg_config:
        path = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True).stdout
        if (Path(path.strip()) / "initdb").exists():
            return Path(path.strip())
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists():
            return candidate
    raise RuntimeError("PostgreSQL's server programs (initdb, pg_ctl) are not installed")


class Cluster:
    """
    A throwaway PostgreSQL cluster in a temporary directory, on a loopback
    port of its own, which may be restarted and killed.  As root, its
    programs run as the ``postgres`` user (PostgreSQL refuses root).
    """

    def __init__(self) -> None:
        self.bin = _postgres_bin()
        self.directory = Path(tempfile.mkdtemp(prefix="realtimed-faults-pg-"))
        self.data = self.directory / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/realtimed"
        if os.getuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")

    def _run(self, *args: str) -> None:
        command = [str(self.bin / args[0]), *args[1:]]
        if os.getuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, cwd=self.directory)
        if done.returncode:
            log = self.directory / "log"
            raise RuntimeError(
                f"{args[0]} failed ({done.returncode}): {done.stdout}{done.stderr}"
                + (log.read_text(errors="replace")[-2000:] if log.exists() else "")
            )

    def _options(self) -> str:
        return (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.directory}"
            " -c fsync=off -c max_connections=60"
        )

    def start(self) -> None:
        """
        Create the cluster if need be, start it, and create the database.
        """
        if not self.data.exists():
            self._run(
                "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"
            )
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.directory / "log"), "-w", "-t", "120",
            "-o", self._options(), "start",
        )  # fmt: skip
        connection = psycopg2.connect(self.url.rsplit("/", 1)[0] + "/postgres")
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = 'realtimed'")
                if cursor.fetchone() is None:
                    cursor.execute("CREATE DATABASE realtimed")
        finally:
            connection.close()

    def restart(self) -> None:
        """
        A clean restart (``pg_ctl restart -m fast``).
        """
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.directory / "log"), "-w", "-t", "120",
            "-m", "fast", "-o", self._options(), "restart",
        )  # fmt: skip

    def crash(self) -> None:
        """
        Kill the server and every one of its processes with SIGKILL, as a
        machine that loses power would (the files stay).
        """
        pid = int((self.data / "postmaster.pid").read_text().split()[0])
        victims = [pid, *_children(pid)]
        for victim in victims:
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 30
        while any(_alive(victim) for victim in victims) and time.monotonic() < deadline:
            time.sleep(0.05)
        # Here a killed process may stay a zombie (nothing reaps it), which
        # PostgreSQL would take for a server still running: after a real
        # crash no process of that number would be left.
        (self.data / "postmaster.pid").unlink(missing_ok=True)
        for lock in self.directory.glob(".s.PGSQL.*"):
            lock.unlink(missing_ok=True)

    def destroy(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        except RuntimeError:
            pass
        shutil.rmtree(self.directory, ignore_errors=True)

    def sql(self, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
        connection = psycopg2.connect(self.url)
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(statement, params)
                return list(cursor.fetchall()) if cursor.description else []
        finally:
            connection.close()


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class Proxy:
    """
    A TCP proxy on loopback in front of one realtimed process: it forwards
    to C{target} (a port), and can cut every connection, hold them silent
    for a while, or forward new ones elsewhere.
    """

    def __init__(self, target: int) -> None:
        self.target: int | None = target
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._flowing = threading.Event()
        self._flowing.set()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        target = self.target
        try:
            if target is None:
                raise OSError("no target")
            upstream = socket.create_connection(("127.0.0.1", target), timeout=5)
            upstream.settimeout(None)
        except OSError:
            client.close()
            return
        with self._lock:
            self._open.update((client, upstream))
        threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
        self._pump(upstream, client)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                self._flowing.wait()
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                self._close(s)

    def _close(self, s: socket.socket) -> None:
        with self._lock:
            self._open.discard(s)
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()

    def cut(self) -> None:
        """
        Drop every connection at once.
        """
        with self._lock:
            victims = list(self._open)
        for s in victims:
            self._close(s)

    @contextmanager
    def silent(self) -> Iterator[None]:
        """
        Forward nothing while the block runs (the connections stay open).
        """
        self._flowing.clear()
        try:
            yield
        finally:
            self._flowing.set()

    def close(self) -> None:
        self._server.close()
        self.cut()


class WebhookReceiver:
    """
    An HTTP server on loopback recording the message ids POSTed to it;
    it can be down for a while (connections refused).
    """

    def __init__(self) -> None:
        self.port = free_port()
        self._received: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def up(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                try:
                    message_id = json.loads(body)["messageId"]
                except (ValueError, KeyError, TypeError):
                    message_id = None
                if message_id is not None:
                    with receiver._lock:
                        receiver._received[message_id] += 1
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def received(self) -> Counter[str]:
        """
        How many times each message id was received so far.
        """
        with self._lock:
            return Counter(self._received)

    def down(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@define(eq=False)
class Publisher:
    """
    A python-socketio socket publishing steadily, recording each outcome.
    """

    name: str
    address: str
    rate: float
    phase: str = ""
    acked: list[tuple[str, int, str]] = field(factory=list)
    #: the publishes that failed, by phase and what the client saw
    failed: Counter[tuple[str, str]] = field(factory=Counter)
    #: how many publishes it has made, by phase
    sent: Counter[str] = field(factory=Counter)
    #: how many of its publishes were answered, or failed
    answered: int = 0
    _n: int = 0
    _stop: threading.Event = field(factory=threading.Event)
    _sio: Any = None
    _thread: threading.Thread | None = None

    def start(self) -> None:
        sio = self._sio = socketio.Client(reconnection=True, reconnection_delay=0.1)
        sio.on("connect", lambda: threading.Thread(target=self._subscribe, daemon=True).start())
        sio.connect(self.address, auth={"token": token(self.name)}, transports=["websocket"])
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _subscribe(self) -> None:
        try:
            self._sio.call("REALTIME_SUBSCRIBE", {"channel": CHANNEL}, timeout=15)
        except Exception:
            pass

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self._n += 1
            phase, n = self.phase, self._n
            self.sent[phase] += 1
            payload = {"p": self.name, "n": n, "phase": phase}
            try:
                ack = self._sio.call(
                    "REALTIME_PUBLISH",
                    {"channel": CHANNEL, "event": "n", "payload": payload},
                    timeout=15,
                )
            except socketio.exceptions.TimeoutError:
                self.failed[phase, "no answer in 15 s"] += 1
            except socketio.exceptions.SocketIOError:
                self.failed[phase, "not connected"] += 1
            else:
                if ack.get("ok"):
                    self.acked.append((phase, n, ack["messageId"]))
                else:
                    self.failed[phase, ack.get("error", {}).get("code", "?")] += 1
            self.answered += 1
            self._stop.wait(max(0.0, 1.0 / self.rate - (time.monotonic() - started)))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        if self._sio is not None:
            self._sio.disconnect()


@define(eq=False)
class Subscriber:
    """
    Records the messages a subscriber received, in order: by a stock
    socket.io-client socket with connection state recovery, or by a
    python-socketio socket that subscribes again ``since`` its last
    message.
    """

    name: str
    address: str
    kind: str
    received: list[dict[str, Any]] = field(factory=list)
    reconnects: int = 0
    unrecovered: int = 0
    _js: JSClient | None = None
    _sio: Any = None
    _last: str | None = None
    _lock: threading.Lock = field(factory=threading.Lock)

    def start(self) -> None:
        if self.kind == "js":
            self._js = JSClient(self.address)
            self._js.connect({"token": token(self.name)}, reconnect=True)
            ack = self._js.request("REALTIME_SUBSCRIBE", {"channel": CHANNEL})
            assert ack["ok"], ack
            return
        sio = self._sio = socketio.Client(reconnection=True, reconnection_delay=0.1)
        first = threading.Event()

        def on_message(data: dict[str, Any], *offset: str) -> None:
            with self._lock:
                self.received.append(data)
                # The offset says exactly what was received; a message id
                # only roughly, when transactions overlap.
                self._last = offset[0] if offset else data["messageId"]

        def on_connect() -> None:
            if first.is_set():
                self.reconnects += 1
            first.set()
            threading.Thread(target=self._subscribe, daemon=True).start()

        sio.on("n", on_message)
        sio.on("connect", on_connect)
        sio.connect(self.address, auth={"token": token(self.name)}, transports=["websocket"])

    def _subscribe(self) -> None:
        request: dict[str, Any] = {"channel": CHANNEL}
        with self._lock:
            if self._last is not None:
                request["since"] = self._last
        try:
            ack = self._sio.call("REALTIME_SUBSCRIBE", request, timeout=15)
        except Exception:
            self.unrecovered += 1
            return
        replay = ack.get("replay")
        if not ack.get("ok") or (replay is not None and not replay["complete"]):
            self.unrecovered += 1

    def messages(self) -> list[dict[str, Any]]:
        if self._js is not None:
            while not self._js.events.empty():
                event, data = self._js.events.get()
                if event == "n":
                    self.received.append(data)
            while not self._js.reconnects.empty():
                connected = self._js.reconnects.get()
                self.reconnects += 1
                if not connected["recovered"]:
                    self.unrecovered += 1
        with self._lock:
            return list(self.received)

    def stop(self) -> None:
        if self._js is not None:
            self._js.close()
        if self._sio is not None:
            self._sio.disconnect()


@define
class Account:
    """
    What happened to the messages of one phase.
    """

    fault: str
    published: int
    acked: int
    failed: dict[str, int]
    #: publishes still waiting for their answer when the phase was counted
    unanswered: int
    stored_not_acked: int
    acked_not_stored: int
    delivered: dict[str, int]
    lost: int
    duplicated: int
    out_of_order: int
    unrecovered: int
    webhooks: str
    seconds: float

    def line(self) -> str:
        failed = ", ".join(f"{n} {why}" for why, n in sorted(self.failed.items())) or "0"
        delivered = " ".join(f"{k}={v}" for k, v in sorted(self.delivered.items()))
        return (
            f"{self.fault:<16} published {self.published:>5}  acked {self.acked:>5}"
            f"  failed {failed}  unanswered {self.unanswered}"
            f"  stored-not-acked {self.stored_not_acked}"
            f"  acked-not-stored {self.acked_not_stored}  delivered {delivered}"
            f"  lost {self.lost}  duplicated {self.duplicated}"
            f"  out-of-order {self.out_of_order}  unrecovered {self.unrecovered}"
            f"  webhooks {self.webhooks}  ({self.seconds:.0f} s)"
        )


@define(eq=False)
class Rig:
    """
    The cluster, two realtimed processes behind their proxies, a webhook
    receiver, and the clients.
    """

    workdir: Path
    publishers_per_process: int = 1
    js_per_process: int = 1
    python_per_process: int = 1
    rate: float = 20.0
    cluster: Cluster = field(factory=Cluster)
    processes: list[RealtimedProcess] = field(factory=list)
    proxies: list[Proxy] = field(factory=list)
    receiver: WebhookReceiver = field(factory=WebhookReceiver)
    publishers: list[Publisher] = field(factory=list)
    subscribers: list[Subscriber] = field(factory=list)

    def start(self) -> None:
        self.cluster.start()
        for n in range(2):
            process = RealtimedProcess(
                self.cluster.url,
                self.workdir / f"realtimed-{n}",
                "--recovery-window", "120",
                "--webhook-allow-private",
                "--max-publish-rate", "0",
            )  # fmt: skip
            process.start()
            process.wait_healthy()
            self.processes.append(process)
            self.proxies.append(Proxy(process.port))
        self.cluster.sql(
            "INSERT INTO realtime.channels (pattern, webhook_urls) VALUES (%s, %s)",
            (CHANNEL, [self.receiver.url]),
        )
        for n, proxy in enumerate(self.proxies):
            for i in range(self.js_per_process):
                self.subscribers.append(Subscriber(f"js-{n}-{i}", proxy.address, "js"))
            for i in range(self.python_per_process):
                self.subscribers.append(Subscriber(f"py-{n}-{i}", proxy.address, "python"))
            for i in range(self.publishers_per_process):
                self.publishers.append(Publisher(f"pub-{n}-{i}", proxy.address, self.rate))
        clients: list[Subscriber | Publisher] = [*self.subscribers, *self.publishers]
        for client in clients:
            client.start()

    def stop(self) -> None:
        clients: list[Subscriber | Publisher] = [*self.publishers, *self.subscribers]
        for client in clients:
            try:
                client.stop()
            except Exception:
                pass
        for proxy in self.proxies:
            proxy.close()
        for process in self.processes:
            process.stop()
        self.receiver.down()
        self.cluster.destroy()

    # Faults

    def faults(self) -> dict[str, Callable[[], None]]:
        return {
            "none": lambda: None,
            "pg-restart": self.cluster.restart,
            "pg-kill": self._pg_kill,
            "realtimed-stop": lambda: self._realtimed_down(kill=False),
            "realtimed-kill": lambda: self._realtimed_down(kill=True),
            "connections-cut": self._cut,
            "connections-hang": self._hang,
            "webhooks-down": self._webhooks_down,
        }

    def _pg_kill(self) -> None:
        self.cluster.crash()
        time.sleep(1)
        self.cluster.start()

    def _realtimed_down(self, kill: bool) -> None:
        # Process 0 stops (SIGTERM) or dies (SIGKILL); its proxy sends its
        # clients to process 1, as a load balancer would; then it comes back.
        victim, survivor = self.processes
        self.proxies[0].target = survivor.port
        if kill:
            victim.kill()
        else:
            victim.stop()
        time.sleep(2)
        victim.start()
        victim.wait_healthy()
        self.proxies[0].target = victim.port

    def _cut(self) -> None:
        for proxy in self.proxies:
            proxy.cut()

    def _hang(self) -> None:
        with self.proxies[0].silent():
            time.sleep(4)

    def _webhooks_down(self) -> None:
        self.receiver.down()
        time.sleep(4)
        self.receiver.up()

    # Running

    def phase(
        self, fault: str, before: float = 2.0, after: float = 3.0, label: str | None = None
    ) -> Account:
        """
        Publish steadily for C{before} seconds, inject C{fault}, publish for
        C{after} more, then account for every message of the phase (whose
        messages carry C{label}, the fault's name unless given).
        """
        label = label or fault
        started = time.monotonic()
        # Every publisher is publishing again (one whose ack was lost with a
        # cut connection waits for it first).
        count = {p.name: p.answered for p in self.publishers}
        deadline = started + 30
        while any(p.answered == count[p.name] for p in self.publishers):
            if time.monotonic() > deadline:
                raise AssertionError("a publisher does not publish any more")
            time.sleep(0.05)
        seen_before = {s.name: len(s.messages()) for s in self.subscribers}
        acked_before = {p.name: len(p.acked) for p in self.publishers}
        for publisher in self.publishers:
            publisher.phase = label
        time.sleep(before)
        self.faults()[fault]()
        time.sleep(after)
        for publisher in self.publishers:
            publisher.phase = ""
        # The last publishes of the phase are answered, or fail, within 15 s.
        time.sleep(0.5)
        acked = {
            message_id: (p.name, n)
            for p in self.publishers
            for phase, n, message_id in p.acked[acked_before[p.name] :]
            if phase == label
        }
        published = sum(p.sent[label] for p in self.publishers)
        failed: Counter[str] = Counter()
        for p in self.publishers:
            failed.update({why: n for (phase, why), n in p.failed.items() if phase == label})
        stored = {
            str(row[0])
            for row in self.cluster.sql(
                "SELECT id FROM realtime.messages WHERE payload ->> 'phase' = %s", (label,)
            )
        }
        deadline = time.monotonic() + SETTLE
        while time.monotonic() < deadline:
            if (
                all(
                    acked.keys() <= {m["messageId"] for m in s.messages()[seen_before[s.name] :]}
                    for s in self.subscribers
                )
                and acked.keys() <= self.receiver.received().keys()
            ):
                break
            time.sleep(0.2)
        time.sleep(0.5)
        lost = duplicated = out_of_order = unrecovered = 0
        delivered = {}
        for subscriber in self.subscribers:
            mine = [
                m
                for m in subscriber.messages()[seen_before[subscriber.name] :]
                if m.get("payload", {}).get("phase") == label
            ]
            delivered[subscriber.name] = len(mine)
            ids = Counter(m["messageId"] for m in mine)
            duplicated += sum(count - 1 for count in ids.values() if count > 1)
            lost += len(acked.keys() - ids.keys())
            last: dict[str, int] = {}
            for m in mine:
                p, n = m["payload"]["p"], m["payload"]["n"]
                if n < last.get(p, 0):
                    out_of_order += 1
                last[p] = max(n, last.get(p, 0))
            unrecovered += subscriber.unrecovered
            subscriber.unrecovered = 0
        hooks = {k: v for k, v in self.receiver.received().items() if k in stored}
        webhooks_lost = len(acked.keys() - hooks.keys())
        webhooks_twice = sum(v - 1 for v in hooks.values() if v > 1)
        return Account(
            fault=label,
            published=published,
            acked=len(acked),
            failed=dict(failed),
            unanswered=published - len(acked) - sum(failed.values()),
            stored_not_acked=len(stored - acked.keys()),
            acked_not_stored=len(acked.keys() - stored),
            delivered=delivered,
            lost=lost,
            duplicated=duplicated,
            out_of_order=out_of_order,
            unrecovered=unrecovered,
            webhooks=f"{len(hooks)} received, {webhooks_lost} lost, {webhooks_twice} twice",
            seconds=time.monotonic() - started,
        )
