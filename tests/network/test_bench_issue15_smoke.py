"""bench/issue15.py runs its three benchmarks and prints every row of issue 15's table.

Quick sizes, no Node.js peer, one round, one run per start-up command: this checks that the three
scripts run end to end under it, that their results are kept where ``--out`` says, and that the
table (also printed again by ``--from``) has a line per row of the issue, in the issue's order,
each judged against its target. Never the figures themselves: a benchmark does not fail on a
missed target, and quick sizes are not comparable.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bench_process import run_bench

REPO = Path(__file__).resolve().parents[2]
ISSUE15 = REPO / "bench" / "issue15.py"

#: The issue's rows, in its order (the catch-up and live rows each make two lines).
ROWS = [
    "durable single append",
    "batch append, 1000/call",
    "verified import, batch-signed",
    "catch-up of 5k messages by a fresh node",
    "catch-up: first message",
    "daemon serving a 20k-message subfeed to a catching-up node, peak RSS",
    "file 32 MiB A -> B",
    "live A -> B through the hub relay, p50",
    "live A -> B through the hub relay, p99",
    "reading 20k messages: iter_messages() (get_messages())",
    "`kachery --help`",
    "`import kachery_feeds`",
]


def table_rows(output: str) -> dict[str, list[str]]:
    """The issue table's lines of ``output``: first cell -> the other cells."""
    found = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] in ROWS:
            found[cells[0]] = cells[1:]
    return found


@pytest.mark.slow
def test_issue15_bench_prints_every_row_of_the_issue(tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = run_bench([sys.executable, str(ISSUE15), "--quick", "--no-hypercore", "--rounds", "1",
                      "--runs", "1", "--out", str(out)], timeout=300, cwd=tmp_path)
    stdout = proc.stdout
    assert proc.returncode == 0, stdout[-3000:] + proc.stderr[-5000:]
    # the three benchmarks' own tables came first, then the issue's
    assert stdout.index("## startup") < stdout.index("## feeds") < stdout.index("## network")
    table = stdout[stdout.index("| row (issue 15)"):]
    rows = table_rows(table)
    assert list(rows) == ROWS, table
    for name, cells in rows.items():
        kachery, _peer, _limit, _ratio, target, met = cells
        assert kachery != "-" and target, (name, cells)
        assert met in ("yes", "**NO**", "-"), (name, cells)
    # every figure of the same run: a spread of the rounds where the issue asks for rounds
    assert rows["durable single append"][0].count(" / ") == 2
    assert rows["live A -> B through the hub relay, p50"][2].startswith("one relay hop")
    assert "QUICK sizes" in table
    # the results are kept, and --from prints the same table from them without running anything
    assert {p.name for p in out.iterdir()} == {"startup.json", "feeds.json", "network.json"}
    assert json.loads((out / "network.json").read_text())["quick"] is True
    again = subprocess.run([sys.executable, str(ISSUE15), "--from", str(out)],
                           capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == table.split("\n\nthe three results")[0].strip()
