"""
The HTTP client webhook deliveries go out on: it connects only to
addresses that `realtimed.webhooks.policy.address_refusal` accepts (unless
private addresses are allowed), checked when connecting, after the name is
resolved, so that a hostile DNS answer cannot point a webhook at the
loopback or a private network.
"""

from __future__ import annotations

from typing import Any

from attrs import frozen
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.error import DNSLookupError
from twisted.internet.interfaces import (
    IHostResolution,
    IProtocol,
    IProtocolFactory,
    IResolutionReceiver,
    IStreamClientEndpoint,
)
from twisted.python.failure import Failure
from twisted.web.client import URI, Agent, HTTPConnectionPool
from twisted.web.error import SchemeNotSupported
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from realtimed.webhooks.policy import address_refusal


class UnsafeAddress(Exception):
    """
    A webhook's host resolves to an address deliveries may not reach.
    """


@implementer(IResolutionReceiver)
class _Addresses:
    """
    Collects the addresses of one name resolution.
    """

    def __init__(self) -> None:
        self.addresses: list[Any] = []
        self.done: Deferred[list[Any]] = Deferred()

    def resolutionBegan(self, resolution: IHostResolution) -> None:
        pass

    def addressResolved(self, address: Any) -> None:
        self.addresses.append(address)

    def resolutionComplete(self) -> None:
        self.done.callback(self.addresses)


@implementer(IStreamClientEndpoint)
@frozen
class CheckedEndpoint:
    """
    Connects to a host by name, but only after every address the name
    resolves to has passed `address_refusal` (unless private addresses are
    allowed), and then to one of those very addresses, so a second DNS
    answer cannot redirect the connection.

    @ivar tls_hostname: For https, the name to verify the certificate
        against; C{None} for plain http.
    @ivar trust_root: For https, the certificate authorities to trust;
        C{None} for the platform's.
    """

    reactor: Any
    host: str
    port: int
    tls_hostname: str | None
    allow_private: bool
    connect_timeout: float
    trust_root: Any = None

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        receiver = _Addresses()
        self.reactor.nameResolver.resolveHostName(receiver, self.host, self.port)
        d: Deferred[Any] = receiver.done
        d.addCallback(self._connect_checked, factory)
        return d

    def _connect_checked(
        self, addresses: list[Any], factory: IProtocolFactory
    ) -> Deferred[IProtocol]:
        if not addresses:
            raise DNSLookupError(f"{self.host} has no address")
        if not self.allow_private:
            for address in addresses:
                reason = address_refusal(address.host)
                if reason is not None:
                    raise UnsafeAddress(f"{self.host} resolves to {address.host}: {reason}")
        return self._try(list(addresses), factory, None)

    def _try(
        self, addresses: list[Any], factory: IProtocolFactory, last: Failure | None
    ) -> Deferred[IProtocol]:
        if not addresses:
            assert last is not None
            return fail(last)
        address = addresses.pop(0)
        endpoint: Any
        if address.type == "TCP6":
            endpoint = TCP6ClientEndpoint(
                self.reactor, address.host, self.port, timeout=self.connect_timeout
            )
        else:
            endpoint = TCP4ClientEndpoint(
                self.reactor, address.host, self.port, timeout=self.connect_timeout
            )
        endpoint = _NoDelay(endpoint)
        if self.tls_hostname is not None:
            from twisted.internet.ssl import optionsForClientTLS

            endpoint = wrapClientTLS(
                optionsForClientTLS(self.tls_hostname, trustRoot=self.trust_root), endpoint
            )
        d = endpoint.connect(factory)
        d.addErrback(lambda f: self._try(addresses, factory, f))
        return d


@implementer(IStreamClientEndpoint)
@frozen
class _NoDelay:
    """
    Turns Nagle's algorithm off on the connections of a TCP endpoint.  A
    request goes out in several writes (head, then body); with Nagle on,
    the body waits for the receiver to acknowledge the head, which a
    delayed ACK holds back for tens of milliseconds.
    """

    endpoint: Any

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        d: Deferred[Any] = self.endpoint.connect(factory)
        d.addCallback(_no_delay)
        return d


def _no_delay(protocol: Any) -> Any:
    transport = getattr(protocol, "transport", None)
    if transport is not None and hasattr(transport, "setTcpNoDelay"):
        transport.setTcpNoDelay(True)
    return protocol


@implementer(IAgentEndpointFactory)
@frozen
class CheckedEndpointFactory:
    """
    An agent's endpoints for http and https URLs, as `CheckedEndpoint`s.
    """

    reactor: Any
    allow_private: bool
    connect_timeout: float = 10.0
    trust_root: Any = None

    def endpointForURI(self, uri: URI) -> Any:
        scheme = uri.scheme.decode("ascii", "replace")
        if scheme not in ("http", "https"):
            raise SchemeNotSupported(f"the {scheme} scheme is not called")
        host = uri.host.decode("ascii", "replace").strip("[]")
        return CheckedEndpoint(
            self.reactor,
            host,
            uri.port,
            host if scheme == "https" else None,
            self.allow_private,
            self.connect_timeout,
            self.trust_root,
        )


def webhook_http_client(
    reactor: Any,
    allow_private: bool = False,
    per_host: int = 8,
    connect_timeout: float = 10.0,
    trust_root: Any = None,
) -> tuple[Any, HTTPConnectionPool]:
    """
    A treq client for webhook deliveries: persistent connections (up to
    C{per_host} kept per receiver), made only to checked addresses;
    https certificates verified against C{trust_root} (an
    C{IOpenSSLTrustRoot}, by default the platform's authorities).

    @return: The client, and its connection pool (close its cached
        connections when done).
    """
    import treq.client

    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = per_host
    # Idle connections are dropped before most servers' keep-alive timeouts
    # would drop them under a request.
    pool.cachedConnectionTimeout = 30
    pool.retryAutomatically = False
    agent = Agent.usingEndpointFactory(
        reactor,
        CheckedEndpointFactory(reactor, allow_private, connect_timeout, trust_root),
        pool=pool,
    )
    return treq.client.HTTPClient(agent), pool
