"""The daemon's limit on lines that repeat (kachery_node/daemon/daemon_log.RepeatLimit): a
member flooding a channel with messages the daemon drops costs a few lines a minute, not one a
message; other lines still go through; what was left out is counted in the next line of its kind.
(The rotation of daemon.log: tests/daemon/test_daemon_local.py.)"""

from __future__ import annotations

import io
import logging

from kachery_node.daemon import daemon_log
from kachery_node.daemon.daemon_log import RepeatLimit


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _logger(monkeypatch) -> tuple[logging.Logger, io.StringIO, _Clock]:
    clock = _Clock()
    monkeypatch.setattr(daemon_log.time, "monotonic", clock)
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(RepeatLimit())
    logger = logging.getLogger("kachery.test_daemon_log")
    logger.handlers, logger.propagate = [handler], False
    logger.setLevel(logging.INFO)
    return logger, out, clock


def test_a_flood_of_one_kind_of_line_is_cut_to_a_burst_a_window_and_counted(monkeypatch):
    logger, out, clock = _logger(monkeypatch)
    for i in range(1000):
        logger.info("lab: dropped a message: bad signature %d", i)
        if i % 100 == 0:
            logger.info("lab: connected as %s", "request-feeds")  # another kind: not held back
    lines = out.getvalue().splitlines()
    assert sum("dropped a message" in line for line in lines) == RepeatLimit.BURST
    assert sum("connected as" in line for line in lines) == 10
    clock.now += RepeatLimit.WINDOW_SECONDS
    logger.info("lab: dropped a message: bad signature %d", 1000)
    last = out.getvalue().splitlines()[-1]
    assert last == (f"lab: dropped a message: bad signature 1000 [and {1000 - RepeatLimit.BURST} more "
                    f"like this in the {RepeatLimit.WINDOW_SECONDS:.0f} s before, not logged]")


def test_many_kinds_of_lines_keep_the_limit_bounded_in_memory(monkeypatch):
    logger, out, _clock = _logger(monkeypatch)
    limit = logger.handlers[0].filters[0]
    for i in range(3 * RepeatLimit.KINDS_KEPT):
        logger.info(f"a line built with an f-string: {i}")  # each its own kind
    assert len(out.getvalue().splitlines()) == 3 * RepeatLimit.KINDS_KEPT
    assert len(limit._windows) <= RepeatLimit.KINDS_KEPT
