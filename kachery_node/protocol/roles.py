"""Roles, pub-sub bands and capabilities: the table that decides who may do what on a channel.

Six roles per channel (request/provide × files/feeds/tasks). A node's *effective* roles are the
intersection of what the channel owner granted and what the node's own owner requested. Each
role maps to publishing on one band and subscribing on its partner's (the original's Ably
capability table, original-protocol §4.1). Band names on the pub-sub service keep the original's
form ``<channel>-requestFiles`` so that an Ably backend can use them unchanged; inside signed
node messages a band is named after the role that publishes on it (``request-files``).

:data:`ROLE_BANDS` is the one table; everything else here is derived from it.

Everything here is pure: no I/O, no clocks.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import InvalidPathError, MalformedRequestError, NotAllowedError

# role -> (band it publishes on, band it subscribes to); the only place this rule lives.
ROLE_BANDS: dict[str, tuple[str, str]] = {
    "request-files": ("requestFiles", "provideFiles"),
    "provide-files": ("provideFiles", "requestFiles"),
    "request-feeds": ("requestFeeds", "provideFeeds"),
    "provide-feeds": ("provideFeeds", "requestFeeds"),
    "request-tasks": ("requestTasks", "provideTasks"),
    "provide-tasks": ("provideTasks", "requestTasks"),
}
ROLES: tuple[str, ...] = tuple(ROLE_BANDS)
BANDS: tuple[str, ...] = tuple(pub for pub, _sub in ROLE_BANDS.values())
#: The three flows; a role, and the band named after it, belongs to the flow its name ends with.
FLOWS: tuple[str, ...] = ("files", "feeds", "tasks")
_ROLE_OF_PUBSUB_BAND = {pub: role for role, (pub, _sub) in ROLE_BANDS.items()}
PUBLISH, SUBSCRIBE = "publish", "subscribe"

# Top-level object prefixes in a channel's bucket, and the role that may upload under each.
# (The original handed any registered node upload rights on any channel, §10.2.)
UPLOAD_ROLE_BY_PREFIX: dict[str, str] = {
    "sha1": "provide-files",
    "feeds": "provide-feeds",
    "task_results": "provide-tasks",
}


def pubsub_band(role: str) -> str:
    """The pub-sub band that ``role`` publishes on: ``pubsub_band("request-files") == "requestFiles"``."""
    return ROLE_BANDS[role][0]


def heard_pubsub_band(role: str) -> str:
    """The pub-sub band that ``role`` subscribes to: its partner's."""
    return ROLE_BANDS[role][1]


def role_of_pubsub_band(band: str) -> str:
    """The role publishing on pub-sub band ``band`` (``"requestFiles"`` -> ``"request-files"``),
    which is also the band's name in node messages."""
    try:
        return _ROLE_OF_PUBSUB_BAND[band]
    except KeyError:
        raise MalformedRequestError(f"unknown band {band!r}; bands are: {' '.join(BANDS)}") from None


def partner_role(role: str) -> str:
    """The role whose band ``role`` hears: ``partner_role("request-files") == "provide-files"``."""
    return role_of_pubsub_band(heard_pubsub_band(role))


def flow_of(role: str) -> str:
    """The flow of a role, or of the node-message band named after it: ``"files"``, ``"feeds"``
    or ``"tasks"``."""
    if role not in ROLE_BANDS:
        raise MalformedRequestError(f"unknown role {role!r}; roles are: {' '.join(ROLES)}")
    return role.rsplit("-", 1)[1]


#: Flows in which a node must hear its own messages: a node may request a task that it provides
#: itself, and is answered through the channel like any other requester. A node has no use for
#: its own file requests or feed messages (a pushed range it sent, its own subscription), so it
#: subscribes to those bands without echo where the service allows it (spec/pubsub.md).
FLOWS_HEARING_THEMSELVES: frozenset[str] = frozenset({"tasks"})


def hears_own_messages(role: str) -> bool:
    """Whether a node holding ``role`` needs its own messages on the band that role hears."""
    return flow_of(role) in FLOWS_HEARING_THEMSELVES


def validate_roles(roles: object) -> list[str]:
    """Return the roles sorted in table order; raise for unknown names or a non-list."""
    if not isinstance(roles, list | tuple | set | frozenset) or not all(isinstance(r, str) for r in roles):
        raise MalformedRequestError("roles must be a list of role names")
    unknown = sorted(set(roles) - set(ROLES))
    if unknown:
        raise MalformedRequestError(f"unknown role(s) {', '.join(unknown)}; roles are: {' '.join(ROLES)}")
    return [r for r in ROLES if r in roles]


def effective_roles(granted: Iterable[str], requested: Iterable[str]) -> list[str]:
    """Roles the owner granted *and* the node's owner requested, in table order."""
    g, r = set(granted), set(requested)
    return [role for role in ROLES if role in g and role in r]


def band_name(channel: str, band: str) -> str:
    """The full pub-sub band name, e.g. ``band_name("lab", "requestFiles") == "lab-requestFiles"``."""
    if band not in BANDS:
        raise MalformedRequestError(f"unknown band {band!r}; bands are: {' '.join(BANDS)}")
    return f"{channel}-{band}"


def split_band_name(full: str, channel: str) -> str:
    """The short band of ``<channel>-<band>``; raise if it is not one of the channel's bands."""
    prefix = channel + "-"
    if not isinstance(full, str) or not full.startswith(prefix) or full[len(prefix):] not in BANDS:
        raise MalformedRequestError(f"{full!r} is not a band of channel {channel!r}")
    return full[len(prefix):]


def capabilities(channel: str, roles: Iterable[str]) -> dict[str, list[str]]:
    """The pub-sub capability object for ``roles``: ``{full band name: ["publish", "subscribe"]}``.

    Bands with no operation are left out (as in Ably capabilities).

    >>> capabilities("lab", ["request-files"])
    {'lab-requestFiles': ['publish'], 'lab-provideFiles': ['subscribe']}
    """
    ops: dict[str, set[str]] = {}
    for role in validate_roles(list(roles)):
        pub, sub = ROLE_BANDS[role]
        ops.setdefault(band_name(channel, pub), set()).add(PUBLISH)
        ops.setdefault(band_name(channel, sub), set()).add(SUBSCRIBE)
    return {band: [op for op in (PUBLISH, SUBSCRIBE) if op in s] for band, s in ops.items()}


def check_capability(capability: dict[str, list[str]], band: str, op: str) -> None:
    """Raise :class:`~.errors.CapabilityError` unless ``capability`` allows ``op`` on ``band``."""
    from ..errors import CapabilityError

    if op not in capability.get(band, ()):
        raise CapabilityError(f"token does not allow {op} on band {band!r}")


def upload_role(path: str) -> str:
    """The role needed to upload an object at ``path`` (relative to the channel's prefix)."""
    top = path.split("/", 1)[0]
    role = UPLOAD_ROLE_BY_PREFIX.get(top)
    if role is None or "/" not in path:
        raise InvalidPathError(
            f"uploads go under {', '.join(p + '/' for p in UPLOAD_ROLE_BY_PREFIX)}; got {path!r}")
    return role


def require_role(effective: Iterable[str], role: str, what: str) -> None:
    """Raise :class:`NotAllowedError` naming the missing role."""
    if role not in set(effective):
        raise NotAllowedError(f"{what} needs the {role} role on this channel")
