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

import json
import uuid
from collections.abc import Callable, Generator, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any

import attrs
from attrs import Factory, define, field
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from realtimed.auth import (
    AuthenticationError,
    Keys,
    Principal,
    authenticate,
    bearer_credential,
)
from realtimed.engineio.socketio import ConnectRefused, Namespace, Socket
from realtimed.lifecycle import Readiness
from realtimed.metrics import Metrics
from realtimed.realtime.channels import is_wildcard, takes_names_from
from realtimed.realtime.client_events import (
    ERROR_EVENT,
    EVENTS,
    INTERNAL_ERROR,
    PUBLISH,
    REALTIME_LIMIT_EXCEEDED,
    REALTIME_NOT_SUBSCRIBED,
    REALTIME_RATE_LIMITED,
    REALTIME_UNAUTHORIZED,
    Authenticate,
    Publish,
    Refusal,
    Request,
    Subscribe,
    Unsubscribe,
    authenticated_ack,
    parse,
    published_ack,
    subscribed_ack,
    unsubscribed_ack,
)
from realtimed.realtime.limits import Limits, TokenBucket
from realtimed.realtime.presence import ANONYMOUS, USER, Identity, Presence, PresenceChange
from realtimed.realtime.shared_presence import SharedPresence
from realtimed.realtime.subscriptions import Subscription, Subscriptions
from realtimed.store.messages import StoredMessage
from realtimed.store.pool import IQueries
from realtimed.store.positions import Position
from realtimed.store.publisher import (
    AudienceCounter,
    Authorizer,
    Grant,
    LocalDelivery,
    Publisher,
    Rejected,
    Rejection,
)
from realtimed.store.sessions import (
    SavedSubscription,
    Session,
    SessionStore,
    Stream,
    is_pid,
    new_pid,
)
from realtimed.timers import Deadlines

log = Logger()

Ack = Callable[..., None]

#: At most this many messages are replayed to a subscribe ``since`` a
#: message id (the newest of them).
SINCE_REPLAY_LIMIT = 1000

#: A recovering socket that missed more messages than this connects afresh.
RECOVERY_LIMIT = 10_000

