"""A small kachery network of real processes: one hub, and nodes with daemons, joined to a channel."""

from __future__ import annotations

import time

import pytest

from tests.hub.conftest import HubProcess
from tests.nodes import TestNode

ALL_ROLES = ["request-files", "provide-files", "request-feeds", "provide-feeds",
             "request-tasks", "provide-tasks"]


class Lab:
    """A hub, a channel owned by the first node's user, and member nodes."""

    def __init__(self, root, hub: HubProcess, channel: str = "lab") -> None:
        self.root, self.hub, self.channel = root, hub, channel
        self.nodes: dict[str, TestNode] = {}
        self.owner: TestNode | None = None

    def add_node(self, label: str, roles: list[str], *, grant: list[str] | None = None,
                 start: bool = True) -> TestNode:
        node = TestNode(self.root, label)
        node.env["KACHERY_HUB_URL"] = self.hub.url
        if self.owner is None:
            self.owner = node
            node.run("channel", "create", self.channel)
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


@pytest.fixture
def make_lab(tmp_path):
    """``make_lab(*hub_args)``: a Lab whose hub runs ``kachery hub serve <hub_args>`` (e.g.
    ``"--token-ttl", "5"``; ``"--port", "N"`` keeps the port across ``lab.hub.restart()``)."""
    labs: list[Lab] = []

    def make(*hub_args: str) -> Lab:
        assert not labs, "one lab per test"
        labs.append(Lab(tmp_path, HubProcess(tmp_path / "hub", *hub_args)))
        return labs[0]

    yield make
    for lab in labs:
        lab.stop()
        lab.hub.stop()


@pytest.fixture
def lab(make_lab):
    return make_lab()
