"""A small kachery network of real processes: one hub, and nodes with daemons, joined to a channel.

The channel's backends are a parameter: the shared end-to-end suite (:data:`SHARED_SUITE`) runs
once per backend combination in :data:`BACKEND_COMBINATIONS` (embedded relay and bucket, NATS,
Google Cloud Storage through its emulator, Ably through tests/ably_fake_server.py), the same
test functions each time. Other tests get the embedded default. The stand-ins (tests/standins.py)
start once per session; each lab gets its own bucket.
"""

from __future__ import annotations

import itertools
import time

import httpx
import pytest

from tests.hub.conftest import HubProcess
from tests.nodes import TestNode

ALL_ROLES = ["request-files", "provide-files", "request-feeds", "provide-feeds",
             "request-tasks", "provide-tasks"]


class Lab:
    """A hub, a channel owned by the first node's user, and member nodes."""

    def __init__(self, root, hub: HubProcess, channel: str = "lab", create_args: tuple[str, ...] = (),
                 backends: str = "embedded+embedded") -> None:
        self.root, self.hub, self.channel = root, hub, channel
        self.create_args = create_args  # `kachery channel create` options choosing the backends
        self.backends = backends
        self.nodes: dict[str, TestNode] = {}
        self.owner: TestNode | None = None

    def add_node(self, label: str, roles: list[str], *, grant: list[str] | None = None,
                 start: bool = True) -> TestNode:
        node = TestNode(self.root, label)
        node.env["KACHERY_HUB_URL"] = self.hub.url
        if self.owner is None:
            self.owner = node
            node.run("channel", "create", self.channel, *self.create_args)
        node.run("node", "join", self.channel, "--roles", ",".join(roles))
        granted = roles if grant is None else grant
        if granted:
            self.owner.run("channel", "grant", self.channel, node.node_id, *granted)
        self.nodes[label] = node
        if start:
            node.start()
            self.wait_connected(node)
        return node

    def wait_connected(self, node: TestNode, timeout: float = 20) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            channels = node.client.status()["channels"]
            if channels and all(ch["state"] == "connected" for ch in channels):
                return channels[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"{node.label} did not connect: {channels}\n{node.log()[-3000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()


# The shared end-to-end suite: module -> the backend combinations ("<pub-sub>+<bucket>") its `lab` /
# `make_lab` tests run against. All but the default are marked `backends` (-m "not backends" skips
# them). Permission and fault tests reach into the embedded bucket's files to tamper with them, so
# they vary the pub-sub backend only, and only with NATS (the one with other delivery semantics; all
# of them also pass with Ably, ~2.5 min more): CI time. The GCS bucket's own refusals are in
# tests/cloud/test_gcs.py, Ably's in tests/cloud/test_ably.py.
ALL_COMBINATIONS = ["embedded+embedded", "nats+embedded", "embedded+gcs", "nats+gcs", "ably+embedded"]
PUBSUB_COMBINATIONS = ["embedded+embedded", "nats+embedded"]
SHARED_SUITE = {
    "test_live_feeds": ALL_COMBINATIONS,
    "test_files": ALL_COMBINATIONS,
    "test_python_api": ALL_COMBINATIONS,
    "test_permissions": PUBSUB_COMBINATIONS,
    "test_faults": PUBSUB_COMBINATIONS,
}


def pytest_generate_tests(metafunc):
    module = metafunc.module.__name__.rsplit(".", 1)[-1]
    uses_lab = "lab" in metafunc.fixturenames or "make_lab" in metafunc.fixturenames
    chosen = any("lab_backends" in str(m.args[0]) for m in metafunc.definition.iter_markers("parametrize"))
    if uses_lab and module in SHARED_SUITE and not chosen:  # a test may choose its own combinations
        params = [pytest.param(c, id=c, marks=() if c == "embedded+embedded" else pytest.mark.backends)
                  for c in SHARED_SUITE[module]]
        metafunc.parametrize("lab_backends", params, indirect=True)


@pytest.fixture
def lab_backends(request) -> str:
    return getattr(request, "param", "embedded+embedded")


@pytest.fixture(scope="session")
def nats_servers(tmp_path_factory):
    from tests.standins import NatsCluster

    cluster = NatsCluster(tmp_path_factory.mktemp("nats"))
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory):
    from tests.standins import GcsEmulator

    emulator = GcsEmulator(tmp_path_factory.mktemp("gcs"))
    yield emulator
    emulator.stop()


@pytest.fixture(scope="session")
def ably_server(tmp_path_factory):
    from tests.standins import AblyFake

    server = AblyFake(tmp_path_factory.mktemp("ably"))
    yield server
    server.stop()


_buckets = itertools.count()


def backend_args(request, backends: str, secrets_dir) -> list[str]:
    """`kachery channel create` options for a backend combination, starting its stand-ins."""
    from tests.standins import fake_service_account

    pubsub, bucket = backends.split("+")
    secrets_dir.mkdir(parents=True, exist_ok=True)
    args: list[str] = []
    if pubsub == "nats":
        servers = request.getfixturevalue("nats_servers")
        seed = servers.seed_file(secrets_dir / "seed")
        args += ["--pubsub", servers.url(), "--nats-account-seed", str(seed)]
    elif pubsub == "ably":
        server = request.getfixturevalue("ably_server")
        args += ["--pubsub", "ably", "--ably-endpoint", server.endpoint, "--ably-rest-url", server.rest_url,
                 "--ably-key-file", str(server.key_file(secrets_dir / "ably.key"))]
    if bucket == "gcs":
        emulator = request.getfixturevalue("gcs_emulator")
        name = f"lab-{next(_buckets)}"  # a fresh bucket per lab: nothing left from other tests
        resp = httpx.post(f"{emulator.endpoint}/storage/v1/b", params={"project": "test"},
                          json={"name": name}, timeout=10)
        assert resp.status_code == 200, resp.text
        fake_service_account(secrets_dir / "gcs.json")
        args += ["--bucket", f"gcs://{name}", "--gcs-endpoint", emulator.endpoint,
                 "--gcs-key-file", str(secrets_dir / "gcs.json")]
    return args


@pytest.fixture
def make_lab(tmp_path, request, lab_backends):
    """``make_lab(*hub_args)``: a Lab whose hub runs ``kachery hub serve <hub_args>`` (e.g.
    ``"--token-ttl", "5"``; ``"--port", "N"`` keeps the port across ``lab.hub.restart()``)."""
    labs: list[Lab] = []

    def make(*hub_args: str) -> Lab:
        assert not labs, "one lab per test"
        args = backend_args(request, lab_backends, tmp_path / "backend-secrets")
        labs.append(Lab(tmp_path, HubProcess(tmp_path / "hub", *hub_args), create_args=tuple(args),
                        backends=lab_backends))
        return labs[0]

    yield make
    for lab in labs:
        lab.stop()
        lab.hub.stop()


@pytest.fixture
def lab(make_lab):
    return make_lab()
