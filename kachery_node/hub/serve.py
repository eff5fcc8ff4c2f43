"""``kachery hub serve``: run the hub (API, web UI, relay, bucket) in one trio process.

With ``tls=(certificate, key)`` (PEM files; ``--tls-cert``/``--tls-key``) the hub serves HTTPS and
its relay ``wss://`` itself (hypercorn's TLS; the certificate file may hold the chain). Without,
it serves plain HTTP: fine on loopback or behind a TLS proxy, and nodes refuse to send it secrets
from another machine (transport/tls.py).

Once bound, the hub writes ``<hub dir>/hub.json`` (``url``, ``hub_id``, ``pid``) and prints one
line ``kachery hub <hub_id> listening at <url>`` on stdout, so scripts and tests can start it on
port 0 and find it. SIGINT/SIGTERM shut it down cleanly.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import signal
import sys
from pathlib import Path

import hypercorn.trio.run
import hypercorn.trio.tcp_server
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from ..server_tuning import tune_for_serving
from ..transport.tls import is_loopback_host
from . import direct_receive, direct_send
from .app import Hub, HubSettings, create_app
from .http_limits import RequestLimits
from .state import HubState, require_local_hub_dir

log = logging.getLogger("kachery.hub")
FD_RESERVE = 128  # descriptors kept for the hub's own files (SQLite, bucket objects, logs)

# Hypercorn reads sockets 64 KiB at a time; each read becomes an ASGI event. Bucket uploads of
# hundreds of MB go ~2x faster with 1 MiB reads (bench/bench_relay.py), at no cost to small requests.
hypercorn.trio.tcp_server.MAX_RECV = 1 << 20


class _BoundedTCPServer(hypercorn.trio.tcp_server.TCPServer):
    """Hypercorn's connection handler, serving at most ``slots.total_tokens`` connections at once.

    Hypercorn has no such bound, and every accepted connection holds a file descriptor: past the
    process's limit, accept() fails for everyone. A connection over the bound is answered 503 and
    closed at once, so descriptors stay bounded too (slow clients are cut by the timeouts of
    hub/http_limits.py, which frees their slots). Each plain-TCP connection is registered for
    the relay's direct sends (hub/direct_send.py), and its reading loop hands a relay WebSocket's
    frames to the relay itself once the relay took it over (hub/direct_receive.py)."""

    slots: trio.CapacityLimiter | None = None
    direct_receiver: object | None = None  # set when the relay reads this connection's frames itself

    async def _read_data(self) -> None:
        await direct_receive.read_data(self)  # hypercorn's loop, plus the relay's fast path

    async def run(self) -> None:
        slots = type(self).slots
        if slots is None:
            await super().run()
            return
        try:
            slots.acquire_nowait()
        except trio.WouldBlock:
            with trio.move_on_after(1), contextlib.suppress(trio.BrokenResourceError,
                                                            trio.ClosedResourceError):
                await self.stream.send_all(_BUSY)
            await self.stream.aclose()
            return
        key = direct_send.register(self)  # the relay's fan-out may write to this socket
        try:
            await super().run()
        finally:
            direct_send.unregister(key, self)
            slots.release()


_BUSY_BODY = b'{"error": {"code": "busy", "message": "the hub has too many connections; retry later"}}'
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n"
         b"retry-after: 1\r\ncontent-length: %d\r\n\r\n" % len(_BUSY_BODY)) + _BUSY_BODY
hypercorn.trio.run.TCPServer = _BoundedTCPServer  # type: ignore[misc]  # what worker_serve starts per connection


def connection_bound(wanted: int) -> int:
    """``wanted``, lowered to fit the process's file-descriptor limit (less :data:`FD_RESERVE`)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(16, min(wanted, soft - FD_RESERVE))


#: hub.log is rotated at this size, and this many older files are kept (hub.log.1 ... .4): a hub
#: runs for months, and its log must not fill its disk.
LOG_MAX_BYTES = 16 << 20
LOG_BACKUPS = 4


