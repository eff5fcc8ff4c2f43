"""Channel names, as the original's rules: 3-40 characters, ``.``-separated segments of
``[A-Za-z0-9_-]``. Unlike the original (whose 40-character pub-sub channel limit broke names
longer than 27 characters, original-protocol §10.13), every valid name works everywhere here.
"""

from __future__ import annotations

import re

from ..errors import InvalidChannelNameError

MIN_CHANNEL_NAME = 3
MAX_CHANNEL_NAME = 40
_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")


def validate_channel_name(name: object) -> str:
    """Return ``name`` if it is a valid channel name, else raise :class:`InvalidChannelNameError`.

    >>> validate_channel_name("lab.ephys-2024")
    'lab.ephys-2024'
    """
    if not isinstance(name, str):
        raise InvalidChannelNameError("channel name must be a string")
    if not MIN_CHANNEL_NAME <= len(name) <= MAX_CHANNEL_NAME:
        raise InvalidChannelNameError(
            f"channel name must be {MIN_CHANNEL_NAME}-{MAX_CHANNEL_NAME} characters, got {len(name)}")
    if not all(_SEGMENT.fullmatch(seg) for seg in name.split(".")):
        raise InvalidChannelNameError(
            f"channel name {name!r} must be dot-separated segments of letters, digits, '_' and '-'")
    return name
