"""
The realtimed daemon as one Twisted service.

Its pieces start one at a time, in dependency order, each once the one
before is ready (`realtimed.lifecycle.StartInOrder`):

1. the database: an embedded PostgreSQL under the data directory, or the
   configured URL;

and once its URL is known, the secrets are resolved and

2. the schema migrations are applied;
3. the query pool, the health probe's connection and the webhook
   outbox's pool open their first connection;
4. the listener connects and reads what was stored meanwhile;
5. the webhook service, message retention, shared presence (the first
   heartbeat), Socket.IO, then the realtime channels, start;
6. every endpoint listens (the metrics endpoint last).

They stop in the reverse order, which is the graceful stop (SIGTERM): the
ports stop accepting connections; realtime refuses new requests and waits
until every request already received is answered (every publish stored and
acknowledged, or refused); Socket.IO closes every session, so clients
reconnect elsewhere; the webhook service stops claiming, and hands the
attempts still in flight after its grace period back to the database as
pending; then the listener and the database connections close.  The whole
stop is bounded by ``STOP_TIMEOUT``.  A failure during start-up is logged
and stops the process.

Before them all starts `realtimed.notify.SystemdNotify`, which tells
systemd each step, that the daemon is ready once the last endpoint
listens, and that it is stopping as soon as a stop begins; it stops last.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from attrs import define
from twisted.application.service import Service
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure

from realtimed.admin.page import AdminPage
from realtimed.auth import Keys
from realtimed.config import Config
from realtimed.control import CONTROL_CHANNEL, AdminControl, DisconnectTarget
from realtimed.engineio.engine import EngineConfig
from realtimed.engineio.socketio import SocketIOServer
from realtimed.keys import KEYS_FILE, resolve_keys
from realtimed.lifecycle import StartInOrder
from realtimed.metrics import Metrics
from realtimed.notify import SystemdNotify
from realtimed.realtime.limits import Limits
from realtimed.realtime.service import Realtime
from realtimed.realtime.shared_presence import PRESENCE_CHANNEL, SharedPresence
from realtimed.rest.api import AdminAPI, require_admin
from realtimed.store.listener import CHANNELS_CHANNEL, MessageListener
from realtimed.store.messages import StoredMessage
from realtimed.store.migrations import SchemaMigrations
from realtimed.store.pool import ConnectionPool, IQueries
from realtimed.store.retention import MessageRetention
from realtimed.store.sessions import SessionStore
from realtimed.web import (
    HealthProbe,
    ListeningPort,
    MetricsPage,
    RealtimeSite,
    metrics_resource,
    root_resource,
)
from realtimed.webhooks.outbox import outbox_pool
from realtimed.webhooks.policy import RetryPolicy
from realtimed.webhooks.service import WebhookService

log = Logger()

#: The longest a stop may take, in seconds; systemd's TimeoutStopSec= is
#: longer.
STOP_TIMEOUT = 19.0

#: The most connections the daemon's queries use at once: the publisher's
#: lanes (each keeps one batch of publishes in flight), subscribe decisions,
#: the REST API and the bookkeeping beside them.
QUERY_CONNECTIONS = 8


@define(eq=False)
class GivenDatabase(Service):
    """
    A database realtimed is given the URL of: ready at once.
    """

    url: str

    def whenReady(self) -> Deferred[str]:
        return succeed(self.url)


@define(eq=False)
class SocketIOService(Service):
    """
    Owns the Socket.IO server: when stopped, it closes every session, so
    that clients reconnect (to another process, or to this one restarted).
    """

    socketio: SocketIOServer

    def stopService(self) -> None:
        Service.stopService(self)
        self.socketio.close()


class RealtimeService(StartInOrder):
    """
    Everything one realtimed process runs.

    @ivar ready: Fires with this service once every endpoint listens, or
        fails with the reason start-up failed.
    @ivar ports: The listening ports, in the order of C{config.port}.
    @ivar database_url: The database in use, once known.
    @ivar keys: The secrets in use, once known.
    @ivar metrics: The daemon's Prometheus metrics.
    @ivar notify: Tells systemd how start-up and stopping go.
    """

    def __init__(
        self,
        config: Config,
        reactor: Any,
        out: TextIO | None = None,
        stop_on_failure: bool = True,
        notify: SystemdNotify | None = None,
    ) -> None:
        super().__init__()
        self.notify = SystemdNotify(None, reactor) if notify is None else notify
        self.addService(self.notify)
        self.config = config
        self.reactor = reactor
        self.ready: Deferred[RealtimeService] = Deferred()
        self.database_url: str | None = None
        self.keys: Keys | None = None
        self.pool: ConnectionPool | None = None
        self.socketio: SocketIOServer | None = None
        self.realtime: Realtime | None = None
        self.listener: MessageListener | None = None
        self.webhooks: WebhookService | None = None
        self.control: AdminControl | None = None
        self.sharing: SharedPresence | None = None
        self.metrics = Metrics(reactor)
        self.metrics_port: ListeningPort | None = None
        self._ports: list[ListeningPort] = []
        self._generated: list[str] = []
        self._out = sys.stdout if out is None else out
        self._stop_on_failure = stop_on_failure
        self.database: Service
        if config.database_url is None:
            from realtimed.embedded import EmbeddedPostgres

            self.database = EmbeddedPostgres(reactor=reactor, data_dir=config.data_dir)
        else:
            self.database = GivenDatabase(config.database_url)
        self.addService(self.database)

    @property
    def ports(self) -> list[IListeningPort]:
        """
        The ports listening now, in the order of C{config.port}.
        """
        return [port.port for port in self._ports if port.port is not None]

    def startService(self) -> None:
        super().startService()
        d = self.whenReady()
        d.addCallbacks(self._started, self._failed)

    def stopService(self) -> Deferred[None]:
        """
        Stop every piece in turn; the Deferred fires once they have
        stopped, or after L{STOP_TIMEOUT} seconds with those still
        stopping logged, so that the process always exits in time.
        """
        self.notify.stopping()
        started = self.reactor.seconds()
        log.info("realtimed is stopping")
        stopped: Deferred[None] = super().stopService()
        done: Deferred[None] = Deferred()

        def finished(_: object) -> None:
            if timer.active():
                timer.cancel()
            if not done.called:
                log.info(
                    "realtimed stopped in {seconds:.2f} s",
                    seconds=self.reactor.seconds() - started,
                )
                done.callback(None)

        def too_long() -> None:
            still = [type(child).__name__ for child in self if child.running]
            log.warn(
                "Stopping took over {timeout:g} s; exiting with {pieces} still stopping",
                timeout=STOP_TIMEOUT,
                pieces=still,
            )
            if not done.called:
                done.callback(None)

        timer = self.reactor.callLater(STOP_TIMEOUT, too_long)
        stopped.addBoth(finished)
        return done

    def child_ready(self, child: object, result: object) -> None:
        if child is self.database:
            assert isinstance(result, str)
            self._serve(result)
        following = self.services.index(child) + 1  # type: ignore[arg-type]
        if following < len(self.services):
            self.notify.status("Starting: " + _step(self.services[following]))

    def _serve(self, url: str) -> None:
        """
        Add, in the order they start, the pieces that need the database at
        C{url}.
        """
        config, reactor = self.config, self.reactor
        self.database_url = url
        keys, self._generated = resolve_keys(config)
        self.keys = keys
        metrics = self.metrics
        self.addService(SchemaMigrations(reactor, url))
        pool = self.pool = ConnectionPool(
            reactor, url, size=QUERY_CONNECTIONS, on_wait=metrics.pool_wait("queries")
        )
        self.addService(pool)
        health = ConnectionPool(reactor, url, size=1, application_name="realtimed health")
        self.addService(health)
        outbox = outbox_pool(reactor, url)
        outbox.on_wait = metrics.pool_wait("webhooks")
        self.addService(outbox)
        metrics.pool_waiting.update(queries=lambda: pool.waiting, webhooks=lambda: outbox.waiting)
        socketio = self.socketio = SocketIOServer(
            reactor,
            EngineConfig(
                max_payload=config.max_body,
                cors_origins=config.cors_origin,
                max_sessions=config.max_connections,
                max_sessions_per_address=config.max_connections_per_ip,
            ),
            connect_timeout=config.connect_timeout,
        )
        sessions = socketio.engine.sessions
        metrics.transports = lambda: [
            connection.session.transport
            for connection in list(sessions.values())
            if not connection.closed
        ]
        control = self.control = AdminControl(pool, reactor)
        listener = self.listener = MessageListener(
            reactor=reactor,
            dsn=url,
            on_message=self._message_stored,
            after_messages=socketio.engine.flush,
            also_listen=(CHANNELS_CHANNEL, CONTROL_CHANNEL, PRESENCE_CHANNEL),
            on_notify=self._notified,
        )
        self.addService(listener)
        webhooks = self.webhooks = webhook_service(reactor, config, outbox, keys.webhook_secret)
        webhooks.metrics = metrics
        self.addService(webhooks)
        self.addService(MessageRetention(pool, reactor, interval=config.retention_interval))
        # Sessions stop after the sockets close, so that what the closing
        # sockets left is written.
        recoverable = SessionStore(pool, reactor, config.recovery_window)
        if config.recovery_window:
            self.addService(recoverable)
        realtime = self.realtime = Realtime(
            namespace=socketio.namespace("/"),
            pool=pool,
            keys=keys,
            clock=reactor,
            local=listener,
            limits=Limits(config.max_subscriptions, config.max_publish_rate),
            metrics=metrics,
            stream=listener,
            sessions=recoverable,
            recovery_window=config.recovery_window,
        )
        metrics.subscriptions = realtime.subscriptions.count
        control.presence = realtime.members
        sharing = self.sharing = SharedPresence(
            pool,
            reactor,
            realtime.presence,
            realtime.announce,
            process=control.process,
            timeout=config.presence_timeout,
        )
        realtime.sharing = sharing

        def disconnect_local(target: DisconnectTarget) -> int:
            return realtime.disconnect_sockets(target.user_id, target.socket_id)

        control.disconnect_local = disconnect_local
        # Shared presence before Socket.IO, so that on the way down the
        # sockets are closed before this process's members are removed from
        # the database.  Socket.IO before realtime, so that realtime first
        # answers every request it received, and only then are the sockets
        # closed.
        self.addService(sharing)
        self.addService(SocketIOService(socketio))
        self.addService(realtime)
        site = RealtimeSite(
            root_resource(
                health=HealthProbe(health).check,
                socketio=socketio.resource(),
                api=AdminAPI(pool, keys, reactor, control).resource(),
                metrics=MetricsPage(
                    metrics, lambda request: require_admin(request, keys, reactor.seconds())
                ),
                admin=AdminPage(),
            ),
            max_body=config.max_body,
            reactor=reactor,
            request_deadline=config.request_timeout,
        )
        for description in config.port:
            port = ListeningPort(reactor, description, site)
            self._ports.append(port)
            self.addService(port)
        if config.metrics_port is not None:
            scrape = RealtimeSite(
                metrics_resource(metrics),
                max_body=config.max_body,
                reactor=reactor,
                request_deadline=config.request_timeout,
            )
            self.metrics_port = ListeningPort(reactor, config.metrics_port, scrape)
            self.addService(self.metrics_port)

    def _started(self, _: object) -> None:
        self._announce()
        self.notify.serving = self._serving
        self.notify.ready()
        self.ready.callback(self)

    def _serving(self) -> str:
        """
        What the daemon serves now, for systemd's status line.
        """
        assert self.socketio is not None and self.realtime is not None
        sessions = self.socketio.engine.sessions
        connections = sum(1 for connection in list(sessions.values()) if not connection.closed)
        return (
            f"Serving {connections} connections, "
            f"{self.realtime.subscriptions.count()} subscriptions"
        )

    def _failed(self, reason: Failure) -> None:
        if not self.running:
            # Stopped while starting: nothing failed.
            self.ready.errback(reason)
            self.ready.addErrback(lambda _: None)
            return
        log.failure("realtimed could not start", reason)
        self.ready.errback(reason)
        self.ready.addErrback(lambda _: None)
        if self._stop_on_failure and self.reactor.running:
            self.reactor.stop()

    def _message_stored(self, message: StoredMessage) -> None:
        """
        A message was stored, by this process or another: send it to this
        process's sockets, and have the webhook service look at once for the
        deliveries the same transaction queued, if it queued any.
        """
        assert self.realtime is not None and self.webhooks is not None
        try:
            sockets = self.realtime.deliver(message)
            self.metrics.delivered(
                message.message_id, str(message.body.get("createdAt", "")), sockets
            )
        finally:
            if message.webhooks:
                self.webhooks.wake()

    def _notified(self, channel: str, payload: str | None) -> None:
        """
        A notification came on a channel the listener LISTENs to besides
        its own (or may have, while it was away: C{payload} is C{None}):
        channel rows changed, and the realtime channels check their
        subscriptions; an admin command for every process; or another
        process's presence changed.
        """
        assert self.realtime is not None and self.control is not None
        assert self.sharing is not None
        if channel == CHANNELS_CHANNEL:
            self.realtime.channels_changed(payload)
        elif channel == CONTROL_CHANNEL:
            self.control.notified(channel, payload)
        elif channel == PRESENCE_CHANNEL:
            self.sharing.notified(payload)

    def _announce(self) -> None:
        """
        Say where realtimed listens; on the start that generated secrets, say
        them too (to a terminal) or where they are kept (otherwise), so a
        new user can connect at once.
        """
        for port in self.ports:
            log.info("realtimed listening on {url}", url=_url_of(port))
        if self.metrics_port is not None and self.metrics_port.port is not None:
            log.info(
                "realtimed serving metrics on {url}metrics",
                url=_url_of(self.metrics_port.port),
            )
        if not self._generated:
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
            for name in self._generated:
                lines.append(f"  {labels[name]:<24} {getattr(self.keys, name)}")
        else:
            lines.append(f"Generated secrets were written to {path} (mode 0600).")
        self._out.write("\n".join(lines) + "\n")
        self._out.flush()


def webhook_service(reactor: Any, config: Config, pool: IQueries, secret: str) -> WebhookService:
    """
    The webhook service as the configuration asks for it.

    @param pool: The outbox's connections.
    @param secret: The webhook secret in use (configured or generated).
    """
    return WebhookService(
        reactor,
        pool,
        secret,
        allow_private=config.webhook_allow_private,
        policy=RetryPolicy(horizon=config.webhook_retry_hours * 3600.0),
    )


def _step(child: object) -> str:
    """
    What starting C{child} does, for systemd's status line.
    """
    if isinstance(child, ListeningPort):
        return f"listening on {child.description}"
    return {
        "EmbeddedPostgres": "the embedded PostgreSQL",
        "GivenDatabase": "the database",
        "SchemaMigrations": "applying the schema migrations",
        "ConnectionPool": "connecting to the database",
        "MessageListener": "the listener, reading what was stored meanwhile",
        "SessionStore": "recoverable sessions",
        "WebhookService": "webhook deliveries",
        "MessageRetention": "message retention",
        "Realtime": "realtime channels",
        "SocketIOService": "Socket.IO",
        "SharedPresence": "presence shared with the other processes",
    }.get(type(child).__name__, type(child).__name__)


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
