"""Start-up time (issue 15 item 6): ``kachery --help`` and ``import kachery_feeds`` (and, for
reference, opening a store: ``kachery_feeds`` loads its names on first use; a command that
asks a running daemon, ``kachery node status``, against a daemon this bench starts in a
temporary storage, and stops; and one that asks a running hub, ``kachery channel list``,
against a hub it starts on a free loopback port, and stops).

Each command runs ``--runs`` times per round (after one warm-up run, so the page cache holds the
files), ``--rounds`` rounds; the table gives min / median / max of the per-round medians, wall
time of the whole process, like hyperfine. The floor in the same run is a bare interpreter
(``python -c pass``). The packages' bytecode is compiled first (``compileall``), as
for an installed package. Also printed: the self-reported import time (``python -X importtime``,
the cumulative figure of the top-level import) and the heaviest top-level imports, which say
what to make lazy next.

    .venv/bin/python bench/bench_startup.py [--rounds 3] [--runs 10] [--json PATH]
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

BIN = Path(sys.executable).parent
#: name -> (target ms, judged on the whole process's wall time, or on the time above the floor).
#: A command's user waits for the whole process; an import's cost is what it adds to a program.
TARGETS_MS = {"kachery --help": (150.0, "wall"), "import kachery_feeds": (60.0, "above the floor")}


def commands(hub_url: str) -> dict[str, list[str]]:
    return {
        "python -c pass (floor)": [sys.executable, "-c", "pass"],
        "import kachery_feeds": [sys.executable, "-c", "import kachery_feeds"],
        # Its names load on first use: what a program that opens a store pays (no target: a
        # store's modules, SQLite and libsodium, and the opening itself).
        "import kachery_feeds + open_store": [
            sys.executable, "-c", "import sys, tempfile, kachery_feeds as kf\n"
            "with tempfile.TemporaryDirectory() as d:\n    kf.open_store(d + '/feeds.db').close()"],
        "kachery --help": [str(BIN / "kachery"), "--help"],
        # No target: the daemon's own answer is in it. What every command and script that talks
        # to the daemon pays to start (the client's imports: http.client, not httpx).
        "kachery node status (a running daemon)": [str(BIN / "kachery"), "node", "status"],
        # No target: the hub's answer is in it (a signed request: the user's key is read, the
        # request signed, the hub checks the signature). What `kachery channel ...`, `node join`
        # and the like pay to start (the hub client's imports: http.client, not httpx).
        "kachery channel list (a running hub)": [str(BIN / "kachery"), "channel", "list", "--hub", hub_url],
    }


@contextlib.contextmanager
def running_hub() -> Iterator[str]:
    """A hub (``kachery hub serve --port 0``) in a temporary folder; its URL. Stopped after."""
    sys.path.insert(0, str(Path(__file__).parent / "network"))
    from netlab import Hub

    with tempfile.TemporaryDirectory() as tmp:
        hub = Hub(Path(tmp) / "hub")
        try:
            yield hub.url
        finally:
            hub.stop()


@contextlib.contextmanager
def running_daemon() -> Iterator[None]:
    """A node initialised in a temporary storage, its daemon started (on 20431 if free, else on
    a free loopback port it picks and records in the storage's daemon.json, where commands find
    it), stopped after. This process's environment points every command at that storage."""
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.update(KACHERY_STORAGE_DIR=f"{tmp}/storage", KACHERY_USER_DIR=f"{tmp}/user")
        os.environ.pop("KACHERY_DAEMON_PORT", None)  # a port of the caller's choosing might be taken
        kachery = str(BIN / "kachery")
        subprocess.run([kachery, "init", "--label", "bench"], check=True, capture_output=True, timeout=60)
        subprocess.run([kachery, "node", "start"], check=True, capture_output=True, timeout=60)
        try:
            yield
        finally:
            subprocess.run([kachery, "node", "stop"], check=False, capture_output=True, timeout=60)


def wall_ms(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, timeout=60)
    return (time.perf_counter() - t0) * 1000


def _import_rows(code: str) -> list[tuple[float, int, str]]:
    """``python -X importtime -c code``: (cumulative ms, depth, module) of each import."""
    err = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True,
                         text=True, check=False, timeout=60).stderr
    rows = []
    for line in err.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m:
            rows.append((int(m.group(2)) / 1000, len(m.group(3)), m.group(4)))
    return rows


