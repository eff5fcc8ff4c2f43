"""Stand-ins for the cloud and cluster backends, as real processes on free loopback ports.

* :class:`NatsCluster`: Debian's ``nats-server`` in operator mode (decentralized JWT auth) with a
  generated operator and account; one server or several clustered.
* :class:`GcsEmulator`: gcp-storage-emulator (PyPI) with a default bucket.
* :func:`fake_service_account`: a service-account key (fresh RSA key) as Google hands them out.
* :class:`MotoS3`: moto's S3 server mode (PyPI ``moto[server]``), public-read buckets made on demand.
* :class:`AblyFake`: tests/ably_fake_server.py, a small server speaking the part of Ably's
  protocol we use.

Each ``stop()`` ends only the processes it started.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from kachery_node.transport.pubsub import nats_jwt
from tests.nodes import free_port

START_TIMEOUT_S = 20


def _wait_port(proc: subprocess.Popen, port: int, log: Path) -> None:
    import socket

    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"server did not listen on {port}:\n{log.read_text()[-3000:]}") from None
            time.sleep(0.05)


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def require_nats_server() -> str:
    path = shutil.which("nats-server") or ("/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists()
                                           else None)
    if path is None:
        pytest.skip("nats-server is not installed (.ci/run installs it with apt-get)")
    return path


class NatsCluster:
    """``size`` nats-servers trusting one operator and one account; clustered if size > 1."""

    def __init__(self, root: Path, size: int = 1) -> None:
        self.binary = require_nats_server()
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        operator = nats_jwt.new_seed("operator")
        self.account_seed = nats_jwt.new_seed("account")
        account = nats_jwt.public_key(self.account_seed)
        self.ports = [free_port() for _ in range(size)]
        cluster_ports = [free_port() for _ in range(size)]
        self.monitor_ports = [free_port() for _ in range(size)]  # /connz shows who is connected where
        self.procs: list[subprocess.Popen] = []
        for i, port in enumerate(self.ports):
            conf = [f"listen: 127.0.0.1:{port}", f"server_name: kachery-test-{i}",
                    f"http: 127.0.0.1:{self.monitor_ports[i]}",
                    f"operator: {nats_jwt.operator_jwt(operator)}", "resolver: MEMORY",
                    f"resolver_preload: {{ {account}: {nats_jwt.account_jwt(operator, account)} }}"]
            if size > 1:
                routes = ", ".join(f"nats-route://127.0.0.1:{p}"
                                   for j, p in enumerate(cluster_ports) if j != i)
                conf.append(f"cluster {{ name: kachery-test, listen: 127.0.0.1:{cluster_ports[i]}, "
                            f"routes: [{routes}] }}")
            path = self.root / f"nats-{i}.conf"
            path.write_text("\n".join(conf) + "\n")
            log = self.root / f"nats-{i}.log"
            with open(log, "ab") as out:
                self.procs.append(subprocess.Popen([self.binary, "-c", str(path)], stdout=out, stderr=out))
        for proc, port, i in zip(self.procs, self.ports, range(size), strict=True):
            _wait_port(proc, port, self.root / f"nats-{i}.log")
        if size > 1:
            self._wait_routes()

    def _wait_routes(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            logs = [(self.root / f"nats-{i}.log").read_text() for i in range(len(self.ports))]
            if all("Route connection created" in text for text in logs):
                return
            if time.monotonic() > deadline:
                raise RuntimeError("the NATS cluster did not form:\n" + "\n".join(t[-1500:] for t in logs))
            time.sleep(0.05)

    def url(self, member: int | None = None) -> str:
        """The servers' URLs (all, or one member's)."""
        ports = self.ports if member is None else [self.ports[member]]
        return ",".join(f"nats://127.0.0.1:{p}" for p in ports)

    def seed_file(self, path: Path) -> Path:
        path.write_text(self.account_seed + "\n")
        path.chmod(0o600)
        return path

    def stop(self) -> None:
        for proc in self.procs:
            _stop(proc)


def fake_service_account(path: Path | None = None) -> dict:
    """A service-account key like Google's, with a fresh RSA key (works offline for signing)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    info = {"type": "service_account", "project_id": "kachery-test", "private_key_id": "k1",
            "private_key": pem, "client_email": "hub@kachery-test.iam.gserviceaccount.com",
            "client_id": "1", "token_uri": "https://oauth2.googleapis.com/token"}
    if path is not None:
        path.write_text(json.dumps(info))
        path.chmod(0o600)
    return info


