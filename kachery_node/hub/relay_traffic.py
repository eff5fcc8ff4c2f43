"""What the embedded relay carried per channel since the hub started, for ``kachery hub status``.

Counted per publish: one message in (its ``data`` bytes) and, fanned out to ``n`` subscribers,
``n`` messages out (``n`` times the bytes; the envelope the relay adds is not counted). Kept in
memory only: the figures start at zero with the hub.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass


@dataclass
class ChannelTraffic:
    """One channel's relay traffic since the hub started."""

    messages_in: int = 0
    bytes_in: int = 0
    messages_out: int = 0
    bytes_out: int = 0
    messages_in_direct: int = 0  # of messages_in: read off the socket by the relay itself

    def to_json(self) -> dict[str, int]:
        return asdict(self)


class RelayTraffic:
    """Counters per channel (bounded by the number of channels that published anything)."""

    def __init__(self) -> None:
        self.started_ms = int(time.time() * 1000)
        self.channels: dict[str, ChannelTraffic] = {}

    def count(self, channel: str, size: int, delivered: int, *, direct: bool = False) -> None:
        """A message of ``size`` bytes was published on ``channel`` and sent to ``delivered``
        subscribers; ``direct``: the relay read it off the socket itself (hub/direct_receive.py)."""
        t = self.channels.get(channel)
        if t is None:
            t = self.channels[channel] = ChannelTraffic()
        t.messages_in += 1
        t.bytes_in += size
        t.messages_out += delivered
        t.bytes_out += delivered * size
        if direct:
            t.messages_in_direct += 1

    def of(self, channel: str) -> ChannelTraffic:
        return self.channels.get(channel) or ChannelTraffic()

    def forget(self, channel: str) -> None:
        """A deleted channel's figures go (a new channel of that name starts at zero)."""
        self.channels.pop(channel, None)
