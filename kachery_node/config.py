"""The node's identity and settings: ``<storage>/config.toml`` plus the key files.

``config.toml`` (written by ``kachery init``)::

    label = "lab-workstation"
    node_id = "<64 hex: public half of <storage>/node.key>"
    owner = "<64 hex: public half of $KACHERY_USER_DIR/user.key>"
    max_cache_size_gib = 100      # optional; decimal GB (10**9 bytes) as the original's maxCacheSizeGiB

Other parts of kachery_node read the identity through :func:`load_node_config`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import tomli_w

from . import identity
from .errors import ConfigError, NotInitializedError
from .storage.private_files import make_private_dirs

CONFIG_FILENAME = "config.toml"
MAX_LABEL_LENGTH = 20  # as the original's NodeLabel


def default_storage_dir() -> Path:
    """``$KACHERY_STORAGE_DIR``, or ``~/kachery-storage`` as in the original."""
    return Path(os.environ.get("KACHERY_STORAGE_DIR") or Path.home() / "kachery-storage")


@dataclass(frozen=True)
class NodeConfig:
    """What ``config.toml`` says, with the storage directory it came from."""

    storage_dir: Path
    label: str
    node_id: str
    owner: str
    max_cache_size_gib: float | None = None

    @property
    def max_cache_bytes(self) -> int | None:
        """The cache cap in bytes (decimal GB, like the original), or None for no cap."""
        if self.max_cache_size_gib is None:
            return None
        return int(self.max_cache_size_gib * 1e9)


def read_settings(storage_dir: Path) -> dict:
    """The raw TOML table, or {} if there is no config yet."""
    import tomllib  # here, as socket below: `kachery --help` loads no config (~5 ms of imports)

    path = Path(storage_dir) / CONFIG_FILENAME
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        return {}
    except (tomllib.TOMLDecodeError, OSError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc


def _cache_cap(settings: dict, path: Path) -> float | None:
    cap = settings.get("max_cache_size_gib")
    if cap is None:
        return None
    if isinstance(cap, bool) or not isinstance(cap, int | float) or cap <= 0:
        raise ConfigError(f"{path}: max_cache_size_gib must be a positive number, got {cap!r}")
    return float(cap)


def max_cache_bytes(storage_dir: Path) -> int | None:
    """The cache cap in bytes, readable before ``kachery init`` (None means no cap)."""
    cap = _cache_cap(read_settings(storage_dir), Path(storage_dir) / CONFIG_FILENAME)
    return None if cap is None else int(cap * 1e9)


def load_node_config(storage_dir: Path | str | None = None) -> NodeConfig:
    """Read the node's config; raise :class:`NotInitializedError` if ``kachery init`` never ran.

    Example::

        cfg = load_node_config("/data/kachery-storage")
        cfg.node_id, cfg.owner, cfg.label, cfg.max_cache_bytes
    """
    storage_dir = Path(storage_dir) if storage_dir is not None else default_storage_dir()
    path = storage_dir / CONFIG_FILENAME
    settings = read_settings(storage_dir)
    if not settings:
        raise NotInitializedError(
            f"{storage_dir} is not an initialized kachery storage (no {CONFIG_FILENAME}); "
            f"run `kachery init` (with KACHERY_STORAGE_DIR={storage_dir})"
        )
    try:
        label, node_id, owner = settings["label"], settings["node_id"], settings["owner"]
    except KeyError as exc:
        raise ConfigError(f"{path} lacks {exc.args[0]!r}; run `kachery init` to repair it") from exc
    return NodeConfig(storage_dir, str(label), str(node_id), str(owner),
                      _cache_cap(settings, path))


def write_settings(storage_dir: Path, settings: dict) -> None:
    """Replace config.toml atomically."""
    path = Path(storage_dir) / CONFIG_FILENAME
    tmp = path.with_suffix(".toml.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # the storage is private
    with os.fdopen(fd, "wb") as f:
        f.write(tomli_w.dumps(settings).encode())
    os.replace(tmp, path)


def _adopt_original_node_key(storage_dir: Path, created: list[str]) -> None:
    """Write node.key from the original's private.pem when there is no node.key yet, so the node
    keeps its ID. Both formats hold the same Ed25519 seed; the key signs nothing here in the
    original's formats (ours sign with a context prefix, the original signed SHA-1 digests)."""
    from .legacy.storage_dir import PRIVATE_PEM, node_seed_from_private_pem

    node_path = storage_dir / identity.NODE_KEY_FILENAME
    pem = storage_dir / PRIVATE_PEM
    if node_path.exists() or not pem.exists():
        return
    keypair = identity.Keypair.from_seed_hex(node_seed_from_private_pem(pem).hex())
    try:
        identity.write_key_file(node_path, keypair)
    except FileExistsError:
        return  # another process initialised it meanwhile
    created.append(f"node key {node_path} from the original kachery's {PRIVATE_PEM} (node ID "
                   f"{keypair.public_hex} kept; {PRIVATE_PEM} left as it is)")