def import_time_ms(code: str) -> tuple[float, list[tuple[float, str]]]:
    """(ms of the imports ``code`` makes: the top-level ones a bare interpreter's start does not
    make, summed; a package that loads its names on first use makes several; [(ms, name)] of
    the heaviest imports, the interpreter's start's left out)."""
    at_start = {name for _ms, _depth, name in _import_rows("pass")}
    rows = [row for row in _import_rows(code) if row[2] not in at_start]
    top = [(ms, name) for ms, depth, name in rows if depth <= 3]
    outer = sum(ms for ms, depth, _ in rows if depth == 1)
    return outer, sorted(top, reverse=True)[:6]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    args = ap.parse_args()
    # An installed package has its bytecode cached; a checkout run with PYTHONDONTWRITEBYTECODE
    # (as this machine's shells are) would compile every module on every start: ~40 ms more.
    root = Path(__file__).resolve().parents[1]
    for package in ("kachery_feeds", "kachery_node"):
        compileall.compile_dir(root / package, quiet=1)
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}; "
          f"{args.rounds} rounds x {args.runs} runs (each round's median counts)")
    with running_daemon(), running_hub() as hub_url:
        measure(args, hub_url)


def measure(args: argparse.Namespace, hub_url: str) -> None:
    """The rounds, the table and the import times (a daemon and a hub running: see
    :func:`running_daemon`, :func:`running_hub`)."""
    medians: dict[str, list[float]] = {name: [] for name in commands(hub_url)}
    for _ in range(args.rounds):
        for name, argv in commands(hub_url).items():
            wall_ms(argv)  # warm-up
            medians[name].append(statistics.median(wall_ms(argv) for _ in range(args.runs)))
    floor = statistics.median(medians["python -c pass (floor)"])
    if args.json:
        write_json(Path(args.json), medians, floor)
    print("\n| command | wall ms min / median / max | median above the floor | target | met? |")
    print("|---|---|---|---|---|")
    for name, values in medians.items():
        lo, mid, hi = min(values), statistics.median(values), max(values)
        target, judged = TARGETS_MS.get(name, (None, ""))
        figure = mid if judged == "wall" else mid - floor
        met = "" if target is None else ("yes" if figure <= target else "**NO**")
        print(f"| {name} | {lo:.0f} / **{mid:.0f}** / {hi:.0f} | {mid - floor:.0f} | "
              f"{'' if target is None else f'<= {target:.0f} ms ({judged})'} | {met} |")
    print()
    for name, code in [("import kachery_feeds", "import kachery_feeds"),
                       ("open_store", "import kachery_feeds as kf; kf.Store"),
                       ("kachery --help", "import sys; sys.argv = ['kachery', '--help']\n"
                                          "from kachery_node.cli import main\n"
                                          "try:\n    main()\nexcept SystemExit:\n    pass"),
                       ("a request to the daemon", "from kachery_node.daemon_client import DaemonClient\n"
                                                   "DaemonClient().status()"),
                       ("a request to the hub", "from kachery_node.transport.hub_client import HubClient\n"
                                                f"HubClient({hub_url!r}).info()")]:
        outer, heavy = import_time_ms(code)
        print(f"{name}: -X importtime {outer:.0f} ms; heaviest: "
              + ", ".join(f"{n} {ms:.0f}" for ms, n in heavy))
    print(f"load average after: {os.getloadavg()[0]:.2f}")


def write_json(path: Path, medians: dict[str, list[float]], floor: float) -> None:
    """The table as JSON: per command, min / median / max of the round medians (ms), the floor's
    median, and the target, what it is judged on and whether the median meets it."""
    rows = []
    for name, values in medians.items():
        spread = [min(values), statistics.median(values), max(values)]
        target, judged = TARGETS_MS.get(name, (None, None))
        figure = spread[1] if judged == "wall" else spread[1] - floor
        rows.append({"command": name, "ms": spread, "floor_ms": floor, "target_ms": target,
                     "judged": judged, "met": None if target is None else figure <= target})
    path.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                "loadavg": os.getloadavg(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
