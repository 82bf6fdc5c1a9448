"""
A hostile-client suite: a real ``twistd -n realtimed`` process attacked from
127.0.0.2 while a well-behaved python-socketio client on 127.0.0.1 carries
on.

Each test starts the daemon on a database of its own, with short limits
(`OPTIONS`), connects the good client, runs one family of attacks, and after
each attack shows that the process is alive, that its resident memory stayed
within `RSS_GROWTH_BOUND` of what it was before the attacks, and that the
good client's publishes are acknowledged and delivered.  The attacker's
address is a different one so that per-address limits stop it and not the
good client.

Every answer an attack gets must be one the documentation promises (a 4xx
with the documented body, a refusal ack, a close); a 500, an
``INTERNAL_ERROR`` ack, a traceback in the daemon's log or the process
dying counts as a crash.  The module prints one line at exit, beginning
``hostile:``, with the inputs tried by kind, the crashes, the good requests
that failed and the daemon's peak resident memory.
"""

from __future__ import annotations

import atexit
import base64
import http.client
import json
import os
import re
import select
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote, urlencode

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.processes import RealtimedProcess, start_daemon
from tests.support import create_database, run_sql
from tests.test_realtime import KEYS, PATIENCE, Client, token

#: Where attacks come from; the good client connects from 127.0.0.1.
ATTACKER = "127.0.0.2"

#: How much the daemon's resident memory may grow over the whole of one
#: test's attacks.  The attacks offer it many times this (twenty 100 MiB
#: declared bodies and twenty 8 MiB chunked ones at once, 30 MB queued for a
#: reader that never reads), so a server that buffered what it should
#: refuse would pass the bound; what it may hold legitimately (a body of up
#: to --max-body per request under way, 4 MB for one slow reader, the
#: memory Python's allocator keeps after freeing) stays well below it.
RSS_GROWTH_BOUND = 64 * 1024 * 1024

#: How much the daemon's peak resident memory may grow while a client that
#: never reads sends 16 MiB of WebSocket pings.  Each ping asks for a pong
#: of nearly its size: a server that kept every pong for the client would
#: grow by about as much as was sent; one that stops answering pings once
#: 64 KiB wait for the client grows by little more than its parser's
#: buffers.
PING_FLOOD_GROWTH_BOUND = 8 * 1024 * 1024

#: The limits the daemon runs with: small and short, so that attacks reach
#: them quickly.
OPTIONS = {
    "max-body": "65536",
    "request-timeout": "1",
    "connect-timeout": "1",
    "max-connections-per-ip": "20",
    "max-publish-rate": "20",
}

#: Error codes a realtime request's refusal may carry (docs/behaviour.rst);
#: INTERNAL_ERROR is not among them: it is counted as a crash.
REFUSAL_CODES = frozenset(
    {
        "INVALID_INPUT",
        "REALTIME_UNAUTHORIZED",
        "REALTIME_NOT_SUBSCRIBED",
        "REALTIME_LIMIT_EXCEEDED",
        "REALTIME_RATE_LIMITED",
    }
)

#: Statuses the REST API and the Engine.IO endpoint answer bad requests with.
DOCUMENTED_STATUSES = frozenset({200, 201, 204, 400, 401, 403, 404, 405, 408, 409, 413, 503})

#: What the answers to a request that failed inside the daemon say.
CRASH_ANSWERS = ("INTERNAL_ERROR", "Internal server error")

#: What marks a failure the daemon logged as unexpected.
CRASH_IN_LOG = re.compile(r"Traceback \(most recent call last\)|Unhandled Error")


class Tally:
    """
    What the attacks of the whole module tried and what they found.
    """

    def __init__(self) -> None:
        self.inputs: Counter[str] = Counter()
        self.crashes = 0
        self.failures = 0
        self.good_requests = 0
        self.peak_rss = 0
        self.reported = False

    def tried(self, kind: str, count: int = 1) -> None:
        self.inputs[kind] += count
        if not self.reported:
            self.reported = True
            atexit.register(lambda: print(self.summary(), flush=True))

    def summary(self) -> str:
        kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(self.inputs.items()))
        return (
            f"hostile: {sum(self.inputs.values())} inputs ({kinds}); "
            f"crashes {self.crashes}; good requests failed {self.failures} "
            f"of {self.good_requests}; "
            f"peak RSS {self.peak_rss / 2**20:.1f} MiB"
        )


TALLY = Tally()


# --- the attacker's raw connections ----------------------------------------


def attacker_socket(port: int, receive_buffer: int | None = None) -> socket.socket:
    """
    A TCP connection to the daemon from the attacker's address.
    """
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    s.bind((ATTACKER, 0))
    s.settimeout(PATIENCE)
    s.connect(("127.0.0.1", port))
    return s


def read_answer(s: socket.socket) -> tuple[int | None, bytes]:
    """
    Read an HTTP answer until the server closes the connection: its status
    (C{None} when the connection closed with no answer) and body.
    """
    received = b""
    try:
        while True:
            data = s.recv(65536)
            if not data:
                break
            received += data
            head, sep, body = received.partition(b"\r\n\r\n")
            match = re.search(rb"content-length: *(\d+)", head, re.I)
            if sep and match and len(body) >= int(match.group(1)):
                break
    except (ConnectionResetError, BrokenPipeError):
        pass
    finally:
        s.close()
    if not received.startswith(b"HTTP/1.1 "):
        return None, b""
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def attacker_http(port: int) -> http.client.HTTPConnection:
    """
    An HTTP client connection from the attacker's address.
    """
    return http.client.HTTPConnection(
        "127.0.0.1", port, timeout=PATIENCE, source_address=(ATTACKER, 0)
    )


def request(
    port: int, method: str, path: str, body: bytes | None = None, **headers: str
) -> tuple[int, bytes]:
    """
    One request from the attacker's address, on a connection of its own.
    """
    connection = attacker_http(port)
    try:
        connection.request(method, path, body=body, headers=headers)
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


