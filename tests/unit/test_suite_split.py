"""The unit suite stays pure: tests/conftest.py refuses processes and sockets in it."""

import socket
import subprocess

import pytest

from tests.conftest import UnitTestUsedTheOutsideWorld


def test_a_unit_test_cannot_start_a_process():
    with pytest.raises(UnitTestUsedTheOutsideWorld, match="start a process"):
        subprocess.run(["true"], check=False)


def test_a_unit_test_cannot_open_a_socket():
    with pytest.raises(UnitTestUsedTheOutsideWorld, match="connect a socket"):
        socket.create_connection(("127.0.0.1", 9), timeout=1)


def test_this_test_is_marked_unit(request):
    assert request.node.get_closest_marker("unit") is not None
    assert request.node.get_closest_marker("e2e") is None