def init_node(
    storage_dir: Path | str | None = None,
    *,
    label: str | None = None,
    user_dir: Path | str | None = None,
    max_cache_size_gib: float | None = None,
) -> tuple[NodeConfig, list[str]]:
    """Create (or complete) a node: node key, user key if missing, config.toml.

    Idempotent: existing keys are kept; ``label`` and ``max_cache_size_gib`` update the config
    when given. Returns the config and a list of what was created, for the CLI to report.

    In a storage directory of the original kachery, the node key is taken from its
    ``private.pem`` (so the node keeps its ID; the file is left as it is) and the cache cap from
    its ``kachery.yaml`` (spec/legacy.md §2).
    """
    storage_dir = Path(storage_dir) if storage_dir is not None else default_storage_dir()
    from .local_filesystem import require_local_storage  # imports kachery_feeds: only when used

    require_local_storage(storage_dir)  # its databases will be SQLite: not on NFS & co.
    make_private_dirs(storage_dir)  # 0700: nobody else reads a person's storage
    created: list[str] = []
    _adopt_original_node_key(storage_dir, created)
    try:
        node_key, new = identity.load_or_create_key(storage_dir / identity.NODE_KEY_FILENAME)
        if new:
            created.append(f"node key {storage_dir / identity.NODE_KEY_FILENAME}")
        user_path = Path(user_dir or identity.default_user_dir()) / identity.USER_KEY_FILENAME
        user_key, new = identity.load_or_create_key(user_path)
        if new:
            created.append(f"user key {user_path}")
    except identity.IdentityError as exc:
        raise ConfigError(str(exc)) from exc
    settings = read_settings(storage_dir)
    if label is not None:
        if not label or len(label) > MAX_LABEL_LENGTH:
            raise ConfigError(f"a node label has 1 to {MAX_LABEL_LENGTH} characters")
        settings["label"] = label
    import socket

    settings.setdefault("label", socket.gethostname()[:MAX_LABEL_LENGTH] or "kachery-node")
    if settings.get("node_id") != node_key.public_hex or settings.get("owner") != user_key.public_hex:
        if "node_id" not in settings:
            created.append(f"config {storage_dir / CONFIG_FILENAME}")
        settings["node_id"] = node_key.public_hex
        settings["owner"] = user_key.public_hex
    if max_cache_size_gib is not None:
        settings["max_cache_size_gib"] = max_cache_size_gib
    elif "max_cache_size_gib" not in settings:
        from .legacy.storage_dir import original_cache_cap_gib

        original_cap = original_cache_cap_gib(storage_dir)
        if original_cap is not None:
            settings["max_cache_size_gib"] = original_cap
            created.append(f"cache cap max_cache_size_gib = {original_cap:g} in {CONFIG_FILENAME}, "
                           "from the original's kachery.yaml")
    _cache_cap(settings, storage_dir / CONFIG_FILENAME)
    write_settings(storage_dir, settings)
    return load_node_config(storage_dir), created
