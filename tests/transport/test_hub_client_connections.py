"""HubClient's requests on the process's keep-alive connections (kachery_node.transport.
http_connections), against a scripted loopback server: answers read as the hub writes them,
connections shared by threads and kept alive, a URL's path prefix kept, and typed errors for
what is not a hub's answer. The real hub (TLS and its CA, proxies) is in tests/network/test_tls.py
and tests/hub."""

from __future__ import annotations

import json
import threading

import pytest

from kachery_node.errors import HubRequestError
from kachery_node.identity import Keypair
from kachery_node.transport.hub_client import HubClient
from tests.http_listener import ScriptedServer

HUB_ID = "ab" * 32


@pytest.fixture
def servers(monkeypatch):
    for name in ("http_proxy", "https_proxy", "all_proxy"):  # requests go straight to the server
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    started: list[ScriptedServer] = []

    def start(answer, policy=lambda c, r, p: "answer") -> ScriptedServer:
        started.append(ScriptedServer(policy, answer))
        return started[-1]

    yield start
    for server in started:
        server.stop()


def _hub(path: str) -> tuple[int, str, bytes]:
    if path.endswith("/api/hub"):
        return 200, "application/json", json.dumps({"hub_id": HUB_ID, "path": path}).encode()
    return 403, "application/json", json.dumps(
        {"error": {"code": "forbidden", "message": "no such role", "details": {"role": "x"}}}).encode()


def _base(server: ScriptedServer) -> str:
    return f"http://127.0.0.1:{server.port}"


def test_requests_from_many_threads_share_a_few_kept_alive_connections(servers):
    server = servers(_hub)
    hub = HubClient(_base(server))
    answers: list[str] = []
    errors: list[BaseException] = []

    def ask() -> None:
        try:
            for _ in range(10):
                answers.append(hub.info()["hub_id"])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == [] and answers == [HUB_ID] * 40
    assert 1 <= server.connections <= 4  # at most one a thread, each reused


def test_a_refusal_is_the_hubs_typed_error_and_the_url_keeps_its_path(servers):
    server = servers(_hub)
    hub = HubClient(_base(server) + "/kachery/", node_key=Keypair.generate())
    assert hub.info()["path"] == "/kachery/api/hub"
    with pytest.raises(HubRequestError) as refused:
        hub.channel_info("lab")
    assert (refused.value.status, refused.value.code) == (403, "forbidden")
    assert refused.value.details == {"role": "x"}
    assert [(m, p) for _c, m, p in server.requests][-1] == ("POST", "/kachery/api/node")


@pytest.mark.parametrize("status", [200, 502])
def test_what_is_not_a_hubs_answer_is_a_typed_error(servers, status):
    server = servers(lambda path: (status, "text/html", b"<html>a captive portal</html>"))
    with pytest.raises(HubRequestError, match="captive portal") as refused:
        HubClient(_base(server)).info()
    assert refused.value.status == status


def test_a_hub_that_closes_without_answering_is_unreachable_not_retried(servers):
    server = servers(_hub, policy=lambda c, r, p: "close")
    with pytest.raises(HubRequestError, match="cannot reach the hub") as refused:
        HubClient(_base(server)).info()
    assert refused.value.status == 0 and len(server.requests) == 1
