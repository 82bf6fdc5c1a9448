"""
What one socket may ask of realtime channels: how many subscriptions it
holds, how fast it publishes, how many requests it leaves waiting for an
answer.  A socket past a limit has its request refused with a code that
says so; nothing else slows down.

Pure code: the time is passed in.
"""

from __future__ import annotations

from typing import Final

from attrs import define, field, frozen

#: Requests one socket may have waiting for an answer (subscribes being
#: decided, publishes being stored); more are refused, never queued.
MAX_PENDING: Final = 256


@frozen
class Limits:
    """
    The limits every socket is held to; C{0} turns a limit off.

    @ivar max_subscriptions: Subscriptions one socket may hold.
    @ivar max_publish_rate: Publishes per second, in bursts of up to twice
        as many.
    @ivar max_pending: Requests waiting for an answer.
    """

    max_subscriptions: int = 100
    max_publish_rate: float = 100.0
    max_pending: int = MAX_PENDING

    def publish_bucket(self, now: float) -> TokenBucket | None:
        """
        A full bucket for one socket's publishes, or C{None} without a
        rate limit.
        """
        if not self.max_publish_rate:
            return None
        burst = 2 * self.max_publish_rate
        return TokenBucket(self.max_publish_rate, burst, burst, now)


@define
class TokenBucket:
    """
    Tokens come back at C{rate} per second up to C{capacity}; each action
    takes one.
    """

    rate: float
    capacity: float
    _tokens: float = field(alias="tokens")
    _updated: float = field(alias="updated")

    def take(self, now: float) -> bool:
        """
        Take a token at C{now}, if there is one.
        """
        elapsed = now - self._updated
        if elapsed > 0:
            self._tokens = min(self.capacity, self._tokens + elapsed * self.rate)
            self._updated = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False