#: Why a socket may go away and be recovered; any other way ends its
#: session for good.
RECOVERABLE = frozenset({"transport close", "transport error", "ping timeout", "forced close"})


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

    @ivar pending: Requests taken and not answered yet.
    @ivar publishes: The socket's publish rate, once it has published.
    @ivar session: What connection state recovery keeps of the socket.
    @ivar moved: Its session was recovered by another socket.
    """

    principal: Principal
    identity: Identity
    requests: list[Callable[[], Deferred[None] | None]] = Factory(list)
    busy: bool = False
    pending: int = 0
    publishes: TokenBucket | None = None
    session: Session | None = None
    moved: bool = False


@define(eq=False)
class _Unanswered:
    """
    How many requests of this process's sockets wait for an answer, and a
    way to learn when none does.
    """

    count: int = 0
    _none: Readiness = field(factory=Readiness, init=False)

    def add(self) -> None:
        if not self.count:
            self._none.reset()
        self.count += 1

    def done(self) -> None:
        self.count -= 1
        if not self.count:
            self._none.succeed(None)

    def when_none(self) -> Deferred[None]:
        if not self.count:
            self._none.succeed(None)
        waiting: Deferred[None] = self._none.wait()
        return waiting


@define(eq=False)
class _Reply:
    """
    The one answer a request gets: to its acknowledgement callback, or,
    for a failure without one, as the event ``realtime:error``.
    """

    socket: Socket
    client: _Client
    ack: Ack | None
    unanswered: _Unanswered
    answered: bool = False

    def ok(self, value: dict[str, Any]) -> None:
        if self._answering() and self.ack is not None:
            self.ack(value)

    def refuse(self, refusal: Refusal) -> None:
        if not self._answering():
            return
        if self.ack is not None:
            self.ack(refusal.ack())
        else:
            self.socket.emit(ERROR_EVENT, refusal.error_event())

    def _answering(self) -> bool:
        if self.answered:
            return False
        self.answered = True
        self.client.pending -= 1
        self.unanswered.done()
        return True


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
    @ivar limits: What one socket may ask.
    @ivar audience_interval: Seconds between writes of audience counts.
    @ivar metrics: Counts publishes (the daemon's metrics), if given.
    @ivar drain_timeout: When stopping, the longest wait for the requests
        received before the stop to be answered.
    @ivar stream: Where this process's listener stands in the stream of
        stored messages (for replay and recovery).
    @ivar sessions: Replays missed messages, and keeps sessions for
        connection state recovery.
    @ivar recovery_window: Seconds a session may be recovered after its
        socket went away; 0 turns connection state recovery off.
    @ivar catch_up_timeout: The longest wait for this process's listener to
        reach the position replay starts from.
    @ivar sharing: Shares presence with the other processes of the
        database, if set (the daemon sets it); without it, presence covers
        this process alone.
    """

    namespace: Namespace
    pool: IQueries
    keys: Keys
    clock: Any
    local: LocalDelivery | None = None
    limits: Limits = field(factory=Limits)
    audience_interval: float = 1.0
    metrics: Metrics | None = None
    drain_timeout: float = 10.0
    stream: Stream | None = None
    sessions: SessionStore | None = None
    recovery_window: float = 0.0
    catch_up_timeout: float = 5.0
    subscriptions: Subscriptions[Socket] = field(init=False, factory=Subscriptions)
    presence: Presence[Socket] = field(init=False, factory=Presence)
    sharing: SharedPresence | None = field(default=None, init=False)
    publisher: Publisher = field(init=False)
    authorizer: Authorizer = field(init=False)
    audience: AudienceCounter = field(init=False)
    _stopping: bool = field(default=False, init=False)
    _unanswered: _Unanswered = field(factory=_Unanswered, init=False)
    _channels_version: int = field(default=0, init=False)
    _checking: Deferred[Any] | None = field(default=None, init=False)
    _check_again: bool = field(default=False, init=False)
    #: sockets being replayed what they missed, and the messages handed over
    #: for them meanwhile
    _catching_up: dict[Socket, list[StoredMessage]] = field(factory=dict, init=False)
    #: when each socket's token expires, for sockets whose token does
    _expiries: Deadlines[Socket] = field(init=False)

    def __attrs_post_init__(self) -> None:
        self._expiries = Deadlines(self.clock, self._expired)
        self.publisher = Publisher(self.pool, self.local, metrics=self.metrics)
        self.authorizer = Authorizer(self.pool)
        self.audience = AudienceCounter(self.pool, self.clock, self.audience_interval)
        self.namespace.on_connect(self._connect)
        self.namespace.on_disconnect(self._disconnect)
        for event, operation in EVENTS.items():
            self.namespace.on(event, self._handler(operation), with_text=operation == PUBLISH)

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

    def drained(self) -> Deferred[None]:
        """
        A Deferred firing once every request received has been answered,
        or after C{drain_timeout} seconds (with those left logged).
        """
        done: Deferred[None] = Deferred()

        def answered(_: object) -> None:
            if timer.active():
                timer.cancel()
            if not done.called:
                done.callback(None)

        def too_long() -> None:
            log.warn(
                "Stopping with {count} requests still unanswered after {timeout:g} s",
                count=self._unanswered.count,
                timeout=self.drain_timeout,
            )
            done.callback(None)

        timer = self.clock.callLater(self.drain_timeout, too_long)
        self._unanswered.when_none().addCallback(answered)
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
        count = len(audience)
        if self._catching_up:
            for socket in audience & self._catching_up.keys():
                self._catching_up[socket].append(message)
            audience = audience - self._catching_up.keys()
        if self.recovery_window and message.position is not None:
            offset = message.position.encode()
            self.namespace.emit_many(audience, message.event, message.body, offset)
        else:
            self.namespace.emit_many(audience, message.event, message.body)
        self.audience.add(message.message_id, count)
        return count

    def _send_stored(self, socket: Socket, message: StoredMessage, at: Position | None) -> None:
        """
        Send one stored message to one socket, with C{at} as its offset
        when connection state recovery is on.
        """
        if self.recovery_window and at is not None:
            socket.emit(message.event, message.body, at.encode())
        else:
            socket.emit(message.event, message.body)

    def _send_replayed(
        self, socket: Socket, messages: Sequence[StoredMessage], upto: Position
    ) -> None:
        """
        Send what C{socket} missed up to C{upto}; the last message carries
        C{upto} as its offset (the socket has everything up to it then).
        """
        for n, message in enumerate(messages, 1):
            self._send_stored(socket, message, upto if n == len(messages) else None)
            self.audience.add(message.message_id, 1)

    def _caught_up(self, socket: Socket) -> None:
        """
        Send C{socket} what was handed over for it while it caught up; it
        then receives messages as they come.
        """
        for message in self._catching_up.pop(socket, ()):
            self._send_stored(socket, message, message.position)

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
        The members present in C{channel}, on every process when presence
        is shared, oldest first.
        """
        return [member.to_json() for member in self.presence.members(channel)]

    # Presence

    def join_presence(self, socket: Socket, channel: str) -> list[dict[str, Any]]:
        """
        C{socket} is present in C{channel} from now on: the one way a socket
        joins presence (a subscribe, or a restored subscription).  Its
        member's join is announced if the member is new anywhere, and shared
        with the other processes.

        @return: The members present, oldest first, as the subscribe ack
            lists them.
        """
        client = self._client(socket)
        if client is None:
            return []
        members, change = self.presence.join(channel, socket, client.identity, rfc3339(self._now()))
        self.announce(change)
        self._share()
        return [m.to_json() for m in members]

    def leave_presence(self, socket: Socket, channel: str) -> None:
        """
        C{socket} is no longer present in C{channel}: the one way a socket
        leaves presence (an unsubscribe, an ended subscription, a
        disconnect).  Its member's leave is announced if that was its last
        socket anywhere.
        """
        client = self._client(socket)
        if client is None:
            return
        self.announce(self.presence.leave(channel, socket, client.identity))
        self._share()

    def announce(self, change: PresenceChange[Socket] | None) -> None:
        """
        Send a presence change, if any, to its recipients on this process.
        """
        if change is None:
            return
        event, data = change.event()
        self.namespace.emit_many(change.recipients, event, data)

    def _share(self) -> None:
        if not self.presence.has_unwritten():
            return
        if self.sharing is None:
            # Nobody else to tell.
            self.presence.take_unwritten()
        else:
            self.sharing.changed()

    # Channel changes

    def channels_changed(self, changes: str | None) -> None:
        """
        Channel rows were created, changed or deleted (C{changes}: what the
        database announced, see migration 0007), or may have been while
        this process was not listening (C{None}).  Every subscription whose
        row no longer grants it ends, with ``realtime:error``; a socket
        subscribed to a pattern whose row loses names to another row is
        told so (it no longer receives those names).
        """
        self._channels_version += 1
        takers = _takers(changes)
        if self._checking is not None:
            self._check_again = True
            return
        held = self.subscriptions.held()
        if not held:
            return
        d: Deferred[Any] = self.authorizer.grants([(s.channel, s.channel_id) for s in held])
        self._checking = d
        d.addCallback(self._regranted, takers)
        d.addErrback(lambda f: log.failure("Checking subscriptions against the channels", f))

        def checked(_: object) -> None:
            self._checking = None
            if self._check_again:
                self._check_again = False
                self.channels_changed(None)

        d.addBoth(checked)

    def _regranted(self, grants: list[Grant], takers: list[tuple[str, str, float]]) -> None:
        for grant in grants:
            if not grant.granted:
                for socket in self.subscriptions.holding(grant.channel, grant.channel_id):
                    self._end_subscription(
                        socket,
                        grant.channel,
                        f"The subscription to {grant.channel} ended: its channel was"
                        " changed, disabled or deleted",
                    )
                continue
            if grant.created_at is None or not is_wildcard(grant.channel):
                continue
            for taker_id, pattern, created_at in takers:
                if taker_id != grant.channel_id and takes_names_from(
                    pattern, created_at, grant.channel, grant.created_at
                ):
                    for socket in self.subscriptions.holding(grant.channel, grant.channel_id):
                        self._tell(
                            socket,
                            Refusal(
                                grant.channel,
                                REALTIME_UNAUTHORIZED,
                                f"Names matching {pattern} now belong to another channel;"
                                f" {grant.channel} no longer receives them",
                            ),
                        )

    def _end_subscription(self, socket: Socket, channel: str, message: str) -> None:
        client = self._client(socket)
        if client is None or self.subscriptions.remove(socket, channel) is None:
            return
        self.leave_presence(socket, channel)
        self._remember(client, channel, None)
        self._tell(socket, Refusal(channel, REALTIME_UNAUTHORIZED, message))

    def _tell(self, socket: Socket, refusal: Refusal) -> None:
        socket.emit(ERROR_EVENT, refusal.error_event())

    # Connecting

    def _connect(self, socket: Socket, auth: object) -> Deferred[None] | None:
        try:
            credential = credential_of(auth, socket.headers)
            principal = authenticate(credential, self.keys, self._now())
        except AuthenticationError as e:
            log.info("Refused socket {sid}: {reason}", sid=socket.sid, reason=str(e))
            raise ConnectRefused(str(e)) from None
        client = _Client(principal, _identity(principal, socket.sid))
        socket.data["realtime"] = client
        self._expire_with(socket, client)
        if not self.recovery_window or self.sessions is None or self.stream is None:
            return None
        pid = auth.get("pid") if isinstance(auth, dict) else None
        if not isinstance(pid, str) or not is_pid(pid):
            self._keep_session(socket, client)
            return None
        offset = auth.get("offset") if isinstance(auth, dict) else None
        d = self._recover(socket, client, pid, offset if isinstance(offset, str) else None)

        def connected(recovered: bool) -> None:
            if not recovered and socket.data.get("realtime") is client:
                self._keep_session(socket, client)

        return d.addCallback(connected)

    def _keep_session(self, socket: Socket, client: _Client) -> None:
        """
        A socket connecting afresh gets a session it may recover, which
        starts at what the listener has handed over so far.
        """
        assert self.sessions is not None and self.stream is not None
        connected_at = self.stream.handed_position()
        if connected_at is None:
            return
        session = Session(
            new_pid(),
            socket.sid,
            client.principal.role,
            client.principal.sender_id,
            connected_at,
        )
        socket.keep_session(session.pid)
        client.session = session
        self.sessions.save(session)

    @inlineCallbacks
    def _recover(
        self, socket: Socket, client: _Client, pid: str, offset: str | None
    ) -> Generator[Deferred[Any], Any, bool]:
        """
        Take up session C{pid} for C{socket}, whose client has received
        every message up to C{offset} (or nothing since it connected): the
        socket gets back its id and subscriptions, and is sent what it
        missed before anything new.

        @return: A Deferred firing with whether the session was recovered.
        """
        assert self.sessions is not None and self.stream is not None
        sessions, stream = self.sessions, self.stream
        try:
            session = yield sessions.claim(pid)
        except Exception:
            # The database is away: the socket connects afresh rather than
            # being refused (a refused client would not try again).
            log.failure("Claiming the session of a reconnecting socket failed")
            return False
        if session is None:
            return False
        principal = client.principal
        try:
            if (session.role, session.sender_id) != (principal.role, principal.sender_id):
                raise ValueError("the credential is not the session's")
            after = session.connected_at if offset is None else Position.decode(offset)
        except ValueError as e:
            log.info("Not recovering session of socket {sid}: {why}", sid=session.sid, why=e)
            sessions.forget(pid)
            return False
        reached = yield self._reached(after)
        if socket.data.get("realtime") is not client:
            sessions.gone(pid)
            return False
        if reached is None:
            sessions.forget(pid)
            return False
        # From here until the replay is read, whatever the listener hands
        # over for the socket waits for it.
        upto = stream.handed_position()
        assert upto is not None
        self._take_over(session.sid)
        socket.keep_session(pid, session.sid)
        client.identity = _identity(principal, socket.sid)
        client.session = attrs.evolve(session, sid=socket.sid)
        for saved in session.subscriptions:
            self._register(socket, client, saved.channel, saved.channel_id, None)
        self._catching_up[socket] = []
        try:
            replay = yield sessions.replay(after, upto, session.subscriptions, RECOVERY_LIMIT)
        except Exception:
            log.failure("Reading what socket {sid} missed failed", sid=socket.sid)
            replay = None
        if socket.data.get("realtime") is not client:
            return True
        if replay is None or not replay.complete:
            log.info("Socket {sid} missed too much to be recovered", sid=socket.sid)
            for subscription in self.subscriptions.remove_socket(socket):
                self.leave_presence(socket, subscription.channel)
            self._catching_up.pop(socket, None)
            client.session = None
            sessions.forget(pid)
            return False
        sessions.save(client.session)
        self._send_replayed(socket, replay.messages, upto)
        self._caught_up(socket)
        log.info(
            "Recovered socket {sid}: {count} missed message(s)",
            sid=socket.sid,
            count=len(replay.messages),
        )
        # The channels may have changed while the socket was away.
        self.channels_changed(None)
        return True

    def _take_over(self, sid: str) -> None:
        """
        A socket of this process whose session is being recovered, and
        which has not noticed that its client went away, goes now.
        """
        former = self.namespace.sockets.get(sid)
        client = None if former is None else self._client(former)
        if former is not None and client is not None:
            client.moved = True
            former.disconnect()

    def _reached(self, position: Position) -> Deferred[Position | None]:
        """
        Wait until the listener has handed over everything up to
        C{position}: the Deferred fires with where it stands then, or with
        C{None} if that takes longer than C{catch_up_timeout}.
        """
        assert self.stream is not None
        d: Deferred[Any] = self.stream.reached(position)
        d.addTimeout(self.catch_up_timeout, self.clock)

        def late(failure: Failure) -> None:
            failure.trap(CancelledError, TimeoutError)
            log.warn(
                "The listener did not reach a replay's start within {timeout:g} s",
                timeout=self.catch_up_timeout,
            )
            return None

        return d.addErrback(late)

    def _register(
        self,
        socket: Socket,
        client: _Client,
        channel: str,
        channel_id: str,
        since: Position | None,
    ) -> list[dict[str, Any]]:
        """
        C{socket} now receives C{channel} and is present in it; with
        C{since}, its session remembers the subscription as receiving
        messages after that position.

        @return: The members present in the channel.
        """
        self.subscriptions.add(socket, Subscription(channel, channel_id))
        members = self.join_presence(socket, channel)
        if since is not None:
            self._remember(client, channel, (channel_id, since))
        return members

    def _remember(
        self, client: _Client, channel: str, subscribed: tuple[str, Position] | None
    ) -> None:
        """
        Keep in the socket's session that it is subscribed to C{channel}
        (C{subscribed}: the channel row's id, and the position it receives
        after), or that it no longer is (C{None}).
        """
        session = client.session
        if session is None or self.sessions is None:
            return
        kept = tuple(s for s in session.subscriptions if s.channel != channel)
        if subscribed is not None:
            kept += (SavedSubscription(channel, *subscribed),)
        client.session = attrs.evolve(session, subscriptions=kept)
        self.sessions.save(client.session)

    def _expire_with(self, socket: Socket, client: _Client) -> float | None:
        """
        Have the socket live as long as its token: disconnect it when the
        token's C{exp} passes.

        @return: When that is, if the token expires.
        """
        expires = client.principal.claims.get("exp")
        if not isinstance(expires, (int, float)) or isinstance(expires, bool):
            self._expiries.cancel(socket)
            return None
        self._expiries.set(socket, float(expires))
        return float(expires)

    def _expired(self, socket: Socket) -> None:
        log.info("Token of socket {sid} expired; disconnecting it", sid=socket.sid)
        socket.disconnect()

    def _disconnect(self, socket: Socket, reason: str) -> None:
        client = self._client(socket)
        if client is None:
            return
        client.requests.clear()
        self._expiries.cancel(socket)
        self._catching_up.pop(socket, None)
        if client.session is not None and self.sessions is not None and not client.moved:
            if reason in RECOVERABLE:
                self.sessions.gone(client.session.pid)
            else:
                self.sessions.forget(client.session.pid)
        for subscription in self.subscriptions.remove_socket(socket):
            self.leave_presence(socket, subscription.channel)
        socket.data.pop("realtime", None)

    # Requests

    def _handler(
        self, operation: str
    ) -> Callable[[Socket, list[Any], Ack | None, str | None], None]:
        def handle(
            socket: Socket, args: list[Any], ack: Ack | None, text: str | None = None
        ) -> None:
            client = self._client(socket)
            if client is None:
                return
            client.pending += 1
            self._unanswered.add()
            reply = _Reply(socket, client, ack, self._unanswered)
            if self._stopping:
                reply.refuse(_stopping_refusal(args))
                return
            request = parse(operation, args, text)
            if isinstance(request, Refusal):
                if operation == PUBLISH and self.metrics is not None:
                    self.metrics.publishes("invalid")
                reply.refuse(request)
                return
            refusal = self._over_limit(client, request)
            if refusal is not None:
                reply.refuse(refusal)
                return
            client.requests.append(partial(self._perform, socket, client, request, reply))
            if not client.busy:
                self._work(socket, client)

        handle.__name__ = f"realtime_{operation}"
        return handle

    def _over_limit(self, client: _Client, request: Request) -> Refusal | None:
        """
        Why C{client} may not make C{request} now, if a limit says so: too
        many requests waiting for an answer, or publishing too fast.
        """
        channel = None if isinstance(request, Authenticate) else request.channel
        if self.limits.max_pending and client.pending > self.limits.max_pending:
            return Refusal(
                channel,
                REALTIME_RATE_LIMITED,
                f"More than {self.limits.max_pending} requests are waiting for an answer",
                about_channel=channel is not None,
            )
        if isinstance(request, Publish):
            if client.publishes is None:
                client.publishes = self.limits.publish_bucket(self._now())
            if client.publishes is not None and not client.publishes.take(self._now()):
                return Refusal(
                    channel,
                    REALTIME_RATE_LIMITED,
                    f"At most {self.limits.max_publish_rate:g} publishes per second",
                )
        return None

    def _perform(
        self, socket: Socket, client: _Client, request: Request, reply: _Reply
    ) -> Deferred[None] | None:
        if isinstance(request, Subscribe):
            return self._subscribe(socket, client, request, reply)
        if isinstance(request, Unsubscribe):
            self._unsubscribe(socket, client, request, reply)
        elif isinstance(request, Publish):
            self._publish(socket, client, request, reply)
        else:
            self._authenticate(socket, client, request, reply)
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
        self, socket: Socket, client: _Client, request: Subscribe, reply: _Reply
    ) -> Deferred[None] | None:
        channel = request.channel
        if self.subscriptions.is_subscribed(socket, channel):
            replay = None if request.since is None else (0, False)
            reply.ok(subscribed_ack(channel, self.members(channel), replay))
            return None
        most = self.limits.max_subscriptions
        if most and self.subscriptions.count_of(socket) >= most:
            reply.refuse(
                Refusal(
                    channel,
                    REALTIME_LIMIT_EXCEEDED,
                    f"A socket may hold at most {most} subscriptions",
                )
            )
            return None
        version = self._channels_version
        d = self.authorizer.authorize(client.principal, channel)

        def allowed(channel_id: str) -> Deferred[None] | None:
            if socket.data.get("realtime") is not client:
                return None
            if request.since is not None and self.sessions is not None:
                replayed = self._replay_point(request.since)
                replayed.addCallback(
                    self._subscribed_since, socket, client, channel, channel_id, reply
                )
                return replayed.addCallback(lambda _: recheck())
            since = None
            if client.session is not None and self.stream is not None:
                since = self.stream.handed_position()
            members = self._register(socket, client, channel, channel_id, since)
            reply.ok(subscribed_ack(channel, members))
            recheck()
            return None

        def recheck() -> None:
            if version != self._channels_version:
                # The channels changed while this was decided: check it
                # against them as they are now.
                self.channels_changed(None)

        answered: Deferred[None] = d.addCallback(allowed)
        answered.addErrback(self._failed, reply, channel, "subscribe")
        answered.addErrback(lambda f: log.failure("Answering a subscribe failed", f))
        return answered

    def _replay_point(self, since: str) -> Deferred[Position | None]:
        """
        Where a replay from C{since} starts, once this process's listener
        has got there: after a message id, or at an offset a message came
        with (exact: the messages handed over up to that one); C{None} for
        an unknown message or offset (or a listener that does not get there
        in time).
        """
        assert self.sessions is not None
        d: Deferred[Any]
        try:
            uuid.UUID(since)
        except ValueError:
            try:
                d = succeed(Position.decode(since))
            except ValueError:
                return succeed(None)
        else:
            d = self.sessions.position_of(since)

        def found(after: Position | None) -> Deferred[Position | None] | None:
            if after is None:
                return None
            reached = self._reached(after)
            return reached.addCallback(lambda handed: None if handed is None else after)

        return d.addCallback(found)

    def _subscribed_since(
        self,
        after: Position | None,
        socket: Socket,
        client: _Client,
        channel: str,
        channel_id: str,
        reply: _Reply,
    ) -> Deferred[None] | None:
        """
        Subscribe C{socket} to C{channel} and replay what was stored on it
        after position C{after} (if known), before anything new.
        """
        if socket.data.get("realtime") is not client:
            return None
        upto = None if self.stream is None else self.stream.handed_position()
        if after is None or upto is None or self.sessions is None:
            members = self._register(socket, client, channel, channel_id, upto)
            reply.ok(subscribed_ack(channel, members, (0, False)))
            return None
        members = self._register(socket, client, channel, channel_id, after)
        self._catching_up.setdefault(socket, [])
        subscription = SavedSubscription(channel, channel_id, after)
        d = self.sessions.replay(after, upto, [subscription], SINCE_REPLAY_LIMIT, newest=True)

        def replayed(replay: Any) -> None:
            if socket.data.get("realtime") is not client:
                return
            self._send_replayed(socket, replay.messages, upto)
            reply.ok(subscribed_ack(channel, members, (len(replay.messages), replay.complete)))
            self._caught_up(socket)

        def failed(failure: Failure) -> None:
            log.failure("Replaying {channel} failed", failure, channel=channel)
            if socket.data.get("realtime") is client:
                reply.ok(subscribed_ack(channel, members, (0, False)))
                self._caught_up(socket)

        return d.addCallbacks(replayed, failed)

    def _unsubscribe(
        self, socket: Socket, client: _Client, request: Unsubscribe, reply: _Reply
    ) -> None:
        channel = request.channel
        if self.subscriptions.remove(socket, channel) is not None:
            self.leave_presence(socket, channel)
            self._remember(client, channel, None)
        reply.ok(unsubscribed_ack(channel))

    def _publish(self, socket: Socket, client: _Client, request: Publish, reply: _Reply) -> None:
        channel = request.channel
        if not self.subscriptions.receives(socket, channel):
            if self.metrics is not None:
                self.metrics.publishes("not_subscribed")
            reply.refuse(
                Refusal(
                    channel,
                    REALTIME_NOT_SUBSCRIBED,
                    f"Subscribe to {channel} before publishing to it",
                )
            )
            return
        d = self.publisher.publish(
            client.principal, channel, request.event, request.payload_json, socket.sid
        )
        d.addCallback(lambda message_id: reply.ok(published_ack(channel, message_id)))
        d.addErrback(self._failed, reply, channel, "publish")
        d.addErrback(lambda f: log.failure("Answering a publish failed", f))

    def _authenticate(
        self, socket: Socket, client: _Client, request: Authenticate, reply: _Reply
    ) -> None:
        """
        Take a new token as the socket's credential, if it is valid and
        names the same role and user; the socket then lives until the new
        token expires.
        """
        try:
            principal = authenticate(request.token, self.keys, self._now())
        except AuthenticationError as e:
            reply.refuse(Refusal(None, REALTIME_UNAUTHORIZED, str(e), about_channel=False))
            return
        current = client.principal
        if (principal.role, principal.sender_id) != (current.role, current.sender_id):
            reply.refuse(
                Refusal(
                    None,
                    REALTIME_UNAUTHORIZED,
                    "The new token must carry the same role and sub as the socket's",
                    about_channel=False,
                )
            )
            return
        client.principal = principal
        expires = self._expire_with(socket, client)
        reply.ok(authenticated_ack(None if expires is None else rfc3339(expires)))

    # Answers

    def _failed(self, failure: Failure, reply: _Reply, channel: str, what: str) -> None:
        rejected = failure.value if failure.check(Rejected) else None
        if rejected is None:
            log.failure("A {what} on {channel} failed", failure, what=what, channel=channel)
            rejected = Rejected(channel, Rejection.FAILED)
        if reply.socket.data.get("realtime") is None:
            return
        reply.refuse(_refusal(rejected, what))

    # Helpers

    def _client(self, socket: Socket) -> _Client | None:
        client = socket.data.get("realtime")
        return client if isinstance(client, _Client) else None

    def _now(self) -> float:
        return float(self.clock.seconds())


def _identity(principal: Principal, sid: str) -> Identity:
    """
    Who a socket is present as: its user, or, without one, the socket.
    """
    if principal.sender_type == "user" and principal.sender_id is not None:
        return Identity(principal.sender_id, USER)
    return Identity(sid, ANONYMOUS)


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


def _takers(changes: str | None) -> list[tuple[str, str, float]]:
    """
    The channel rows that a change made enabled owners of their pattern,
    or of a new pattern: C{(id, pattern, created_at)}.
    """
    if changes is None:
        return []
    try:
        announced = json.loads(changes)
        takers = []
        for change in announced.get("changes", []):
            new, old = change.get("new"), change.get("old")
            if not new or not new.get("enabled"):
                continue
            if old and old.get("enabled") and old.get("pattern") == new["pattern"]:
                continue
            takers.append((str(change["id"]), str(new["pattern"]), float(new["created_at"])))
        return takers
    except (ValueError, TypeError, KeyError, AttributeError):
        log.warn("Cannot read a channel change: {changes!r}", changes=changes[:200])
        return []
