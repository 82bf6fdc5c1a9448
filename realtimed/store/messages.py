"""
What the store hands over for each stored message.
"""

from __future__ import annotations

from typing import Any

from attrs import field, frozen

from realtimed.store.positions import Position


def _text_or_none(value: object) -> str | None:
    return None if value is None else str(value)


@frozen
class StoredMessage:
    """
    A message as committed, on its way to this process's sockets and, if
    its channel has webhooks, to the webhook service.

    @ivar body: The message as sockets and webhooks receive it:
        C{{channel, event, messageId, senderType, senderId, payload,
        createdAt}} (``realtime.message_json``).
    @ivar channel_id: The channel row that owns its name (C{None} once that
        row is gone).
    @ivar webhooks: How many webhook deliveries its transaction queued.
    @ivar seq: Its place among the messages of its transaction, when known.
    @ivar position: Where it stands in the stream the listener hands over
        (see `realtimed.store.positions`), once handed over.
    """

    body: dict[str, Any]
    channel_id: str | None = field(converter=_text_or_none)
    webhooks: int = 0
    seq: int | None = field(default=None, eq=False)
    position: Position | None = field(default=None, eq=False)

    @property
    def message_id(self) -> str:
        return str(self.body["messageId"])

    @property
    def channel(self) -> str:
        return str(self.body["channel"])

    @property
    def event(self) -> str:
        return str(self.body["event"])
