"""A small kachery network of real processes: one hub, and nodes with daemons, joined to a channel.

The channel's backends are a parameter: the shared end-to-end suite (:data:`SHARED_SUITE`) runs
once per backend combination in :data:`BACKEND_COMBINATIONS` (embedded relay and bucket, NATS,
Google Cloud Storage through its emulator, S3 through moto's server mode, Ably through
tests/ably_fake_server.py), the same
test functions each time. Other tests get the embedded default. The stand-ins (tests/standins.py)
start once per session; each lab gets its own bucket.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from kachery_node.hub.object_files import object_file
from tests.hub.conftest import HubProcess
from tests.nodes import TestNode

ALL_ROLES = ["request-files", "provide-files", "request-feeds", "provide-feeds",
             "request-tasks", "provide-tasks"]
#: config.toml lines for a node that asks for a file nobody will provide: it gives up after 3
#: unanswered requests of 1 s each instead of the default 3 s each (spec/node-protocol.md, ANSWER).
QUICK_ANSWERS = "\n[daemon.files]\nanswer = 1\n"


@dataclass(frozen=True)
class GcsObject:
    """One object of a gcp-storage-emulator bucket, read and written behind the hub's back (the
    emulator takes unsigned PUTs: what an attacker with write access to a real bucket could do).
    The same methods as the :class:`~pathlib.Path` of an embedded bucket object."""

    endpoint: str
    bucket: str
    key: str

    @property
    def url(self) -> str:
        return f"{self.endpoint}/{self.bucket}/{quote(self.key)}"

    def exists(self) -> bool:
        # The emulator answers HEAD with 501: ask the JSON API for the object's metadata.
        resp = httpx.get(f"{self.endpoint}/storage/v1/b/{self.bucket}/o/{quote(self.key, safe='')}",
                         timeout=10)
        assert resp.status_code in (200, 404), resp
        return resp.status_code == 200

    def read_bytes(self) -> bytes:
        resp = httpx.get(self.url, timeout=30)
        resp.raise_for_status()
        return resp.content

    def write_bytes(self, data: bytes) -> None:
        httpx.put(self.url, content=data, timeout=30).raise_for_status()


@dataclass(frozen=True)
class S3Object:
    """One object of a moto S3 bucket, read and written behind the hub's back (with a URL
    presigned with the channel's key: what someone holding it could do); the same methods as
    :class:`GcsObject`."""

    endpoint: str
    bucket: str
    key: str

    @property
    def url(self) -> str:
        return f"{self.endpoint}/{self.bucket}/{quote(self.key)}"

    def exists(self) -> bool:
        resp = httpx.head(self.url, timeout=10)
        assert resp.status_code in (200, 404), resp
        return resp.status_code == 200

    def read_bytes(self) -> bytes:
        resp = httpx.get(self.url, timeout=30)
        resp.raise_for_status()
        return resp.content

    def write_bytes(self, data: bytes) -> None:
        from kachery_node.transport.bucket.s3_signing import presign_url
        from tests.standins import MotoS3

        url = presign_url(f"{self.endpoint}/{self.bucket}/{self.key}", method="PUT",
                          access_key_id=MotoS3.KEY_ID, secret=MotoS3.SECRET, region="us-east-1", expires_s=60,
                          headers={"content-length": str(len(data))})
        httpx.put(url, content=data, timeout=30).raise_for_status()


class Lab:
    """A hub, a channel owned by the first node's user, and member nodes."""

    def __init__(self, root, hub: HubProcess, channel: str = "lab", create_args: tuple[str, ...] = (),
                 backends: str = "embedded+embedded", gcs: tuple[str, str] | None = None,
                 s3: tuple[str, str] | None = None, node_env: dict[str, str] | None = None) -> None:
        self.root, self.hub, self.channel = root, hub, channel
        self.node_env = node_env or {}  # added to every node's environment (e.g. KACHERY_CA_FILE)
        self.create_args = create_args  # `kachery channel create` options choosing the backends
        self.backends = backends
        self.gcs = gcs  # (emulator endpoint, bucket name) when the channel's bucket is GCS
        self.s3 = s3  # (moto endpoint, bucket name) when it is S3
        self.nodes: dict[str, TestNode] = {}
        self.owner: TestNode | None = None

    def add_node(self, label: str, roles: list[str], *, grant: list[str] | None = None,
                 start: bool = True, config: str = "") -> TestNode:
        """A node joined with ``roles`` (granted ``grant``, default the same), ``config`` added to
        its config.toml, its daemon started and connected unless ``start`` is False."""
        node = TestNode(self.root, label)
        if config:
            with open(node.storage_dir / "config.toml", "a") as f:
                f.write(config)
        node.env.update(self.node_env)
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

    def bucket_object(self, key: str) -> Path | GcsObject | S3Object:
        """The channel bucket's object ``key`` (``<channel>/sha1/…``), whatever the backend:
        ``exists()``, ``read_bytes()`` and ``write_bytes()`` reach the storage directly, so that
        tests can check what landed there and tamper with it."""
        if self.gcs is not None:
            return GcsObject(*self.gcs, key)
        if self.s3 is not None:
            return S3Object(*self.s3, key)
        return object_file(self.hub.dir / "bucket", key)

    def stop(self) -> None:
        """Stop every node's daemon (all of them, even if one fails to stop), side by side."""
        failures = []
        for node in self.nodes.values():
            try:
                node.begin_stop()
            except Exception as exc:
                failures.append(f"{node.label}: {exc!r}")
        for node in self.nodes.values():
            try:
                node.stop()
            except Exception as exc:
                failures.append(f"{node.label}: {exc!r}")
        if failures:
            raise AssertionError("could not stop " + "; ".join(failures))