def client_frame(opcode: int, payload: bytes, final: bool = True) -> bytes:
    """
    A masked WebSocket frame, as a client sends it.
    """
    first = (0x80 if final else 0) | opcode
    size = len(payload)
    if size < 126:
        head = struct.pack("!BB", first, 0x80 | size)
    elif size < 65536:
        head = struct.pack("!BBH", first, 0x80 | 126, size)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, size)
    # a zero masking key leaves the payload as it is
    return head + b"\0\0\0\0" + payload


class RawWebSocket:
    """
    The attacker's WebSocket: just enough of RFC 6455 to send text and
    binary frames and read what comes back, answering Engine.IO pings.
    """

    def __init__(self, port: int, receive_buffer: int | None = None, query: str = "") -> None:
        self.socket = attacker_socket(port, receive_buffer)
        key = base64.b64encode(os.urandom(16)).decode()
        self.socket.sendall(
            (
                f"GET /socket.io/?EIO=4&transport=websocket{query} HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        received = b""
        while b"\r\n\r\n" not in received:
            data = self.socket.recv(4096)
            if not data:
                break
            received += data
        head, _, self.buffer = received.partition(b"\r\n\r\n")
        self.status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else None
        self.head = head
        self.closed = self.status != 101
        #: the code of the close frame the server sent, if it sent one
        self.close_code: int | None = None

    def send(self, data: str | bytes) -> None:
        """
        Send one frame: text for C{str}, binary for C{bytes}.
        """
        payload = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
        opcode = 1 if isinstance(data, str) else 2
        self.send_frame(opcode, payload)

    def send_frame(self, opcode: int, payload: bytes, final: bool = True) -> None:
        try:
            self.socket.sendall(client_frame(opcode, payload, final))
        except OSError:
            self.closed = True

    def _read(self, size: int) -> bytes | None:
        while len(self.buffer) < size:
            try:
                data = self.socket.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                data = b""
            if not data:
                return None
            self.buffer += data
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def frame(self) -> tuple[int, bytes] | None:
        """
        The next frame, or C{None} once the connection is closed.
        """
        if self.closed:
            return None
        head = self._read(2)
        if head is None:
            self.closed = True
            return None
        opcode, size = head[0] & 0x0F, head[1] & 0x7F
        if size == 126:
            more = self._read(2)
            size = struct.unpack("!H", more)[0] if more else 0
        elif size == 127:
            more = self._read(8)
            size = struct.unpack("!Q", more)[0] if more else 0
        payload = self._read(size)
        if payload is None:
            self.closed = True
            return None
        if opcode == 8:
            self.closed = True
            if len(payload) >= 2:
                self.close_code = struct.unpack("!H", payload[:2])[0]
            return None
        return opcode, payload

    def packet(self) -> str | bytes | None:
        """
        The next Engine.IO packet other than a ping (which is answered), or
        C{None} once the connection is closed.
        """
        while True:
            frame = self.frame()
            if frame is None:
                return None
            opcode, payload = frame
            if opcode == 2:
                return payload
            text = payload.decode("utf-8")
            if text == "2":
                self.send("3")
                continue
            return text

    def packets_until(self, done: Callable[[str | bytes], bool]) -> list[str | bytes]:
        """
        The packets received up to the first for which C{done} holds, that
        one included; all of them when the connection closes first.
        """
        got: list[str | bytes] = []
        while True:
            packet = self.packet()
            if packet is None:
                return got
            got.append(packet)
            if done(packet):
                return got

    def connect(self, auth: object) -> str | bytes | None:
        """
        Read the open packet and send a Socket.IO CONNECT with C{auth}; the
        answer.
        """
        opened = self.packet()
        assert isinstance(opened, str) and opened.startswith("0{"), opened
        self.send("40" + json.dumps(auth))
        return self.packet()

    def close(self) -> None:
        self.closed = True
        self.socket.close()


def acks_in(packets: list[str | bytes]) -> dict[int, Any]:
    """
    The Socket.IO acknowledgements among C{packets}, by id.
    """
    acks = {}
    for packet in packets:
        if isinstance(packet, str):
            match = re.match(r"43(\d+)(\[.*)", packet, re.S)
            if match:
                acks[int(match.group(1))] = json.loads(match.group(2))
    return acks


# --- the test case ----------------------------------------------------------


class HostileTestCase(TestCase):
    """
    One daemon under attack per test, and the good client.
    """

    timeout = 120
    options: dict[str, str] = OPTIONS
    daemon: RealtimedProcess

    @inlineCallbacks
    def setUp(self) -> Generator[Deferred[Any], Any, None]:
        self.url = create_database(self)
        arguments = [part for name, value in self.options.items() for part in (f"--{name}", value)]
        self.daemon = yield start_daemon(self, self.url, *arguments)
        assert self.daemon.address is not None
        self.address = self.daemon.address
        run_sql(
            self.url,
            "INSERT INTO realtime.channels (pattern) VALUES ('good'), ('busy'), ('chat:*')",
        )
        self.port = int(self.address.rsplit(":", 1)[1])
        self.good = Client(self.address)
        self.addCleanup(self.good.close)
        self.good.connect({"token": token("good-user")})
        ack = self.good.request("REALTIME_SUBSCRIBE", {"channel": "good"})
        self.assertTrue(ack["ok"], ack)
        self.checks = 0
        self.crashes = 0
        self.failures = 0
        self.undocumented: list[str] = []
        self.baseline = 0
        self.check_unharmed("start")
        self.baseline = self.memory()["VmRSS"]

    def memory(self) -> dict[str, int]:
        """
        The daemon's resident memory now (C{VmRSS}) and at its peak
        (C{VmHWM}), in bytes.
        """
        figures = {}
        with open(f"/proc/{self.daemon.process.pid}/status") as status:
            for line in status:
                name, _, value = line.partition(":")
                if name in ("VmRSS", "VmHWM"):
                    figures[name] = int(value.split()[0]) * 1024
        TALLY.peak_rss = max(TALLY.peak_rss, figures["VmHWM"])
        return figures

    def crashed(self, what: str) -> None:
        """
        Count a crash: the daemon answered C{what}, which it never should.
        """
        self.crashes += 1
        TALLY.crashes += 1
        self.undocumented.append(what)

    def answered(self, kind: str, what: str, documented: bool, count: bool = True) -> None:
        """
        Count one attacking input of C{kind} (unless not C{count}: one of
        several answers to an input counted already), answered with C{what},
        which begins with the HTTP status when there is one.  A 500 or an
        C{INTERNAL_ERROR} is a crash whatever the attack.
        """
        if count:
            TALLY.tried(kind)
        if what.split(" ", 1)[0] == "500" or any(sign in what for sign in CRASH_ANSWERS):
            self.crashed(f"{kind}: {what}")
        elif not documented:
            self.undocumented.append(f"{kind}: {what}")

    def check_unharmed(self, attack: str) -> None:
        """
        After C{attack}: the daemon runs, its memory is within the bound,
        and the good client's publish is acknowledged and delivered.
        """
        if self.daemon.process.poll() is not None:
            self.crashed(f"the daemon exited after {attack}")
            self.fail(f"realtimed exited after {attack}:\n{self.daemon.output()[-3000:]}")
        rss = self.memory()["VmRSS"]
        if self.baseline:
            self.assertLessEqual(
                rss - self.baseline,
                RSS_GROWTH_BOUND,
                f"resident memory grew by {(rss - self.baseline) / 2**20:.1f} MiB after {attack}",
            )
        self.checks += 1
        number = self.checks
        try:
            ack = self.good.request(
                "REALTIME_PUBLISH",
                {"channel": "good", "event": "check", "payload": {"n": number, "after": attack}},
            )
            delivered = False
            if ack.get("ok") is True:
                while not delivered:
                    _event, message = self.good.next_event("check")
                    if isinstance(message, list) and message:
                        # with connection state recovery, the offset follows
                        message = message[0]
                    payload = message.get("payload") if isinstance(message, dict) else None
                    delivered = isinstance(payload, dict) and payload.get("n") == number
            health = http.client.HTTPConnection("127.0.0.1", self.port, timeout=PATIENCE)
            try:
                health.request("GET", "/healthz")
                healthy = health.getresponse().status == 200
            finally:
                health.close()
            ok = delivered and healthy
        except Exception as e:
            ack, ok = repr(e), False
        TALLY.good_requests += 1
        if not ok:
            self.failures += 1
            TALLY.failures += 1
        self.assertTrue(ok, f"the good client's publish after {attack}: {ack}")

    def finish(self) -> None:
        """
        The end of a test: no crash in the log, none counted, no good
        request failed, no undocumented answer.
        """
        logged = CRASH_IN_LOG.findall(self.daemon.output())
        if logged:
            self.crashes += len(logged)
            TALLY.crashes += len(logged)
        self.assertEqual(
            (self.crashes, self.failures, self.undocumented),
            (0, 0, []),
            self.daemon.output()[-5000:] if logged else "",
        )

    def held_session(self) -> str:
        """
        Open a polling session from the attacker's address and have it
        accepted into Socket.IO, so that it stays open; its sid.
        """
        status, body = request(self.port, "GET", "/socket.io/?EIO=4&transport=polling")
        self.assertEqual(status, 200, body)
        sid = json.loads(body[1:])["sid"]
        path = f"/socket.io/?EIO=4&transport=polling&sid={sid}"
        connect = "40" + json.dumps({"token": token("holder")})
        self.assertEqual(request(self.port, "POST", path, connect.encode())[0], 200)
        status, body = request(self.port, "GET", path)
        self.assertTrue(body.startswith(b"40{"), body)
        return sid

    @contextmanager
    def at_once(self, count: int) -> Iterator[ThreadPoolExecutor]:
        with ThreadPoolExecutor(count) as pool:
            yield pool


# --- the attacks ------------------------------------------------------------


class OversizedBodyTests(HostileTestCase):
    def declared(self, path: str) -> tuple[int | None, bytes]:
        """
        Declare a 100 MiB body and start sending it.
        """
        s = attacker_socket(self.port)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEYS.api_key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {100 * 2**20}\r\n\r\n"
        )
        try:
            s.sendall(head.encode() + b"[" + b"0," * 32768)
        except OSError:
            pass
        return read_answer(s)

    def chunked(self, path: str) -> tuple[int | None, bytes]:
        """
        Send up to 8 MiB of body in 64 KiB chunks, until the server stops
        the connection.
        """
        s = attacker_socket(self.port)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEYS.api_key}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"10000\r\n" + b" " * 65536 + b"\r\n"
        try:
            s.sendall(head.encode())
            for _ in range(128):
                s.sendall(chunk)
        except OSError:
            pass
        return read_answer(s)

    def oversized_message(self, fragments: int) -> int | None:
        """
        Send a WebSocket message over the limit, in C{fragments} frames;
        the close code the server answers with.
        """
        ws = RawWebSocket(self.port)
        try:
            ws.packet()
            piece = b"4" + b"x" * (2 * 65536 // fragments)
            for i in range(fragments):
                ws.send_frame(1 if i == 0 else 0, piece, final=i == fragments - 1)
            ws.packets_until(lambda packet: False)
            return ws.close_code
        finally:
            ws.close()

    def oversized_head(self, head: bytes) -> tuple[int | None, bytes]:
        s = attacker_socket(self.port)
        try:
            s.sendall(head)
        except OSError:
            pass
        return read_answer(s)

    def test_oversized_heads_and_messages(self) -> None:
        """
        A request line or header line of 1 MiB, or two thousand headers,
        twenty at once, end with a 400 or the connection closed; a WebSocket
        message over the limit, whole or in fragments, closes its WebSocket
        with code 1009.
        """
        heads = {
            "oversized request line": b"GET /" + b"a" * 2**20 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
            "oversized header": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: "
            + b"a" * 2**20
            + b"\r\n\r\n",
            "too many headers": b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-H%d: a\r\n" % i for i in range(2000))
            + b"\r\n",
        }
        for kind, head in heads.items():
            with self.at_once(20) as pool:
                answers = list(pool.map(self.oversized_head, [head] * 20))
            for status, body in answers:
                self.answered(kind, f"{status} {body[:200]!r}", status in (None, 400))
            self.check_unharmed(kind)
        for kind, fragments in [("oversized WebSocket message", 1), ("oversized fragments", 8)]:
            with self.at_once(20) as pool:
                codes = list(pool.map(self.oversized_message, [fragments] * 20))
            for code in codes:
                self.answered(kind, f"close {code}", code == 1009)
            self.check_unharmed(kind)
        self.finish()

    def test_oversized_bodies(self) -> None:
        """
        Twenty oversized bodies at once, declared and chunked, on the REST
        API and on the Engine.IO polling POST, are each answered 413 (or
        the connection is closed), and the daemon's memory stays within the
        bound; twenty polling bodies within the limit but packed with tiny
        packets, for one session, are each answered ``ok``.
        """
        status, body = request(self.port, "GET", "/socket.io/?EIO=4&transport=polling")
        self.assertEqual(status, 200, body)
        sid = json.loads(body[1:])["sid"]
        polling = f"/socket.io/?EIO=4&transport=polling&sid={sid}"
        for kind, send, path in [
            ("oversized REST body, declared", self.declared, "/api/realtime/messages"),
            ("oversized REST body, chunked", self.chunked, "/api/realtime/messages"),
            ("oversized polling POST, declared", self.declared, polling),
            ("oversized polling POST, chunked", self.chunked, polling),
        ]:
            with self.at_once(20) as pool:
                answers = list(pool.map(send, [path] * 20))
            for status, body in answers:
                documented = status is None or (
                    status == 413 and json.loads(body)["error"] == "PAYLOAD_TOO_LARGE"
                )
                self.answered(kind, f"{status} {body[:200]!r}", documented)
            self.check_unharmed(kind)
        # bodies within the limit, each of over thirty thousand packets,
        # all for one session
        packed = b"\x1e".join([b"6"] * 32000)
        accepted = f"/socket.io/?EIO=4&transport=polling&sid={self.held_session()}"
        with self.at_once(20) as pool:
            answers = list(
                pool.map(lambda body: request(self.port, "POST", accepted, body), [packed] * 20)
            )
        for status, body in answers:
            self.answered("packed polling POST", f"{status} {body[:200]!r}", body == b"ok")
        self.check_unharmed("packed polling POSTs")
        self.finish()


class SlowClientTests(HostileTestCase):
    def trickle(self, start: bytes) -> tuple[int | None, bytes]:
        """
        Send C{start}, then one more byte every 50 ms until the server
        answers or closes the connection.
        """
        s = attacker_socket(self.port)
        s.sendall(start)
        s.settimeout(0.05)
        deadline = time.monotonic() + PATIENCE
        while time.monotonic() < deadline:
            try:
                s.recv(65536, socket.MSG_PEEK)
            except TimeoutError:
                try:
                    s.sendall(b"a")
                except OSError:
                    break
                continue
            except OSError:
                break
            # an answer, or the end of the connection
            break
        s.settimeout(PATIENCE)
        return read_answer(s)

    def test_slowloris(self) -> None:
        """
        Requests whose headers or bodies arrive a byte at a time are
        answered 408 once the request timeout passes, twenty at once, while
        the good client is served.
        """
        starts = {
            "slow headers": [
                b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ",
                b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\nX-Slow: ",
                b"GET /api/realtime/channels HTTP/1.1\r\nHost: x\r\nX-Sl",
                b"GE",
            ],
            "slow body": [
                b"POST /api/realtime/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                + KEYS.api_key.encode()
                + b"\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n{",
                b"POST /socket.io/?EIO=4&transport=polling&sid=x HTTP/1.1\r\nHost: x\r\n"
                b"Content-Length: 5000\r\n\r\n4",
                b"POST /api/realtime/channels HTTP/1.1\r\nHost: x\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n1000\r\n{",
            ],
        }
        for kind, beginnings in starts.items():
            with self.at_once(20) as pool:
                attacks = [
                    pool.submit(self.trickle, beginnings[i % len(beginnings)]) for i in range(20)
                ]
                # while they trickle
                self.check_unharmed(f"{kind}, under way")
                answers = [attack.result() for attack in attacks]
            for status, body in answers:
                documented = status == 408 and json.loads(body)["error"] == "REQUEST_TIMEOUT"
                self.answered(kind, f"{status} {body[:200]!r}", documented)
            self.check_unharmed(kind)
        self.finish()


class FloodTests(HostileTestCase):
    def handshake(self) -> tuple[int, bytes]:
        return request(self.port, "GET", "/socket.io/?EIO=4&transport=polling")

    def closed_in_time(self, sid: str) -> bool:
        """
        Wait for the session's end with a poll: it answers a close packet,
        or (once forgotten) a 400 for an unknown session.
        """
        path = f"/socket.io/?EIO=4&transport=polling&sid={sid}"
        while True:
            status, body = request(self.port, "GET", path)
            if status == 400:
                return json.loads(body)["code"] == 1
            if status != 200:
                return False
            if b"1" in body.split(b"\x1e"):
                return True

    def test_handshake_flood(self) -> None:
        """
        While twenty sessions from one address are open, that address's
        new handshakes (polling and WebSocket) are answered 503 and another
        address still connects; once they close the address may open
        sessions again; sessions that never CONNECT are closed after the
        connect timeout.
        """
        held = [self.held_session() for _ in range(20)]
        TALLY.tried("polling handshake", len(held))
        for _ in range(40):
            status, body = self.handshake()
            documented = status == 503 and json.loads(body)["error"] == "SERVICE_UNAVAILABLE"
            self.answered("polling handshake", f"{status} {body[:200]!r}", documented)
        for _ in range(10):
            ws = RawWebSocket(self.port)
            ws.close()
            self.answered("WebSocket handshake", str(ws.status), ws.status == 503)
        # another address is not held to the attacker's count
        newcomer = Client(self.address)
        self.addCleanup(newcomer.close)
        newcomer.connect({"token": token("newcomer")})
        self.check_unharmed("handshake flood")
        for sid in held:
            path = f"/socket.io/?EIO=4&transport=polling&sid={sid}"
            self.assertEqual(request(self.port, "POST", path, b"1")[0], 200)
        # sessions that never CONNECT
        flood = []
        for _ in range(20):
            status, body = self.handshake()
            self.answered("polling handshake", f"{status} {body[:200]!r}", status == 200)
            flood.append(json.loads(body[1:])["sid"])
        with self.at_once(len(flood)) as pool:
            closed = list(pool.map(self.closed_in_time, flood))
        self.assertEqual(closed, [True] * len(flood))
        status, body = self.handshake()
        self.assertEqual(status, 200, body)
        self.finish()

    def refused_connects(self, sid: str) -> int:
        """
        CONNECT with a bad token again and again on one polling session
        until it is closed; how many were refused.
        """
        path = f"/socket.io/?EIO=4&transport=polling&sid={sid}"
        refused = 0
        while True:
            status, body = request(
                self.port,
                "POST",
                path,
                b'40{"token":"not-a-token"}',
                **{"Content-Type": "text/plain"},
            )
            if status == 400:
                return refused
            self.assertEqual(status, 200, body)
            status, body = request(self.port, "GET", path)
            if status == 400:
                return refused
            packets = body.split(b"\x1e")
            if b"1" in packets:
                return refused
            for packet in packets:
                if packet.startswith(b"44"):
                    self.assertEqual(json.loads(packet[2:])["message"], "Invalid token")
                    refused += 1

    def test_refused_connect_flood(self) -> None:
        """
        Sessions that keep sending refused CONNECTs are closed after the
        connect timeout all the same, and the good client is unaffected.
        """
        sids = []
        for _ in range(20):
            status, body = self.handshake()
            self.assertEqual(status, 200, body)
            sids.append(json.loads(body[1:])["sid"])
        with self.at_once(len(sids)) as pool:
            refused = list(pool.map(self.refused_connects, sids))
        TALLY.tried("refused CONNECT", sum(refused))
        self.assertGreater(sum(refused), 0)
        # WebSocket sessions do the same
        sockets = [RawWebSocket(self.port) for _ in range(10)]
        for ws in sockets:
            self.assertEqual(ws.status, 101)
            answer = ws.connect({"token": "not-a-token"})
            self.answered("refused CONNECT", str(answer), str(answer).startswith("44"))
            for _ in range(5):
                ws.send('40{"token":"still-not-a-token"}')
        for ws in sockets:
            # the server closes the connection after the connect timeout
            ws.packets_until(lambda packet: False)
            self.assertTrue(ws.closed)
            ws.close()
        self.check_unharmed("refused CONNECT flood")
        self.finish()


class SlowReaderTests(HostileTestCase):
    #: The good client publishes as fast as its acks come back.
    options = {**OPTIONS, "max-publish-rate": "0", "max-body": str(2**20)}

    def test_socket_that_never_reads(self) -> None:
        """
        A WebSocket subscribed to a busy channel that stops reading is
        dropped once what waits for it passes the buffer bound; the good
        client, subscribed to the same channel, gets every message.
        """
        ack = self.good.request("REALTIME_SUBSCRIBE", {"channel": "busy"})
        self.assertTrue(ack["ok"], ack)
        # a small receive window, so that the kernel holds little of what
        # is sent
        reader = RawWebSocket(self.port, receive_buffer=4096)
        self.addCleanup(reader.close)
        connected = reader.connect({"token": token("never-reads")})
        self.assertTrue(str(connected).startswith("40"), connected)
        reader.send('420["REALTIME_SUBSCRIBE",{"channel":"busy"}]')
        answer = reader.packets_until(lambda p: str(p).startswith("430"))
        self.assertTrue(acks_in(answer)[0][0]["ok"], answer)
        # from here on the reader reads nothing
        watch = select.poll()
        watch.register(reader.socket, select.POLLRDHUP | select.POLLHUP | select.POLLERR)
        payload = "x" * 250_000
        published = 0
        dropped = False
        while not dropped and published < 120:
            ack = self.good.request(
                "REALTIME_PUBLISH",
                {"channel": "busy", "event": "busy", "payload": {"n": published, "p": payload}},
            )
            self.assertTrue(ack["ok"], ack)
            published += 1
            dropped = bool(watch.poll(0))
        if not dropped:
            dropped = bool(watch.poll(PATIENCE * 1000))
        TALLY.tried("deliveries to a reader that never reads", published)
        self.assertTrue(dropped, f"not dropped after {published * len(payload)} bytes")
        got = [self.good.next_event("busy")[1]["payload"]["n"] for _ in range(published)]
        self.assertEqual(got, list(range(published)))
        self.check_unharmed("a socket that never reads")
        self.finish()


class PingFloodTests(HostileTestCase):
    def test_pings_never_read(self) -> None:
        """
        A client that sends WebSocket pings as fast as it can and never
        reads the pongs does not make the daemon hold them: its memory
        grows by less than L{PING_FLOOD_GROWTH_BOUND}.
        """
        flooder = RawWebSocket(self.port, receive_buffer=4096)
        self.addCleanup(flooder.close)
        # accepted, so that the connect timeout does not end it
        connected = flooder.connect({"token": token("pinger")})
        self.assertTrue(str(connected).startswith("40"), connected)
        pings = client_frame(9, b"p" * 125) * 8192
        # the parser's buffers are made once, before the measure
        flooder.socket.sendall(pings)
        before = self.memory()["VmRSS"]
        with open(f"/proc/{self.daemon.process.pid}/clear_refs", "w") as clear:
            # resets the peak (VmHWM) to the resident memory now
            clear.write("5")
        sent = 0
        while sent < 16 * 2**20:
            flooder.socket.sendall(pings)
            sent += len(pings)
        TALLY.tried("unread WebSocket ping", sent // (len(pings) // 8192))
        # an answer that comes after every ping was handled; reading it
        # reads the pongs that were kept
        flooder.send("40/nowhere,")
        answer = flooder.packets_until(lambda p: str(p).startswith("44/nowhere,"))
        self.assertFalse(flooder.closed, answer)
        growth = self.memory()["VmHWM"] - before
        self.assertLessEqual(growth, PING_FLOOD_GROWTH_BOUND, f"grew by {growth / 2**20:.1f} MiB")
        self.check_unharmed("unread WebSocket pings")
        self.finish()


class PublishFloodTests(HostileTestCase):
    def test_publish_flood(self) -> None:
        """
        A thousand publishes sent at once from one socket: those past the
        rate are refused with REALTIME_RATE_LIMITED and never stored; the
        good client's publishes go through.
        """
        flooder = RawWebSocket(self.port)
        self.addCleanup(flooder.close)
        connected = flooder.connect({"token": token("flooder")})
        self.assertTrue(str(connected).startswith("40"), connected)
        flooder.send('420["REALTIME_SUBSCRIBE",{"channel":"chat:flood"}]')
        self.assertTrue(acks_in(flooder.packets_until(lambda p: str(p).startswith("430")))[0])
        count = 1000
        started = time.monotonic()
        flooder.socket.sendall(
            b"".join(
                client_frame(1, text)
                for text in (
                    (
                        f'42{i}["REALTIME_PUBLISH",{{"channel":"chat:flood","event":"f",'
                        f'"payload":{{"i":{i},"p":"{"y" * 100}"}}}}]'
                    ).encode()
                    for i in range(1, count + 1)
                )
            )
        )
        acks: dict[int, Any] = {}
        self.check_unharmed("publish flood, under way")
        while len(acks) < count:
            packets = flooder.packets_until(lambda p: str(p).startswith("43"))
            self.assertFalse(flooder.closed, "the flooding socket was closed")
            acks.update(acks_in(packets))
        elapsed = time.monotonic() - started
        outcomes: Counter[str] = Counter()
        for answer in acks.values():
            ack = answer[0]
            outcome = "ok" if ack.get("ok") is True else ack["error"]["code"]
            outcomes[outcome] += 1
            self.answered(
                "flooding publish",
                json.dumps(ack)[:200],
                outcome in ("ok", "REALTIME_RATE_LIMITED"),
            )
        # a burst of twice the rate, then the rate
        self.assertLessEqual(outcomes["ok"], 40 + 20 * elapsed + 1, outcomes)
        self.assertGreater(outcomes["REALTIME_RATE_LIMITED"], 0, outcomes)
        stored = run_sql(
            self.url, "SELECT count(*) FROM realtime.messages WHERE channel_name = 'chat:flood'"
        )
        self.assertEqual(stored[0][0], outcomes["ok"])
        self.check_unharmed("publish flood")
        self.finish()


# --- malformed input, generated ----------------------------------------------

#: Names that mean something to realtimed, among the random ones.
NAMES = [
    "good",
    "busy",
    "chat:x",
    "chat:*",
    "chat:%",
    "fz:1",
    "",
    " ",
    "a" * 300,
    "presence:join",
    "realtime:error",
    "INSERT",
    "connect",
    "disconnect",
]
EVENTS = [
    "REALTIME_SUBSCRIBE",
    "REALTIME_UNSUBSCRIBE",
    "REALTIME_PUBLISH",
    "REALTIME_AUTH",
    "realtime:subscribe",
    "realtime:unsubscribe",
    "realtime:publish",
    "realtime:auth",
    "REALTIME_PRESENCE",
    "message",
    "connect",
    "disconnecting",
]
FIELDS = [
    "channel",
    "event",
    "payload",
    "token",
    "pattern",
    "description",
    "webhookUrls",
    "enabled",
    "retentionDays",
    "userId",
    "socketId",
]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(NAMES),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def mangled(draw: Any, text: str) -> str:
    """
    C{text}, or C{text} cut short, with a lone surrogate escaped in its
    first string, or with noise inserted.
    """
    how = draw(st.sampled_from(["as is", "as is", "cut", "surrogate", "noise"]))
    where = draw(st.integers(0, len(text)))
    if how == "cut":
        return text[:where]
    if how == "surrogate":
        return text.replace('"', '"\\ud800', 1) if '"' in text else text + "\\udfff"
    if how == "noise":
        return text[:where] + draw(st.text(max_size=5)) + text[where:]
    return text


@st.composite
def json_text(draw: Any, values: Any = json_values) -> str:
    return str(draw(mangled(json.dumps(draw(values)))))


@st.composite
def realtime_requests(draw: Any) -> str:
    """
    The text of a realtime request with an ack id: a known event with
    arguments made of the fields it takes and values that are often
    wrong, sometimes broken.
    """
    event = draw(st.sampled_from(EVENTS))
    arguments = draw(
        st.lists(
            st.dictionaries(
                st.sampled_from(FIELDS[:4]) | st.text(max_size=4),
                st.sampled_from(NAMES) | json_values,
                max_size=4,
            )
            | json_values,
            max_size=2,
        )
    )
    ack = draw(st.integers(0, 10**6))
    return f"42{ack}" + draw(mangled(json.dumps([event, *arguments])))


@st.composite
def socketio_packets(draw: Any) -> str:
    """
    The text of an Engine.IO message packet carrying a Socket.IO packet,
    often broken.
    """
    kind = draw(st.sampled_from(list("0123456")) | st.text(max_size=2))
    attachments = draw(st.sampled_from(["", "", "1-", "0-", "99999-", "-"])) if kind in "56" else ""
    namespace = draw(st.sampled_from(["", "", "/,", "/nowhere,", "/admin,"]) | st.text(max_size=6))
    ack = draw(st.sampled_from(["", "", "7", "0", "4294967296", "9" * 30]))
    if kind in ("2", "3", "5", "6"):
        event = draw(st.sampled_from(EVENTS) | st.text(max_size=12) | st.integers())
        arguments = draw(st.lists(json_values, max_size=3))
        body = draw(mangled(json.dumps([event, *arguments])))
    else:
        body = draw(json_text())
    return "4" + kind + attachments + namespace + ack + body


#: What a reconnecting client claims in its CONNECT: a session id and the
#: offset it had reached, often nonsense.
recovery_claims = st.fixed_dictionaries(
    {},
    optional={
        "pid": st.text(max_size=30)
        | st.text(alphabet="AZaz09-_", min_size=24, max_size=24)
        | st.sampled_from(["\x00", "\ud800", "a" * 10_000]),
        "offset": st.text(max_size=40)
        | st.sampled_from(["1.2.;;;;", "0.0.;;0.0.;1;1", "\x00", "\ud800"])
        | json_values,
    },
)

engineio_garbage = st.text(max_size=40) | st.sampled_from(["1", "2", "3", "5", "6", "2probe", ""])
websocket_frames = st.lists(
    realtime_requests() | socketio_packets() | engineio_garbage | st.binary(max_size=40),
    min_size=1,
    max_size=4,
)
polling_bodies = (
    st.binary(max_size=200)
    | st.lists(
        realtime_requests() | socketio_packets() | engineio_garbage, min_size=1, max_size=4
    ).map(lambda packets: "\x1e".join(packets).encode("utf-8", "surrogatepass"))
    | st.sampled_from([b"", b"\x1e", b"b", b"bAAA", b"4" * 70000])
)


def sanitized(value: Any) -> Any:
    """
    A REST body that cannot disturb the good client: channel patterns and
    the users or sockets to disconnect are all in the C{fz} space.
    """
    if isinstance(value, dict):
        for field in ("pattern", "userId", "socketId"):
            if isinstance(value.get(field), str):
                value[field] = "fz" + value[field]
    return value


rest_bodies = (
    st.none()
    | st.binary(max_size=100)
    | json_text(
        st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), json_values, max_size=5).map(
            sanitized
        )
    ).map(lambda text: text.encode("utf-8", "surrogatepass"))
    | json_text(
        json_values.map(
            lambda v: sanitized(v) if not isinstance(v, dict) or "pattern" not in v else {}
        )
    ).map(lambda text: text.encode("utf-8", "surrogatepass"))
)
rest_paths = st.sampled_from(
    [
        "channels",
        "channels/",
        "messages",
        "messages/stats",
        "config",
        "presence",
        "disconnect",
        "openapi.json",
        "",
    ]
) | st.builds(
    lambda head, tail: head + quote(tail, safe=""),
    st.sampled_from(["channels/", "messages/", ""]),
    st.text(max_size=20),
)
rest_queries = st.dictionaries(
    st.sampled_from(["limit", "offset", "channel", "since", "event", "channelId", "q"])
    | st.text(max_size=5),
    st.text(max_size=12) | st.integers(-(2**40), 2**40).map(str),
    max_size=3,
)
rest_credentials = st.sampled_from(["admin", "admin", "admin", "none", "anon", "user", "forged"])