class GcsEmulator:
    """gcp-storage-emulator in memory, with bucket ``bucket``, as its own process."""

    def __init__(self, root: Path, bucket: str = "kachery-test") -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.bucket = bucket
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        exe = Path(sys.executable).parent / "gcp-storage-emulator"
        if not exe.exists():
            pytest.skip("gcp-storage-emulator is not installed (pip install -e '.[test]')")
        log = self.root / "gcs.log"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen([str(exe), "start", "--host", "127.0.0.1", "--port", str(self.port),
                                          "--in-memory", "--default-bucket", bucket], stdout=out, stderr=out)
        _wait_port(self.proc, self.port, log)
        deadline = time.monotonic() + START_TIMEOUT_S
        while httpx.get(self.endpoint + "/", timeout=5).status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("gcp-storage-emulator is not healthy")
            time.sleep(0.05)

    def stop(self) -> None:
        _stop(self.proc)


class MotoS3:
    """moto's server mode as its own process: an S3-compatible endpoint (in memory).

    Like gcp-storage-emulator it checks no signature, expiry or size on a presigned PUT (moto
    verifies only header-signed requests, and only with IAM auth on, which refuses anonymous
    reads), so tests/cloud/test_s3.py checks the hub's URLs the way S3 does with botocore, and the
    node's own verification catches what the stand-in lets in."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        try:
            import moto.server  # noqa: F401
        except ImportError:
            pytest.skip("moto[server] is not installed (pip install -e '.[test]')")
        log = self.root / "moto.log"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                          "-p", str(self.port)], stdout=out, stderr=out)
        _wait_port(self.proc, self.port, log)

    def new_bucket(self, name: str, *, public_read: bool = True) -> str:
        """Create bucket ``name``; ``public_read``: with the policy spec/bucket.md asks for
        (anyone may GetObject and ListBucket)."""
        resp = httpx.put(f"{self.endpoint}/{name}", timeout=10)
        assert resp.status_code == 200, resp.text
        if public_read:
            # S3 authorizes HEAD with s3:GetObject; moto looks for an action it calls s3:HeadObject.
            policy = {"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject", "s3:HeadObject"],
                 "Resource": [f"arn:aws:s3:::{name}/*"]},
                {"Effect": "Allow", "Principal": "*", "Action": ["s3:ListBucket"],
                 "Resource": [f"arn:aws:s3:::{name}"]}]}
            resp = httpx.put(f"{self.endpoint}/{name}", params={"policy": ""}, content=json.dumps(policy),
                             timeout=10)
            assert resp.status_code in (200, 204), resp.text
        return name

    KEY_ID, SECRET = "AKIAKACHERYTEST00001", "kachery/test+secret"  # moto takes any key

    @staticmethod
    def key_file(path: Path, key_id: str = KEY_ID, secret: str = SECRET) -> Path:
        """An access key file as ``--s3-key-file`` takes it (ID, then secret; 0600)."""
        path.write_text(f"{key_id}\n{secret}\n")
        path.chmod(0o600)
        return path

    def stop(self) -> None:
        _stop(self.proc)


class AblyFake:
    """tests/ably_fake_server.py as its own process, with one API key."""

    def __init__(self, root: Path) -> None:
        import secrets

        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.api_key = f"kapp.{secrets.token_hex(3)}:{secrets.token_urlsafe(18)}"
        log = self.root / "ably.log"
        ports = self.root / "ports.json"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, str(Path(__file__).parent / "ably_fake_server.py"),
                                          str(self.root), self.api_key], stdout=out, stderr=out)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ports.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                _stop(self.proc)
                raise RuntimeError(f"the Ably fake did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.05)
        p = json.loads(ports.read_text())
        self.endpoint = f"127.0.0.1:{p['realtime']}"
        self.rest_url = f"http://127.0.0.1:{p['rest']}"

    def key_file(self, path: Path) -> Path:
        path.write_text(self.api_key + "\n")
        path.chmod(0o600)
        return path

    def log(self) -> str:
        return (self.root / "ably.log").read_text()

    def revoke_outage(self, on: bool) -> None:
        """While on, ``revokeTokens`` answers 503 (the service is down for revocations)."""
        flag = self.root / "revoke-outage"
        flag.touch() if on else flag.unlink(missing_ok=True)

    def stop(self) -> None:
        _stop(self.proc)