# The shared end-to-end suite: module -> the backend combinations ("<pub-sub>+<bucket>") its `lab` /
# `make_lab` tests run against. All but the default are marked `backends` (-m "not backends" skips
# them). Each backend's own refusals (capabilities, expired tokens, bad signatures or signed URLs)
# are in tests/cloud/.
ALL_COMBINATIONS = ["embedded+embedded", "nats+embedded", "embedded+gcs", "nats+gcs", "ably+embedded",
                    "embedded+s3"]
SHARED_SUITE = {
    "test_live_feeds": ALL_COMBINATIONS,
    "test_files": ALL_COMBINATIONS,
    "test_python_api": ALL_COMBINATIONS,
    "test_permissions": ALL_COMBINATIONS,
    "test_faults": ALL_COMBINATIONS,
}


#: The combinations that vary one side at a time, for a test of the shared suite whose behaviour
#: depends on only one side (``@pytest.mark.lab_combinations(*PUBSUB_COMBINATIONS)``): every
#: pub-sub service over the embedded bucket, or every bucket under the embedded relay.
PUBSUB_COMBINATIONS = ("embedded+embedded", "nats+embedded", "ably+embedded")
BUCKET_COMBINATIONS = ("embedded+embedded", "embedded+gcs", "embedded+s3")


def pytest_generate_tests(metafunc):
    module = metafunc.module.__name__.rsplit(".", 1)[-1]
    uses_lab = "lab" in metafunc.fixturenames or "make_lab" in metafunc.fixturenames
    chosen = any("lab_backends" in str(m.args[0]) for m in metafunc.definition.iter_markers("parametrize"))
    if uses_lab and module in SHARED_SUITE and not chosen:  # a test may choose its own combinations
        combinations = SHARED_SUITE[module]
        narrowed = metafunc.definition.get_closest_marker("lab_combinations")
        if narrowed is not None:  # a subset of the module's, say which side matters (the test says why)
            unknown = set(narrowed.args) - set(combinations)
            assert narrowed.args and not unknown, f"lab_combinations: not in {module}'s: {unknown}"
            combinations = [c for c in combinations if c in narrowed.args]
        params = [pytest.param(c, id=c, marks=() if c == "embedded+embedded" else pytest.mark.backends)
                  for c in combinations]
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
def s3_server(tmp_path_factory):
    from tests.standins import MotoS3

    server = MotoS3(tmp_path_factory.mktemp("s3"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ably_server(tmp_path_factory):
    from tests.standins import AblyFake

    server = AblyFake(tmp_path_factory.mktemp("ably"))
    yield server
    server.stop()


_buckets = itertools.count()


def backend_args(request, backends: str, secrets_dir) -> tuple[list[str], dict]:
    """`kachery channel create` options for a backend combination, starting its stand-ins, and
    ``{"gcs"|"s3": (stand-in endpoint, bucket name)}`` for a cloud bucket."""
    from tests.standins import fake_service_account

    pubsub, bucket = backends.split("+")
    secrets_dir.mkdir(parents=True, exist_ok=True)
    args: list[str] = []
    gcs = None
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
        gcs = (emulator.endpoint, name)
    if bucket == "s3":
        server = request.getfixturevalue("s3_server")
        name = server.new_bucket(f"lab-{next(_buckets)}")
        args += ["--bucket", f"s3://{name}", "--s3-endpoint", server.endpoint,
                 "--s3-key-file", str(server.key_file(secrets_dir / "s3.key"))]
        return args, {"s3": (server.endpoint, name)}
    return args, {"gcs": gcs} if gcs else {}


@pytest.fixture
def make_lab(tmp_path, request, lab_backends):
    """``make_lab(*hub_args)``: a Lab whose hub runs ``kachery hub serve <hub_args>`` (e.g.
    ``"--token-ttl", "5"``; ``"--port", "N"`` keeps the port across ``lab.hub.restart()``)."""
    labs: list[Lab] = []

    def make(*hub_args: str) -> Lab:
        assert not labs, "one lab per test"
        args, buckets = backend_args(request, lab_backends, tmp_path / "backend-secrets")
        labs.append(Lab(tmp_path, HubProcess(tmp_path / "hub", *hub_args), create_args=tuple(args),
                        backends=lab_backends, **buckets))
        return labs[0]

    yield make
    for lab in labs:
        try:
            lab.stop()
        finally:
            lab.hub.stop()


@pytest.fixture
def lab(make_lab):
    return make_lab()
