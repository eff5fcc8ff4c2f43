"""``kachery hub serve``: run the hub (API, web UI, relay, bucket) in one trio process.

Once bound, the hub writes ``<hub dir>/hub.json`` (``url``, ``hub_id``, ``pid``) and prints one
line ``kachery hub <hub_id> listening at <url>`` on stdout, so scripts and tests can start it on
port 0 and find it. SIGINT/SIGTERM shut it down cleanly.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path

import hypercorn.trio.tcp_server
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from .app import Hub, HubSettings, create_app
from .state import HubState

log = logging.getLogger("kachery.hub")

# Hypercorn reads sockets 64 KiB at a time; each read becomes an ASGI event. Bucket uploads of
# hundreds of MB go ~2x faster with 1 MiB reads (bench/bench_relay.py), at no cost to small requests.
hypercorn.trio.tcp_server.MAX_RECV = 1 << 20


def _setup_logging(hub_dir: Path) -> None:
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger("kachery")
    root.setLevel(logging.INFO)
    for handler in (logging.StreamHandler(sys.stderr), logging.FileHandler(hub_dir / "hub.log")):
        handler.setFormatter(fmt)
        root.addHandler(handler)


async def serve_hub(hub_dir: Path, host: str = "127.0.0.1", port: int = 8080,
                    public_url: str | None = None, settings: HubSettings | None = None,
                    *, task_status: trio.TaskStatus[Hub] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve until cancelled (or SIGINT/SIGTERM)."""
    state = HubState(hub_dir)
    hub = Hub(state, settings)
    app = create_app(hub)
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("kachery.hub.http")
    config.websocket_max_message_size = hub.settings.relay.max_frame_bytes * 2
    config.keep_alive_timeout = 75
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
            log.info("hub %s listening at %s (dir %s)", state.hub_id, hub.public_url, hub_dir)
            print(f"kachery hub {state.hub_id} listening at {hub.public_url}", flush=True)
            task_status.started(hub)
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    log.info("shutting down")
                    shutdown.set()
                    hub.revocations.close()
                    break
    finally:
        state.close()


def run_hub(hub_dir: Path, host: str, port: int, public_url: str | None, settings: HubSettings) -> None:
    hub_dir.mkdir(parents=True, exist_ok=True)
    _setup_logging(hub_dir)
    trio.run(serve_hub, hub_dir, host, port, public_url, settings)
