"""The daemon process: a trio program serving the local API and, later, its channels.

Shape (structured concurrency): one root nursery holds the store-change broadcaster, the
store's log upkeep (store_upkeep.py), the HTTP server and one task per joined channel;
SIGINT/SIGTERM or ``POST /api/stop`` set the shutdown event, the server drains, and cancelling
the root stops everything else.

Only one daemon may serve a storage directory: it holds an exclusive ``flock`` on
``<storage>/daemon.lock`` for its whole life, and writes ``<storage>/daemon.json`` (pid, host,
port) so that clients find it on a non-default port.

A daemon whose storage directory is deleted (or replaced, or its daemon.json removed) stops on
its own within :data:`STORAGE_CHECK_SECONDS`: nobody can reach it any more (clients find it
through daemon.json), and it would otherwise keep serving channels from files that are gone.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
from pathlib import Path

import hypercorn.config
import hypercorn.trio
import trio

from ..config import load_node_config, read_settings
from ..errors import DaemonError
from ..loop_stalls import install_from_environment as install_loop_stall_monitor
from ..server_tuning import tune_for_serving
from ..storage.node_storage import Storage
from .daemon_log import DaemonLogFile, RepeatLimit
from .legacy_api import write_client_files
from .local_api import BrowserPolicy, DaemonContext, build_app
from .local_tokens import load_or_create_tokens
from .node_runtime import NodeRuntime
from .paths import DEFAULT_PORT, INFO_FILE, StorageHold, configured_port
from .store_changes import ChangeBroadcaster
from .store_upkeep import keep_wal_short

log = logging.getLogger("kachery.daemon")

STORAGE_CHECK_SECONDS = 2.0  # how often the daemon checks that its storage directory is still there

def cors_origins(storage_dir: Path) -> list[str]:
    """The CORS allow-list: ``[daemon] cors_origins`` in config.toml plus
    ``$KACHERY_CORS_ORIGINS`` (comma-separated)."""
    settings = read_settings(storage_dir).get("daemon", {})
    origins = list(settings.get("cors_origins", []))
    env = os.environ.get("KACHERY_CORS_ORIGINS", "")
    origins += [o.strip() for o in env.split(",") if o.strip()]
    return origins


def browser_policy(storage_dir: Path) -> BrowserPolicy:
    """The web-safe limits for pages: ``[daemon] browser_max_fetch_bytes`` and
    ``browser_max_follows`` in config.toml (defaults in :class:`BrowserPolicy`)."""
    settings = read_settings(storage_dir).get("daemon", {})
    values = {}
    for name, field_name in (("browser_max_fetch_bytes", "max_fetch_bytes"),
                             ("browser_max_follows", "max_follows")):
        if name in settings:
            value = settings[name]
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise DaemonError(f"[daemon] {name} in config.toml must be a non-negative integer, "
                                  f"not {value!r}")
            values[field_name] = value
    return BrowserPolicy(**values)


async def serve(storage_dir: Path, host: str = "127.0.0.1", port: int | None = None) -> None:
    """Run the daemon until it is told to stop."""
    storage_dir = Path(storage_dir)
    if host not in ("127.0.0.1", "::1", "localhost"):
        raise DaemonError(f"the daemon listens on loopback only, not on {host!r}")
    config = load_node_config(storage_dir)  # raises NotInitializedError before `kachery init`
    install_loop_stall_monitor(f"daemon {config.label}")  # only with $KACHERY_LOOP_STALLS set
    if port is None:
        port = configured_port()
    # A port the person chose is insisted on; otherwise 20431 (the original's, which
    # kachery-client 1.2.0 looks for) if free, else any free loopback port: a second storage on
    # the machine (another person, another node) gets its own daemon instead of an error.
    choices = [port] if port is not None else [DEFAULT_PORT, 0]
    lock = StorageHold(storage_dir)
    storage = Storage(storage_dir)
    info_path = storage_dir / INFO_FILE
    try:
        client_token, browser_token = load_or_create_tokens(storage_dir)
        ctx = DaemonContext(
            storage=storage,
            config=config,
            client_token=client_token,
            browser_token=browser_token,
            cors_origins=cors_origins(storage_dir),
            browser_policy=browser_policy(storage_dir),
            changes=ChangeBroadcaster(storage.feeds),
        )
        # For kachery-client 1.2.0 (legacy_api.py); after the storage opened without error.
        ctx.legacy_auth_code = write_client_files(storage_dir, config.node_id)
        hc = hypercorn.config.Config()
        hc.accesslog = None
        hc.errorlog = logging.getLogger("kachery.http")
        hc.graceful_timeout = 1.0
        hc.keep_alive_timeout = 30
        server_done = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ctx.changes.run)
            nursery.start_soon(keep_wal_short, storage.feeds, ctx.changes)
            ctx.node = NodeRuntime(storage, config, ctx.changes)
            await nursery.start(ctx.node.run)
            nursery.start_soon(_watch_signals, ctx)
            sock = _bind(host, choices)
            port = sock.getsockname()[1]
            hc.bind = [f"fd://{sock.detach()}"]  # hypercorn owns the socket from here
            binds = await nursery.start(_serve_http, build_app(ctx), hc, ctx, server_done)
            _write_info(info_path, {"pid": os.getpid(), "host": host, "port": port,
                                    "node_id": config.node_id, "storage_dir": str(storage_dir.resolve())})
            log.info(
                "kachery daemon for node %s (%s) listening on %s",
                config.node_id[:12],
                config.label,
                ", ".join(binds),
            )
            nursery.start_soon(_watch_storage, ctx, storage_dir, info_path)
            tune_for_serving()
            await ctx.shutdown.wait()
            log.info("shutting down")
            with trio.move_on_after(hc.graceful_timeout + 2):
                await server_done.wait()  # open streams get graceful_timeout to finish
            nursery.cancel_scope.cancel()
    finally:
        try:
            if json.loads(info_path.read_text()).get("pid") == os.getpid():
                info_path.unlink()
        except (FileNotFoundError, ValueError):
            pass
        storage.close()
        log.info("stopped")
        lock.release()  # last: a client's stop() returns once it is released (storage_is_held)


def _bind(host: str, choices: list[int]) -> socket.socket:
    """A TCP socket bound to the first of ``choices`` that is free on ``host`` (0: any port).

    Bound here rather than by hypercorn so that "taken" is known at once and the next choice
    tried, without a race between probing a port and binding it."""
    for i, port in enumerate(choices):
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as hypercorn does
        try:
            sock.bind((host, port))
            return sock
        except OSError as exc:
            sock.close()
            if i + 1 < len(choices):
                log.info("port %d is taken (%s): taking a free port instead", port, exc.strerror or exc)
                continue
            raise DaemonError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    raise AssertionError("no port to try")  # choices is never empty


def _write_info(path: Path, info: dict) -> None:
    """Write daemon.json atomically (a client never reads half of it), readable by its owner only."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(info))
    os.replace(tmp, path)


