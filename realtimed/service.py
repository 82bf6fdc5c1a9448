"""
The realtimed daemon as one Twisted service.

Start-up, in order: the database (the configured URL, or an embedded
PostgreSQL under the data directory), the secrets, the schema migrations,
the query pool, then the parts that serve (Socket.IO and channels, the admin
REST API, the LISTEN connection, webhook delivery) and finally the listening
endpoints.  Shut-down runs it backwards.  A failure during start-up is logged
and stops the process.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TextIO

from twisted.application.service import MultiService
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Site

from realtimed.config import Config
from realtimed.engineio.engine import EngineConfig
from realtimed.engineio.socketio import SocketIOServer
from realtimed.keys import KEYS_FILE, Keys, resolve_keys
from realtimed.realtime.service import Realtime
from realtimed.rest.api import AdminAPI
from realtimed.store.listener import MessageListener
from realtimed.store.migrations import migrate
from realtimed.store.pool import ConnectionPool, redact_dsn
from realtimed.web import root_resource
from realtimed.webhooks.outbox import outbox_pool
from realtimed.webhooks.service import WebhookService

log = Logger()


class RealtimeService(MultiService):
    """
    Everything one realtimed process runs.

    @ivar ready: Fires with this service once every endpoint listens, or
        fails with the reason start-up failed.
    @ivar ports: The listening ports, in the order of C{config.port}.
    @ivar database_url: The database in use, once known.
    @ivar keys: The secrets in use, once known.
    """

    def __init__(
        self,
        config: Config,
        reactor: Any,
        out: TextIO | None = None,
        stop_on_failure: bool = True,
    ) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.ready: Deferred[RealtimeService] = Deferred()
        self.ports: list[IListeningPort] = []
        self.database_url: str | None = None
        self.keys: Keys | None = None
        self.pool: ConnectionPool | None = None
        self.socketio: SocketIOServer | None = None
        self.realtime: Realtime | None = None
        self.listener: MessageListener | None = None
        self.webhooks: WebhookService | None = None
        self._out = sys.stdout if out is None else out
        self._stop_on_failure = stop_on_failure
        self._embedded: Any = None
        self._stopping = False
        self._closers: list[Callable[[], object]] = []

    def startService(self) -> None:
        super().startService()
        d = self._start()
        d.addCallbacks(self._started, self._failed)

    def _started(self, _: object) -> None:
        self.ready.callback(self)

    def _failed(self, reason: Failure) -> None:
        log.failure("realtimed could not start", reason)
        self.ready.errback(reason)
        self.ready.addErrback(lambda _: None)
        if self._stop_on_failure and self.reactor.running:
            self.reactor.stop()

    @inlineCallbacks
    def _start(self) -> Any:
        config = self.config
        url = config.database_url
        if url is None:
            from realtimed.embedded import EmbeddedPostgres

            self._embedded = EmbeddedPostgres(reactor=self.reactor, data_dir=config.data_dir)
            url = yield self._embedded.start()
        self.database_url = url
        keys, generated = resolve_keys(config)
        self.keys = keys
        if self._stopping:
            return
        applied = yield migrate(self.reactor, url)
        log.info(
            "Database {database} ready ({count} migrations applied now)",
            database=redact_dsn(url),
            count=len(applied),
        )
        self.pool = ConnectionPool(self.reactor, url)
        yield self.pool.start()
        self._closers.append(self.pool.close)

        self.socketio = SocketIOServer(self.reactor, EngineConfig(cors_origins=config.cors_origin))
        listener = self.listener = MessageListener(
            reactor=self.reactor,
            dsn=url,
            on_message=self._message_stored,
            after_messages=self.socketio.engine.flush,
        )
        self.realtime = Realtime(
            namespace=self.socketio.namespace("/"),
            pool=self.pool,
            keys=keys,
            clock=self.reactor,
            local=listener,
        )
        outbox = outbox_pool(self.reactor, url)
        self._closers.append(outbox.close)
        self.webhooks = WebhookService.from_config(
            self.reactor, config, outbox, keys.webhook_secret
        )
        listener.setServiceParent(self)
        self.realtime.setServiceParent(self)
        self.webhooks.setServiceParent(self)
        yield self._until(lambda: listener.connected, "LISTEN connection", 60.0)

        api = AdminAPI(self.pool, keys, self.reactor)
        site = Site(
            root_resource(
                health=self.pool.ping,
                socketio=self.socketio.resource(),
                api=api.resource(),
            )
        )
        site.displayTracebacks = False
        for description in config.port:
            endpoint = serverFromString(self.reactor, description)
            port = yield endpoint.listen(site)
            self.ports.append(port)
        self._announce(generated)

    def _message_stored(self, notification: dict[str, Any]) -> None:
        """
        A message was stored, by this process or another: send it to this
        process's sockets, and have the webhook service look at once for the
        deliveries the same transaction queued, if it queued any.
        """
        assert self.realtime is not None and self.webhooks is not None
        try:
            self.realtime.deliver(notification)
        finally:
            if notification.get("webhooks"):
                self.webhooks.wake()

    @inlineCallbacks
    def _until(self, condition: Callable[[], bool], what: str, timeout: float) -> Any:
        """
        Wait for C{condition} to hold, checking every 20 ms, for at most
        C{timeout} seconds.
        """
        deadline = self.reactor.seconds() + timeout
        while not condition():
            if self._stopping:
                raise RuntimeError(f"stopped while waiting for the {what}")
            if self.reactor.seconds() > deadline:
                raise TimeoutError(f"the {what} was not ready within {timeout:g} s")
            yield deferLater(self.reactor, 0.02, lambda: None)

    def _announce(self, generated: list[str]) -> None:
        """
        Say where realtimed listens; on the start that generated secrets, say
        them too (to a terminal) or where they are kept (otherwise), so a
        new user can connect at once.
        """
        for port in self.ports:
            log.info("realtimed listening on {url}", url=_url_of(port))
        if not generated:
            return
        assert self.keys is not None
        lines = [f"realtimed is listening on {', '.join(_url_of(p) for p in self.ports)}"]
        path = f"{self.config.data_dir}/{KEYS_FILE}"
        if self._out.isatty():
            lines.append("Generated on this first start (kept in " + path + ", mode 0600):")
            labels = {
                "api_key": "API key (admin)",
                "anon_key": "anon key",
                "jwt_secret": "JWT secret (HS256)",
                "webhook_secret": "webhook signing secret",
            }
            for name in generated:
                lines.append(f"  {labels[name]:<24} {getattr(self.keys, name)}")
        else:
            lines.append(f"Generated secrets were written to {path} (mode 0600).")
        self._out.write("\n".join(lines) + "\n")
        self._out.flush()

    @inlineCallbacks
    def stopService(self) -> Any:
        self._stopping = True
        yield DeferredList([maybeDeferred(port.stopListening) for port in self.ports])
        self.ports = []
        if self.socketio is not None:
            self.socketio.close()
        yield maybeDeferred(super().stopService)
        while self._closers:
            try:
                yield maybeDeferred(self._closers.pop())
            except Exception:
                log.failure("Error while shutting down")
        if self._embedded is not None:
            yield self._embedded.stop()
            self._embedded = None


def _url_of(port: IListeningPort) -> str:
    address = port.getHost()
    if not isinstance(address, (IPv4Address, IPv6Address)):
        return f"unix:{getattr(address, 'name', address)}"
    host = address.host
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{address.port}/"