def credential_headers(which: str) -> dict[str, str]:
    if which == "admin":
        return {"Authorization": "Bearer " + KEYS.api_key}
    if which == "anon":
        return {"Authorization": "Bearer " + KEYS.anon_key}
    if which == "user":
        return {"Authorization": "Bearer " + token("fz-user")}
    if which == "forged":
        return {"Authorization": "Bearer " + KEYS.api_key[:-1] + "x", "x-api-key": "ik_nope"}
    return {}


FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class MalformedInputTests(HostileTestCase):
    #: Sessions from the attacker are counted by the hundred here; with
    #: connection state recovery on, a CONNECT may claim a session.
    options = {**OPTIONS, "max-connections-per-ip": "0", "recovery-window": "60"}

    def documented_acks(self, kind: str, packets: list[str | bytes]) -> None:
        """
        Every acknowledgement and error event among C{packets} is a
        documented answer.
        """
        for answer in acks_in(packets).values():
            ack = answer[0] if answer and isinstance(answer[0], dict) else {}
            code = (ack.get("error") or {}).get("code")
            self.answered(
                kind,
                json.dumps(answer)[:200],
                ack.get("ok") is True or code in REFUSAL_CODES,
                count=False,
            )
        for packet in packets:
            if isinstance(packet, str) and packet.startswith('42["realtime:error"'):
                code = json.loads(packet[2:])[1].get("code")
                self.answered(kind, packet[:200], code in REFUSAL_CODES, count=False)

    def alive(self) -> None:
        if self.daemon.process.poll() is not None:
            self.crashed("the daemon exited")
            self.fail("realtimed exited:\n" + self.daemon.output()[-3000:])

    def test_malformed_websocket_packets(self) -> None:
        """
        Generated Engine.IO and Socket.IO packets, broken and whole, on
        WebSockets connected with and without a credential, are answered
        with documented acks or a close, never a crash.
        """

        @FUZZ
        @given(frames=websocket_frames, authenticated=st.booleans(), claim=recovery_claims)
        def attack(frames: list[str | bytes], authenticated: bool, claim: dict[str, Any]) -> None:
            ws = RawWebSocket(self.port)
            try:
                if ws.status != 101:
                    self.answered("WebSocket handshake", str(ws.status), ws.status == 503)
                    return
                if authenticated:
                    answer = str(ws.connect({"token": token("fz-attacker"), **claim}))
                    if claim:
                        self.answered("recovery claim", answer, answer.startswith("40"))
                    self.assertTrue(answer.startswith("40"), answer)
                else:
                    ws.packet()
                for frame in frames:
                    ws.send(frame)
                # an answer that shows the frames before it were handled
                ws.send("40/nowhere,")
                packets = ws.packets_until(lambda p: str(p).startswith("44/nowhere,"))
                TALLY.tried("malformed WebSocket packet", len(frames))
                self.documented_acks("malformed WebSocket packet", packets)
            finally:
                ws.close()
            self.alive()

        connection: list[RawWebSocket] = []

        def authenticated() -> RawWebSocket:
            if connection and connection[0].closed:
                connection.pop().close()
            if not connection:
                ws = RawWebSocket(self.port)
                self.addCleanup(ws.close)
                answer = ws.connect({"token": token("fz-attacker")})
                self.assertTrue(str(answer).startswith("40"), answer)
                connection.append(ws)
            return connection[0]

        @FUZZ
        @given(requests=st.lists(realtime_requests(), min_size=1, max_size=4))
        def ask(requests: list[str]) -> None:
            ws = authenticated()
            for text in requests:
                ws.send(text)
            ws.send("40/nowhere,")
            packets = ws.packets_until(lambda p: str(p).startswith("44/nowhere,"))
            TALLY.tried("malformed realtime request", len(requests))
            self.documented_acks("malformed realtime request", packets)
            self.alive()

        attack()
        ask()
        self.check_unharmed("malformed WebSocket packets")
        self.finish()

    def test_malformed_polling_requests(self) -> None:
        """
        Generated polling POST bodies on a live session, and polling
        requests with generated methods and queries, are answered 200, 400
        with the Engine.IO error body, 403, 413 or 503, never a crash.
        """
        sessions: dict[bool, str] = {}

        def sid(authenticated: bool) -> str:
            if authenticated not in sessions:
                status, body = request(self.port, "GET", "/socket.io/?EIO=4&transport=polling")
                self.assertEqual(status, 200, body)
                sid = json.loads(body[1:])["sid"]
                if authenticated:
                    connect = "40" + json.dumps({"token": token("fz-attacker")})
                    status, body = request(
                        self.port,
                        "POST",
                        f"/socket.io/?EIO=4&transport=polling&sid={sid}",
                        connect.encode(),
                    )
                    self.assertEqual(status, 200, body)
                sessions[authenticated] = sid
            return sessions[authenticated]

        @FUZZ
        @given(body=polling_bodies, authenticated=st.booleans())
        def post(body: bytes, authenticated: bool) -> None:
            path = f"/socket.io/?EIO=4&transport=polling&sid={sid(authenticated)}"
            status, answer = request(
                self.port, "POST", path, body, **{"Content-Type": "text/plain"}
            )
            if status != 200:
                del sessions[authenticated]
            documented = (status == 200 and answer == b"ok") or status in (400, 413)
            if status == 400:
                documented = set(json.loads(answer)) == {"code", "message"}
            self.answered("malformed polling POST", f"{status} {answer[:200]!r}", documented)
            self.alive()

        @FUZZ
        @given(
            method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"]),
            query=st.fixed_dictionaries(
                {},
                optional={
                    "EIO": st.one_of(st.just("4"), st.just("4"), st.just("4"), st.text(max_size=2)),
                    "transport": st.sampled_from(["polling", "websocket", "x", ""])
                    | st.text(max_size=8),
                    "sid": st.text(max_size=20),
                    "b64": st.text(max_size=2),
                    "t": st.text(max_size=8),
                },
            ),
        )
        def poll(method: str, query: dict[str, str]) -> None:
            if "sid" in query and method == "GET":
                # a poll of a live session would wait for the heartbeat
                query["sid"] = "fz" + query["sid"]
            status, answer = request(self.port, method, "/socket.io/?" + urlencode(query))
            documented = status in (200, 204, 400, 403, 503)
            if status == 400:
                documented = set(json.loads(answer)) == {"code", "message"}
            self.answered("malformed polling request", f"{status} {answer[:200]!r}", documented)
            self.alive()

        post()
        poll()
        self.check_unharmed("malformed polling requests")
        self.finish()

    def test_malformed_rest_requests(self) -> None:
        """
        Generated REST requests (methods, paths, queries, bodies and
        credentials) are answered with a documented status and, for errors,
        the documented JSON body; never a 500.
        """

        @FUZZ
        @given(
            method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]),
            path=rest_paths,
            query=rest_queries,
            body=rest_bodies,
            credential=rest_credentials,
        )
        def attack(
            method: str, path: str, query: dict[str, str], body: bytes | None, credential: str
        ) -> None:
            target = "/api/realtime/" + path + ("?" + urlencode(query) if query else "")
            headers = {"Content-Type": "application/json", **credential_headers(credential)}
            status, answer = request(self.port, method, target, body, **headers)
            documented = status in DOCUMENTED_STATUSES
            if status >= 400 and method != "HEAD":
                try:
                    error = json.loads(answer)
                    documented = documented and {"error", "message"} <= set(error)
                except ValueError:
                    documented = False
            self.answered("malformed REST request", f"{status} {answer[:200]!r}", documented)
            self.alive()

        attack()
        self.check_unharmed("malformed REST requests")
        self.finish()