def _setup_logging(hub_dir: Path) -> None:
    import logging.handlers

    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger("kachery")
    root.setLevel(logging.INFO)
    to_file = logging.handlers.RotatingFileHandler(hub_dir / "hub.log", maxBytes=LOG_MAX_BYTES,
                                                   backupCount=LOG_BACKUPS)
    for handler in (logging.StreamHandler(sys.stderr), to_file):
        handler.setFormatter(fmt)
        root.addHandler(handler)


def check_tls_files(cert: Path, key: Path) -> None:
    """Load the certificate and key once, so that a wrong file is a clear error at start
    (:class:`~kachery_node.errors.ConfigError`), not a failure of every connection later."""
    import ssl

    from ..errors import ConfigError

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot serve TLS with --tls-cert {cert} --tls-key {key}: {exc} (both are "
                          "PEM files; the key must match the certificate's first entry)") from exc


async def serve_hub(hub_dir: Path, host: str = "127.0.0.1", port: int = 8080,
                    public_url: str | None = None, settings: HubSettings | None = None,
                    tls: tuple[Path, Path] | None = None,
                    *, task_status: trio.TaskStatus[Hub] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve until cancelled (or SIGINT/SIGTERM); over TLS with ``tls=(cert file, key file)``."""
    state = HubState(hub_dir)
    hub = Hub(state, settings)
    limits = hub.settings.http
    app = RequestLimits(create_app(hub), limits)
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("kachery.hub.http")
    config.websocket_max_message_size = hub.settings.relay.max_frame_bytes * 2
    # Hypercorn's keep-alive timeout runs from a connection's start (or its previous response)
    # until a request's headers are complete: it is the header deadline, and the idle limit.
    config.keep_alive_timeout = limits.header_timeout_s
    if tls is not None:
        check_tls_files(*tls)
        config.certfile, config.keyfile = str(tls[0]), str(tls[1])
        config.ssl_handshake_timeout = limits.header_timeout_s  # a stalled handshake holds a slot too
    max_connections = connection_bound(limits.max_connections)
    _BoundedTCPServer.slots = trio.CapacityLimiter(max_connections)
    shutdown = trio.Event()
    try:
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(lambda task_status: serve(
                app, config, shutdown_trigger=shutdown.wait, task_status=task_status))
            hub.public_url = (public_url or binds[0]).rstrip("/")
            nursery.start_soon(hub.revocations.run)
            info = {"url": hub.public_url, "hub_id": state.hub_id, "pid": os.getpid()}
            tmp = hub_dir / "hub.json.tmp"
            tmp.write_text(json.dumps(info) + "\n")
            os.replace(tmp, hub_dir / "hub.json")
            log.info("hub %s listening at %s (dir %s; at most %d connections)", state.hub_id, hub.public_url,
                     hub_dir, max_connections)
            if tls is None and not is_loopback_host(host) and not hub.public_url.startswith("https:"):
                log.warning("serving plain HTTP on %s: nodes on other machines will refuse to send "
                            "this hub secrets; use --tls-cert/--tls-key, or a TLS proxy and "
                            "--public-url https://…", host)
            print(f"kachery hub {state.hub_id} listening at {hub.public_url}", flush=True)
            task_status.started(hub)
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    log.info("shutting down")
                    shutdown.set()
                    hub.revocations.close()
                    break
    finally:
        hub.close()
        state.close()


def run_hub(hub_dir: Path, host: str, port: int, public_url: str | None, settings: HubSettings,
            tls: tuple[Path, Path] | None = None) -> None:
    require_local_hub_dir(hub_dir)  # before the log file is created there
    if tls is not None:
        check_tls_files(*tls)  # before creating anything
    hub_dir.mkdir(parents=True, exist_ok=True)
    _setup_logging(hub_dir)
    tune_for_serving()  # this process serves only the hub (serve_hub also runs inside tests)
    trio.run(serve_hub, hub_dir, host, port, public_url, settings, tls)
