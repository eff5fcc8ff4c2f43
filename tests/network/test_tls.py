"""TLS end to end (spec/hub.md §11): a hub serving HTTPS itself on 127.0.0.2 with a certificate
from the test's own CA, nodes that trust that CA with KACHERY_CA_FILE / --ca-file, files and a
live feed between them; a wrong CA refused with a clear error; and secrets never sent over plain
HTTP to another machine, refused before any connection (checked with a recording proxy: nothing
leaves the machine even if the refusal were missing)."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from pathlib import Path

import httpx
import pytest

import kachery_feeds as kf
import kachery_node as kn
from kachery_node.joined_channels import save_membership
from tests.hub.conftest import HubProcess
from tests.network.conftest import ALL_ROLES, Lab
from tests.nodes import TestNode
from tests.tls_certs import TestCA

TLS_HOST = "127.0.0.2"  # another loopback address: the hub is not where the nodes are
NOWHERE = "http://hub.lab.example:8080"  # not this machine: its secrets must never go there


@pytest.fixture
def ca(tmp_path) -> TestCA:
    return TestCA(tmp_path / "ca")


@pytest.fixture
def tls_hub(tmp_path, ca):
    server = ca.issue("hub", [TLS_HOST])
    hub = HubProcess(tmp_path / "hub", "--host", TLS_HOST, "--tls-cert", str(server.cert),
                     "--tls-key", str(server.key))
    yield hub
    hub.stop()


@pytest.fixture
def tls_lab(tmp_path, tls_hub, ca):
    lab = Lab(tmp_path, tls_hub, node_env={"KACHERY_CA_FILE": str(ca.cert)})
    yield lab
    lab.stop()


class RecordingProxy:
    """A loopback socket that records every connection made to it: set as ALL_PROXY (and
    HTTP(S)_PROXY) of a process, it is where that process's HTTP clients would connect for any
    host not in NO_PROXY. Answers 502 so that a client does not wait."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.requests: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    self.requests.append(conn.recv(65536))
                    conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n"
                                 b"connection: close\r\n\r\n")
                except OSError:
                    pass

    def env(self) -> dict[str, str]:
        return {name: self.url for name in ("ALL_PROXY", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy",
                                            "http_proxy", "https_proxy")} | {
            "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def proxy():
    p = RecordingProxy()
    yield p
    p.close()


def test_files_and_a_live_feed_move_between_nodes_over_tls(tls_lab, tmp_path):
    trusting_the_ca = ssl.create_default_context(cafile=tls_lab.root / "ca" / "ca.pem")
    hub_info = httpx.get(f"{tls_lab.hub.url}/api/hub", verify=trusting_the_ca).json()
    assert tls_lab.hub.url.startswith(f"https://{TLS_HOST}:")
    assert hub_info["relay_url"].startswith(f"wss://{TLS_HOST}:")
    assert hub_info["bucket_url"].startswith(f"https://{TLS_HOST}:")
    alice = tls_lab.add_node("alice", ALL_ROLES)
    bob = tls_lab.add_node("bob", ["request-files", "request-feeds"])

    # A file: alice uploads it to the bucket (signed PUT over https), then goes away; bob's daemon
    # finds it in the bucket and downloads it (direct_get.py's TLS socket).
    data = tmp_path / "readings.bin"
    data.write_bytes(bytes(range(256)) * 4000)
    uri = alice.run("upload", str(data), "--channel", "lab").stdout.strip()
    alice.stop()
    assert bob.run("load", uri).stdout.strip()
    assert kn.open_storage(bob.storage_dir).load_bytes(uri) == data.read_bytes()

    # A live feed: pushed by alice's daemon through the relay (wss) to bob's within seconds.
    alice.start()
    tls_lab.wait_connected(alice)
    source = kf.open_store(alice.storage_dir / "feeds.db").create_feed().load_subfeed("temps")
    source.append_message({"t": 20.5})
    bob.client.request("POST", "/api/feeds/follow", json_body={"uri": source.uri})
    replica = kf.open_store(bob.storage_dir / "feeds.db").load_subfeed(source.uri)
    got = [m for _, m in zip(range(1), replica.follow(start=0, timeout=20), strict=False)]
    assert got == [{"t": 20.5}], bob.log()[-2000:]
    source.append_message({"t": 21.0})
    deadline = time.monotonic() + 15
    while replica.get_num_local_messages() < 2:
        assert time.monotonic() < deadline, bob.log()[-2000:]
        time.sleep(0.02)
    assert replica.get_messages(1) == [{"t": 21.0}]


def test_a_hub_certificate_from_another_ca_is_refused_clearly(tls_lab, tmp_path):
    alice = tls_lab.add_node("alice", ALL_ROLES)  # trusts the hub's CA
    stranger_ca = TestCA(tmp_path / "other-ca", name="someone else's CA")
    alice.env.pop("KACHERY_CA_FILE")
    for extra in ([], ["--ca-file", str(stranger_ca.cert)]):  # the system's store; another CA
        proc = alice.run("channel", "list", *extra, check=False)
        assert proc.returncode == 1
        assert "certificate of https://127.0.0.2" in proc.stderr and "not trusted" in proc.stderr
        assert "--ca-file" in proc.stderr and "Traceback" not in proc.stderr

    # The daemon too: started trusting the wrong CA, its channel says why it cannot connect.
    alice.stop()
    alice.env["KACHERY_CA_FILE"] = str(stranger_ca.cert)
    alice.start()
    state = _wait_for_state(alice, "not trusted")
    assert "KACHERY_CA_FILE" in state


def test_a_ca_file_that_is_not_a_certificate_is_a_usage_error(tls_lab, tmp_path):
    bad = tmp_path / "not-a-ca.pem"
    bad.write_text("hello\n")
    alice = tls_lab.add_node("alice", ALL_ROLES, start=False)
    proc = alice.run("channel", "list", "--ca-file", str(bad), check=False)
    assert proc.returncode == 2 and f"cannot use {bad} as a CA file" in proc.stderr
    alice.env["KACHERY_CA_FILE"] = str(bad)
    proc = alice.run("node", "start", check=False)
    assert proc.returncode == 1 and f"cannot use {bad} as a CA file" in proc.stderr
    assert not (alice.storage_dir / "daemon.json").exists()


def _wait_for_state(node: TestNode, needle: str, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while True:
        channels = node.client.status()["channels"]
        if channels and needle in channels[0]["state"]:
            return channels[0]["state"]
        assert time.monotonic() < deadline, f"{channels}\n{node.log()[-2000:]}"
        time.sleep(0.1)


def test_secrets_are_not_sent_over_plain_http_to_another_machine(tmp_path, proxy):
    node = TestNode(tmp_path, "alice")
    node.env.update(proxy.env())
    key = tmp_path / "gcs.json"
    key.write_text(json.dumps({"type": "service_account", "private_key": "SECRET", "client_email": "a@b"}))
    for args in (["channel", "create", "lab", "--bucket", "gcs://lab-bucket", "--gcs-key-file", str(key)],
                 ["channel", "list"], ["hub", "login"], ["node", "join", "lab", "--roles", "request-files"]):
        proc = node.run(*args, "--hub", NOWHERE, check=False)
        assert proc.returncode == 1, proc
        assert "refusing to send" in proc.stderr and "hub.lab.example" in proc.stderr
        assert "https://hub.lab.example:8080" in proc.stderr and "--insecure-http" in proc.stderr
    assert proxy.requests == []  # decided before connecting: nothing was sent anywhere

    # The daemon refuses too: a channel joined (somehow) on such a hub is never contacted.
    save_membership(node.storage_dir, "lab", {"hub_url": NOWHERE, "hub_id": "00" * 32,
                                              "feed_id": "11" * 32, "roles": ["request-files"]})
    node.start()
    assert "--insecure-http" in _wait_for_state(node, "refusing to send")
    assert proxy.requests == []

    # Loopback is this machine: plain HTTP is fine there (nothing reached the proxy either).
    proc = node.run("channel", "list", "--hub", "http://127.0.0.1:9", check=False)
    assert "cannot reach the hub" in proc.stderr and "refusing" not in proc.stderr

    # Where the person says they mean it, the request is made (here: it reaches the proxy),
    # which shows the proxy would have seen the earlier ones.
    proc = node.run("channel", "list", "--hub", NOWHERE, "--insecure-http", check=False)
    assert "refusing" not in proc.stderr
    assert any(b"hub.lab.example:8080" in r for r in proxy.requests), proxy.requests


def test_hub_serve_checks_its_certificate_and_key_before_starting(tmp_path, ca):
    one, other = ca.issue("one", [TLS_HOST]), ca.issue("other", [TLS_HOST])
    node = TestNode(tmp_path, "admin")
    proc = node.run("hub", "serve", "--dir", str(tmp_path / "hub"), "--port", "0",
                    "--tls-cert", str(one.cert), check=False)
    assert proc.returncode == 2 and "--tls-cert and --tls-key go together" in proc.stderr
    proc = node.run("hub", "serve", "--dir", str(tmp_path / "hub"), "--port", "0",
                    "--tls-cert", str(one.cert), "--tls-key", str(other.key), check=False)
    assert proc.returncode == 1 and "cannot serve TLS" in proc.stderr and "Traceback" not in proc.stderr
    assert not Path(tmp_path / "hub").exists()  # nothing created


def test_a_lab_on_one_machine_tls_hub_and_three_storages_each_with_its_own_daemon(tls_lab, tmp_path):
    """Issue 13's whole picture on one machine: a TLS hub on 127.0.0.2; three storages (each with
    its own user directory: three people), two of them started without naming a port while
    20431 is held by an unrelated daemon (tests/conftest.py) or free; a file and a live feed
    move between them; no storage ever reaches another's daemon."""
    owner = tls_lab.add_node("owner", ALL_ROLES)  # a port named in KACHERY_DAEMON_PORT
    roles = ["request-files", "provide-files", "request-feeds", "provide-feeds"]
    workstation = tls_lab.add_node("workstation", roles, start=False)
    laptop = tls_lab.add_node("laptop", roles, start=False)
    for node in (workstation, laptop):
        node.env.pop("KACHERY_DAEMON_PORT")
        said = node.run("node", "start").stdout
        port = json.loads((node.storage_dir / "daemon.json").read_text())["port"]
        assert f"127.0.0.1:{port}" in said  # it says where it listens
        tls_lab.wait_connected(node)
    ports = {json.loads((n.storage_dir / "daemon.json").read_text())["port"]
             for n in (owner, workstation, laptop)}
    assert len(ports) == 3
    for node in (owner, workstation, laptop):
        assert node.json("node", "status")["node_id"] == node.node_id

    # A file from the workstation reaches the laptop (asked for on the channel over TLS).
    data = tmp_path / "spikes.bin"
    data.write_bytes(bytes(range(251)) * 3000)
    uri = workstation.run("store", str(data)).stdout.strip()
    assert laptop.run("load", uri).stdout.strip()
    assert kn.open_storage(laptop.storage_dir).load_bytes(uri) == data.read_bytes()

    # A live feed from the laptop reaches the owner's node and the workstation.
    source = kf.open_store(laptop.storage_dir / "feeds.db").create_feed().load_subfeed("notes")
    source.append_message({"n": 1})
    for reader in (owner, workstation):
        reader.client.request("POST", "/api/feeds/follow", json_body={"uri": source.uri})
    source.append_message({"n": 2})
    for reader in (owner, workstation):
        replica = kf.open_store(reader.storage_dir / "feeds.db").load_subfeed(source.uri)
        got = [m for _, m in zip(range(2), replica.follow(start=0, timeout=20), strict=False)]
        assert got == [{"n": 1}, {"n": 2}], reader.log()[-2000:]

    # Every daemon saw only its own storage's token: no request was refused as unauthenticated.
    for node in (owner, workstation, laptop):
        log = node.log()
        assert " -> 401 " not in log and " -> 403 " not in log, log[-2000:]