async def _serve_http(
    app, hc, ctx: DaemonContext, done: trio.Event, *, task_status=trio.TASK_STATUS_IGNORED
) -> None:
    try:
        await hypercorn.trio.serve(app, hc, shutdown_trigger=ctx.shutdown.wait, task_status=task_status)
    finally:
        done.set()


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of ``path``, or None if it is gone."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


async def _watch_storage(ctx: DaemonContext, storage_dir: Path, info_path: Path) -> None:
    """Shut down when the storage directory or daemon.json is deleted or replaced."""
    expected = {storage_dir: _identity(storage_dir), info_path: _identity(info_path)}
    while not ctx.shutdown.is_set():
        await trio.sleep(STORAGE_CHECK_SECONDS)
        for path, identity in expected.items():
            if _identity(path) != identity:
                log.warning("%s was deleted or replaced: stopping (this daemon can no longer be "
                            "reached, and its storage is gone)", path)
                ctx.shutdown.set()
                return


async def _watch_signals(ctx: DaemonContext) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s", signal.Signals(signum).name)
            ctx.shutdown.set()
            return


def run(storage_dir: Path, host: str = "127.0.0.1", port: int | None = None,
        log_file: Path | None = None) -> None:
    """Blocking entry point (``kachery node start --foreground``, ``python -m kachery_node.daemon``).

    Logs to stderr, or to ``log_file``, rotated, as the detached daemon does
    (:func:`~kachery_node.daemon_client.start_daemon` passes ``<storage>/daemon.log``); lines
    that repeat are limited either way (:mod:`.daemon_log`)."""
    handler: logging.Handler = logging.StreamHandler() if log_file is None else DaemonLogFile(log_file)
    handler.addFilter(RepeatLimit())
    logging.basicConfig(
        level=os.environ.get("KACHERY_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        handlers=[handler],
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request drowns the log
    trio.run(serve, storage_dir, host, port)
