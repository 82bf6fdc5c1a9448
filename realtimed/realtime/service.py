"""
Realtime channels on the Socket.IO namespace ``/``.

The wire protocol:

- CONNECT: the auth payload ``{"token": ...}`` or ``{"apiKey": ...}``, else
  the handshake's ``Authorization: Bearer ...`` header, is authenticated;
  without a valid credential the client gets ``connect_error`` with the
  reason (``No authentication provided``, ``Invalid token``, ...).
- ``REALTIME_SUBSCRIBE`` / ``realtime:subscribe`` ``{channel}``: a channel
  name, or a channel row's pattern exactly as the row has it (every name the
  row owns).  Ack ``{ok: true, channel, presence: {members}}``.
- ``REALTIME_UNSUBSCRIBE`` / ``realtime:unsubscribe`` ``{channel}``: ack
  ``{ok: true, channel}`` (also when it was not subscribed).
- ``REALTIME_PUBLISH`` / ``realtime:publish`` ``{channel, event, payload}``:
  only on a name the socket receives (subscribed to it, or to a pattern
  matching it).  Ack ``{ok: true, channel, messageId}`` once stored.
- Failures: ack ``{ok: false, channel, error: {code, message}}``, or without
  an ack callback the event ``realtime:error`` ``{channel, code, message}``.
- Messages: event named by the message's event, data ``{channel, event,
  messageId, senderType, senderId, payload, createdAt}``.
- Presence: ``presence:join`` / ``presence:leave`` ``{channel, member,
  meta: {channel}}`` to the other members' sockets.

Each socket's requests are handled in the order they arrive: a publish sent
right after a subscribe, without waiting for its ack, is checked once the
subscribe is decided.  Publishes themselves do not wait for each other; the
`Publisher` stores them in order.

Messages reach sockets only through PostgreSQL: a publish is stored, every
realtimed process's listener reads every stored message from the database
and calls `Realtime.deliver`, which sends it to this process's subscribed
sockets.

Stopping: from the moment `Realtime.stopService` is called, requests that
arrive are refused (``INTERNAL_ERROR``, "realtimed is stopping"); every
request received before is still handled, and the stop waits (up to
``drain_timeout``) until each has been answered, so that a publish is never
stored without its ack being sent, nor acknowledged without being stored.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

from attrs import Factory, define, field
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from realtimed.auth import (
    AuthenticationError,
    Principal,
    authenticate,
    bearer_credential,
)
from realtimed.engineio.socketio import ConnectRefused, Namespace, Socket
from realtimed.keys import Keys
from realtimed.metrics import Metrics
from realtimed.realtime.client_events import (
    ERROR_EVENT,
    EVENTS,
    INTERNAL_ERROR,
    PUBLISH,
    REALTIME_NOT_SUBSCRIBED,
    REALTIME_UNAUTHORIZED,
    Publish,
    Refusal,
    Subscribe,
    Unsubscribe,
    parse,
    published_ack,
    subscribed_ack,
    unsubscribed_ack,
)
from realtimed.realtime.presence import ANONYMOUS, USER, Identity, Presence, PresenceChange
from realtimed.realtime.subscriptions import Subscription, Subscriptions
from realtimed.store.messages import StoredMessage
from realtimed.store.pool import IQueries
from realtimed.store.publisher import (
    AudienceCounter,
    Authorizer,
    LocalDelivery,
    Publisher,
    Rejected,
    Rejection,
)

log = Logger()

Ack = Callable[..., None]


def rfc3339(seconds: float) -> str:
    """
    A POSIX time as RFC 3339 UTC text with milliseconds, as the database
    writes ``createdAt``.
    """
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def credential_of(auth: object, headers: Any) -> str | None:
    """
    The credential a connecting socket presents: the auth payload's
    ``token`` or ``apiKey``, else the handshake's bearer ``Authorization``
    header.

    @raise AuthenticationError: If the auth payload names a credential that
        is not a string.
    """
    if isinstance(auth, dict):
        for key in ("token", "apiKey"):
            value = auth.get(key)
            if value is None:
                continue
            if not isinstance(value, str):
                raise AuthenticationError("Invalid token")
            if value:
                return value
    return bearer_credential(headers.get("authorization"))


@define(eq=False)
class _Client:
    """
    What realtime keeps per connected socket.
    """

    principal: Principal
    identity: Identity
    requests: list[Callable[[], Deferred[None] | None]] = Factory(list)
    busy: bool = False
    expiry: Any = None


@define(eq=False)
class Realtime(Service):
    """
    Realtime channels: authentication, subscribe, unsubscribe, publish and
    presence on C{namespace}, and delivery of stored messages to this
    process's sockets.

    @ivar namespace: The Socket.IO namespace to serve (``/``).
    @ivar pool: Database queries (the connection pool).
    @ivar keys: The credentials sockets are checked against.
    @ivar clock: The time (connect checks, presence join times, audience
        count flushes).
    @ivar local: Gets the publishes this process stored, before they are
        acknowledged (the listener).
    @ivar audience_interval: Seconds between writes of audience counts.
    @ivar metrics: Counts publishes (the daemon's metrics), if given.
    @ivar drain_timeout: When stopping, the longest wait for the requests
        received before the stop to be answered.
    """

    namespace: Namespace
    pool: IQueries
    keys: Keys
    clock: Any
    local: LocalDelivery | None = None
    audience_interval: float = 1.0
    metrics: Metrics | None = None
    drain_timeout: float = 10.0
    subscriptions: Subscriptions[Socket] = field(init=False, factory=Subscriptions)
    presence: Presence[Socket] = field(init=False, factory=Presence)
    publisher: Publisher = field(init=False)
    authorizer: Authorizer = field(init=False)
    audience: AudienceCounter = field(init=False)
    _stopping: bool = field(default=False, init=False)
    _publishing: int = field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        self.publisher = Publisher(self.pool, self.local, metrics=self.metrics)
        self.authorizer = Authorizer(self.pool)
        self.audience = AudienceCounter(self.pool, self.clock, self.audience_interval)
        self.namespace.on_connect(self._connect)
        self.namespace.on_disconnect(self._disconnect)
        for event, operation in EVENTS.items():
            self.namespace.on(event, self._handler(operation))

    # Service

    def stopService(self) -> Deferred[None]:
        """
        Refuse new requests, wait until those received are answered, then
        write the last audience counts.
        """
        Service.stopService(self)
        self._stopping = True
        d = self.drained()
        d.addCallback(lambda _: self.audience.stop())
        d.addErrback(lambda f: log.failure("Writing the last audience counts failed", f))
        return d

    def startService(self) -> None:
        Service.startService(self)
        self._stopping = False

    def _answering(self) -> bool:
        """
        Is a request received still waiting for its answer?
        """
        if self._publishing:
            return True
        for socket in list(self.namespace.sockets.values()):
            client = self._client(socket)
            if client is not None and (client.busy or client.requests):
                return True
        return False

    def drained(self) -> Deferred[None]:
        """
        A Deferred firing once every request received has been answered,
        or after C{drain_timeout} seconds (with those left logged).
        """
        done: Deferred[None] = Deferred()
        deadline = self._now() + self.drain_timeout

        def check() -> None:
            if not self._answering():
                done.callback(None)
            elif self._now() >= deadline:
                log.warn(
                    "Stopping with {count} publishes still unanswered after {timeout:g} s",
                    count=self._publishing,
                    timeout=self.drain_timeout,
                )
                done.callback(None)
            else:
                self.clock.callLater(0.01, check)

        check()
        return done

    # Delivery

    def deliver(self, message: StoredMessage) -> int:
        """
        Send a stored message to this process's sockets subscribed to its
        channel, or to the pattern of the channel row that owns it.

        @return: How many sockets it was sent to.
        """
        audience = self.subscriptions.audience(message.channel, message.channel_id)
        if not audience:
            return 0
        self.namespace.emit_many(audience, message.event, message.body)
        self.audience.add(message.message_id, len(audience))
        return len(audience)

    # Admin control

    def disconnect_sockets(self, user_id: str | None = None, socket_id: str | None = None) -> int:
        """
        Disconnect (a Socket.IO DISCONNECT: clients do not reconnect by
        themselves) every socket of this process of the user C{user_id}
        (its JWT ``sub``), or the socket C{socket_id}.

        @return: How many sockets were disconnected.
        """
        chosen = []
        for socket in list(self.namespace.sockets.values()):
            client = self._client(socket)
            if client is None:
                continue
            if socket.sid == socket_id or (
                user_id is not None
                and client.identity.type == USER
                and client.identity.presence_id == user_id
            ):
                chosen.append(socket)
        for socket in chosen:
            socket.disconnect()
        return len(chosen)

    def members(self, channel: str) -> list[dict[str, Any]]:
        """
        The members present in C{channel} on this process, oldest first.
        """
        return [member.to_json() for member in self.presence.members(channel)]

    # Connecting

    def _connect(self, socket: Socket, auth: object) -> None:
        try:
            credential = credential_of(auth, socket.headers)
            principal = authenticate(credential, self.keys, self._now())
        except AuthenticationError as e:
            log.info("Refused socket {sid}: {reason}", sid=socket.sid, reason=str(e))
            raise ConnectRefused(str(e)) from None
        if principal.sender_type == "user" and principal.sender_id is not None:
            identity = Identity(principal.sender_id, USER)
        else:
            identity = Identity(socket.sid, ANONYMOUS)
        client = _Client(principal, identity)
        socket.data["realtime"] = client
        expires = principal.claims.get("exp")
        if isinstance(expires, (int, float)) and not isinstance(expires, bool):
            # The socket lives as long as its token.
            client.expiry = self.clock.callLater(
                max(0.0, float(expires) - self._now()), self._expired, socket
            )

    def _expired(self, socket: Socket) -> None:
        client = self._client(socket)
        if client is not None:
            client.expiry = None
        log.info("Token of socket {sid} expired; disconnecting it", sid=socket.sid)
        socket.disconnect()

    def _disconnect(self, socket: Socket, reason: str) -> None:
        client = socket.data.pop("realtime", None)
        if not isinstance(client, _Client):
            return
        client.requests.clear()
        if client.expiry is not None and client.expiry.active():
            client.expiry.cancel()
        for subscription in self.subscriptions.remove_socket(socket):
            change = self.presence.leave(subscription.channel, socket, client.identity)
            self._announce(change)

    # Requests

    def _handler(self, operation: str) -> Callable[[Socket, list[Any], Ack | None], None]:
        def handle(socket: Socket, args: list[Any], ack: Ack | None) -> None:
            client = self._client(socket)
            if client is None:
                return
            if self._stopping:
                self._answer_refusal(socket, ack, _stopping_refusal(args))
                return
            request = parse(operation, args)
            if isinstance(request, Refusal):
                if operation == PUBLISH and self.metrics is not None:
                    self.metrics.publishes("invalid")
                self._answer_refusal(socket, ack, request)
                return
            client.requests.append(partial(self._perform, socket, client, request, ack))
            if not client.busy:
                self._work(socket, client)

        handle.__name__ = f"realtime_{operation}"
        return handle

    def _perform(
        self,
        socket: Socket,
        client: _Client,
        request: Subscribe | Unsubscribe | Publish,
        ack: Ack | None,
    ) -> Deferred[None] | None:
        if isinstance(request, Subscribe):
            return self._subscribe(socket, client, request, ack)
        if isinstance(request, Unsubscribe):
            self._unsubscribe(socket, client, request, ack)
        else:
            self._publish(socket, client, request, ack)
        return None

    def _work(self, socket: Socket, client: _Client) -> None:
        """
        Run C{client}'s waiting requests in order; a request that returns
        an unfired Deferred holds the later ones until it fires.
        """
        while client.requests:
            step = client.requests.pop(0)
            try:
                d = step()
            except Exception:
                log.failure("Handling a realtime request of {sid} failed", sid=socket.sid)
                continue
            if d is not None and not d.called:
                client.busy = True

                def resume(_: object) -> None:
                    client.busy = False
                    if socket.data.get("realtime") is client:
                        self._work(socket, client)

                d.addBoth(resume)
                d.addErrback(lambda f: log.failure("Resuming realtime requests failed", f))
                return
        client.busy = False

    def _subscribe(
        self, socket: Socket, client: _Client, request: Subscribe, ack: Ack | None
    ) -> Deferred[None] | None:
        channel = request.channel
        if self.subscriptions.is_subscribed(socket, channel):
            members = self.presence.members(channel)
            self._answer(socket, ack, subscribed_ack(channel, [m.to_json() for m in members]))
            return None
        d = self.authorizer.authorize(client.principal, channel)

        def allowed(channel_id: str) -> None:
            if socket.data.get("realtime") is not client:
                return
            self.subscriptions.add(socket, Subscription(channel, channel_id))
            members, change = self.presence.join(
                channel, socket, client.identity, rfc3339(self._now())
            )
            self._answer(socket, ack, subscribed_ack(channel, [m.to_json() for m in members]))
            self._announce(change)

        answered: Deferred[None] = d.addCallback(allowed)
        answered.addErrback(self._failed, socket, ack, channel, "subscribe")
        answered.addErrback(lambda f: log.failure("Answering a subscribe failed", f))
        return answered

    def _unsubscribe(
        self, socket: Socket, client: _Client, request: Unsubscribe, ack: Ack | None
    ) -> None:
        channel = request.channel
        if self.subscriptions.remove(socket, channel) is not None:
            self._announce(self.presence.leave(channel, socket, client.identity))
        self._answer(socket, ack, unsubscribed_ack(channel))

    def _publish(self, socket: Socket, client: _Client, request: Publish, ack: Ack | None) -> None:
        channel = request.channel
        if not self.subscriptions.receives(socket, channel):
            if self.metrics is not None:
                self.metrics.publishes("not_subscribed")
            self._answer_refusal(
                socket,
                ack,
                Refusal(
                    channel,
                    REALTIME_NOT_SUBSCRIBED,
                    f"Subscribe to {channel} before publishing to it",
                ),
            )
            return
        self._publishing += 1
        d = self.publisher.publish(client.principal, channel, request.event, request.payload_json)
        d.addCallback(
            lambda message_id: self._answer(socket, ack, published_ack(channel, message_id))
        )
        d.addErrback(self._failed, socket, ack, channel, "publish")
        d.addErrback(lambda f: log.failure("Answering a publish failed", f))
        d.addBoth(self._published)

    def _published(self, _: object) -> None:
        self._publishing -= 1

    # Answers

    def _failed(
        self, failure: Failure, socket: Socket, ack: Ack | None, channel: str, what: str
    ) -> None:
        rejected = failure.value if failure.check(Rejected) else None
        if rejected is None:
            log.failure("A {what} on {channel} failed", failure, what=what, channel=channel)
            rejected = Rejected(channel, Rejection.FAILED)
        if socket.data.get("realtime") is None:
            return
        self._answer_refusal(socket, ack, _refusal(rejected, what))

    def _answer(self, socket: Socket, ack: Ack | None, value: dict[str, Any]) -> None:
        if ack is not None:
            ack(value)

    def _answer_refusal(self, socket: Socket, ack: Ack | None, refusal: Refusal) -> None:
        if ack is not None:
            ack(refusal.ack())
        else:
            socket.emit(ERROR_EVENT, refusal.error_event())

    def _announce(self, change: PresenceChange[Socket] | None) -> None:
        if change is None:
            return
        event, data = change.event()
        self.namespace.emit_many(change.recipients, event, data)

    # Helpers

    def _client(self, socket: Socket) -> _Client | None:
        client = socket.data.get("realtime")
        return client if isinstance(client, _Client) else None

    def _now(self) -> float:
        return float(self.clock.seconds())


def _stopping_refusal(args: list[Any]) -> Refusal:
    """
    How a request that arrives once realtimed is stopping is refused.
    """
    data = args[0] if args else None
    channel = data.get("channel") if isinstance(data, dict) else None
    return Refusal(
        channel if isinstance(channel, str) else None,
        INTERNAL_ERROR,
        "realtimed is stopping; reconnect and try again",
    )


def _refusal(rejected: Rejected, what: str) -> Refusal:
    """
    How a client is told that the store did not do its C{what}
    (``subscribe`` or ``publish``).
    """
    channel = rejected.channel
    if rejected.rejection is Rejection.NO_CHANNEL:
        return Refusal(channel, REALTIME_UNAUTHORIZED, f"No enabled channel matches {channel}")
    if rejected.rejection is Rejection.DENIED:
        return Refusal(channel, REALTIME_UNAUTHORIZED, f"Not allowed to {what} to {channel}")
    return Refusal(channel, INTERNAL_ERROR, f"The {what} failed; try again")
