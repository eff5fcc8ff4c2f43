"""kachery_feeds benchmarks side by side with hypercore (issue 2), with physical limits.

Run from the repository root::

    .venv/bin/python bench/feeds/run.py                # full run (a few minutes)
    .venv/bin/python bench/feeds/run.py --quick        # small sizes, smoke test
    .venv/bin/python bench/feeds/run.py --no-hypercore # skip the Node.js side
    .venv/bin/python bench/feeds/run.py --json out.json

This is a benchmark, not a test: it prints tables and never fails on a missed target.
What it measures (all on disk, in one temporary folder, one thing at a time):

* physical limits of this machine, measured in the same run: Ed25519 sign and verify (PyNaCl's
  libsodium bindings, the calls the store uses), SHA-256 of one message body, orjson dumps of
  one payload, raw ``sqlite3`` inserts of the very rows an import writes (same ``messages``
  table, copied from a store's own schema) in one transaction, and one commit per row;
* kachery_feeds: durable single appends, batch appends of 1000, follow latency from
  ``append_message`` in one process to ``follow()`` in another, verified import
  (``get_signed_messages`` -> ``add_signed_messages`` into a fresh store) of batch-signed and
  individually signed ranges, and peak memory of reading a 1M-message subfeed with ``follow``;
* hypercore (``bench/hypercore/bench.mjs``, npm package installed into ``bench/.cache/``) for
  the same message size: single and batch appends, in-process live tail latency, and (for
  issue 5) replication of 100k small blocks and of 64 KiB blocks.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import hashlib
import json
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
HYPERCORE_SRC = REPO / "bench" / "hypercore"
sys.path.insert(0, str(REPO))

import nacl.bindings  # noqa: E402
import orjson  # noqa: E402

import kachery_feeds as kf  # noqa: E402

sys.path.insert(0, str(HYPERCORE_SRC))
sys.path.insert(0, str(REPO / "bench"))
from bench_common import PAYLOAD_BYTES, log, payload, table  # noqa: E402
from bench_common import machine_info as common_machine_info  # noqa: E402
from hypercore_runner import run_hypercore_bench  # noqa: E402

FULL = {
    "single": 5000,
    "batches": 100,  # x 1000 messages
    "tail": 2000,
    "tail_interval_ms": 2.0,
    "import": 100_000,
    "follow_mem": 1_000_000,
    "sign": 20_000,
    "verify": 10_000,
    "hash": 200_000,
    "dumps": 200_000,
    "commit_rows": 5000,
    "repeat": 2,
}
QUICK = {
    "single": 300,
    "batches": 5,
    "tail": 200,
    "tail_interval_ms": 2.0,
    "import": 5000,
    "follow_mem": 20_000,
    "sign": 2000,
    "verify": 2000,
    "hash": 20_000,
    "dumps": 20_000,
    "commit_rows": 300,
    "repeat": 1,
}


def percentile(sorted_values: list[float], p: float) -> float | None:
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, -(-len(sorted_values) * p // 100) - 1))
    return sorted_values[int(k)]


# ---------------------------------------------------------------------------------- limits
def rows_from_wire(lines: list[bytes]) -> list[tuple[bytes, bytes | None]]:
    out = []
    for line in lines:
        body, _tab, sig = line.rpartition(b"\t")
        out.append((body, bytes.fromhex(sig.decode()) if sig else None))
    return out


def messages_schema(store_path: Path) -> str:
    """The CREATE TABLE statement of a kachery store's messages table (so raw = same shape)."""
    with sqlite3.connect(store_path) as c:
        (sql,) = c.execute("SELECT sql FROM sqlite_master WHERE name='messages'").fetchone()
    return sql


def settle() -> None:
    """Before a timed section: flush earlier stages' dirty pages so that their writeback does
    not land in this measurement, and collect garbage."""
    os.sync()
    gc.collect()


def raw_insert_rate(
    tmp: Path, schema: str, rows: list[tuple[bytes, bytes | None]], tag: str
) -> tuple[float, float]:
    """Plain sqlite3: the same rows, same table, WAL + NORMAL, one transaction.
    Returns (rows per wall second, rows per CPU second)."""
    path = tmp / f"raw-insert-{tag}.sqlite"
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("PRAGMA synchronous=NORMAL")
    c.execute(schema)
    params = [(1, n, body, sig) for n, (body, sig) in enumerate(rows)]
    settle()
    t0, c0 = time.perf_counter(), time.process_time()
    c.execute("BEGIN IMMEDIATE")
    c.executemany("INSERT INTO messages(subfeed_id, n, body, sig) VALUES (?,?,?,?)", params)
    c.execute("COMMIT")
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    c.close()
    return len(rows) / secs, len(rows) / max(cpu, 1e-9)


def commit_per_row_rate(tmp: Path, schema: str, rows: list[tuple[bytes, bytes | None]]) -> float:
    """Plain sqlite3: one BEGIN IMMEDIATE / INSERT / COMMIT per row, WAL + NORMAL."""
    path = tmp / "raw-commit-per-row.sqlite"
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("PRAGMA synchronous=NORMAL")
    c.execute(schema)
    settle()
    t0 = time.perf_counter()
    for n, (body, sig) in enumerate(rows):
        c.execute("BEGIN IMMEDIATE")
        c.execute("INSERT INTO messages(subfeed_id, n, body, sig) VALUES (?,?,?,?)", (1, n, body, sig))
        c.execute("COMMIT")
    secs = time.perf_counter() - t0
    c.close()
    return len(rows) / secs


def crypto_limits(cfg: dict) -> dict[str, float]:
    from kachery_feeds.messages import SIGNATURE_CONTEXT

    pk, sk = nacl.bindings.crypto_sign_keypair()
    inputs = [SIGNATURE_CONTEXT + hashlib.sha256(str(i).encode()).digest() for i in range(cfg["sign"])]
    t0 = time.perf_counter()
    sigs = [nacl.bindings.crypto_sign(m, sk)[:64] for m in inputs]
    sign_rate = len(inputs) / (time.perf_counter() - t0)
    nv = min(cfg["verify"], len(inputs))
    signed = [sigs[i] + inputs[i] for i in range(nv)]
    t0 = time.perf_counter()
    for sm in signed:
        nacl.bindings.crypto_sign_open(sm, pk)
    verify_rate = nv / (time.perf_counter() - t0)
    return {"ed25519_sign_per_s": sign_rate, "ed25519_verify_per_s": verify_rate}


def small_op_limits(cfg: dict, bodies: list[bytes]) -> dict[str, float]:
    sha = hashlib.sha256
    reps = max(1, cfg["hash"] // len(bodies))
    t0 = time.perf_counter()
    for _ in range(reps):
        for b in bodies:
            sha(b).digest()
    hash_rate = reps * len(bodies) / (time.perf_counter() - t0)
    payloads = [payload(i) for i in range(1000)]
    reps = max(1, cfg["dumps"] // len(payloads))
    dumps, opt = orjson.dumps, orjson.OPT_SORT_KEYS
    t0 = time.perf_counter()
    for _ in range(reps):
        for p in payloads:
            dumps(p, option=opt)
    dumps_rate = reps * len(payloads) / (time.perf_counter() - t0)
    return {
        "sha256_per_s": hash_rate,
        "sha256_body_bytes": sum(map(len, bodies)) / len(bodies),
        "orjson_dumps_per_s": dumps_rate,
    }


# ---------------------------------------------------------------------------------- kachery
def bench_single(tmp: Path, n: int, repeat: int, durability: str = "normal") -> dict[str, Any]:
    """Durable single appends: each ``append_message`` returns after its commit. Best of
    ``repeat`` runs, each on a fresh store."""
    runs = []
    for r in range(repeat):
        store = kf.open_store(tmp / f"single-{durability}-{r}.sqlite", durability=durability)
        sf = store.create_feed().load_subfeed("single")
        data = [payload(i) for i in range(n)]
        sf.append_message(payload(-1))  # creates the subfeed row; not timed
        settle()
        t0 = time.perf_counter()
        for p in data:
            sf.append_message(p)
        runs.append(n / (time.perf_counter() - t0))
        store.close()
    return {"single_appends": n, "single_appends_per_s": max(runs), "single_appends_runs": runs}


def bench_batch(tmp: Path, batches: int, repeat: int) -> dict[str, Any]:
    """``append_messages`` with 1000 payloads per call. Best of ``repeat`` fresh-store runs."""
    runs = []
    for r in range(repeat):
        store = kf.open_store(tmp / f"batch-{r}.sqlite")
        sf = store.create_feed().load_subfeed("batch")
        data = [[payload(b * 1000 + i) for i in range(1000)] for b in range(batches)]
        sf.append_message(payload(-1))
        settle()
        t0 = time.perf_counter()
        for batch in data:
            sf.append_messages(batch)
        runs.append(batches * 1000 / (time.perf_counter() - t0))
        store.close()
    return {
        "batch_messages": batches * 1000,
        "batch_messages_per_s": max(runs),
        "batch_messages_runs": runs,
    }


def worker_cmd(*args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *args]


def bench_follow_latency(tmp: Path, n: int, interval_ms: float) -> dict[str, Any]:
    """Writer process appends n messages (send time in the payload); follower process records
    arrival - send with time.time_ns (one machine, one clock)."""
    db = tmp / "latency.sqlite"
    store = kf.open_store(db)
    sf = store.create_feed().load_subfeed("latency")
    sf.append_message({"warmup": True})  # message 0: the follower's "ready" point
    uri = sf.uri
    store.close()
    out = tmp / "latency-follower.json"
    settle()
    wout = tmp / "latency-writer.json"
    follower = subprocess.Popen(
        worker_cmd("_follower", str(db), uri, str(n), str(out)), stdout=subprocess.PIPE, text=True
    )
    try:
        line = follower.stdout.readline()  # type: ignore[union-attr]
        if line.strip() != "ready":
            raise RuntimeError(f"follower did not start: {line!r}")
        subprocess.run(
            worker_cmd("_writer", str(db), uri, str(n), str(interval_ms), str(wout)),
            check=True,
            timeout=120 + n * interval_ms / 1000 * 5,
        )
        follower.wait(timeout=60)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    lat = sorted(json.loads(out.read_text())["latencies_ms"])
    wr = json.loads(wout.read_text())
    return {
        "follow_messages": n,
        "follow_received": len(lat),
        "follow_interval_ms": interval_ms,
        "follow_p50_ms": percentile(lat, 50),
        "follow_p99_ms": percentile(lat, 99),
        "follow_max_ms": lat[-1] if lat else None,
        "follow_writer_append_p50_ms": wr["append_p50_ms"],
        "follow_writer_append_p99_ms": wr["append_p99_ms"],
    }


def _follower(db: str, uri: str, n: str, out: str) -> None:
    store = kf.open_store(db)
    sf = store.load_subfeed(uri)
    want = int(n)
    lat: list[float] = []
    it = sf.follow(start=0, timeout=30)
    next(it)  # the warm-up message: the watcher is armed from here on
    print("ready", flush=True)
    for p in it:
        lat.append((time.time_ns() - p["t_ns"]) / 1e6)
        if len(lat) >= want:
            break
    Path(out).write_text(json.dumps({"latencies_ms": lat}))


def _writer(db: str, uri: str, n: str, interval_ms: str, out: str) -> None:
    store = kf.open_store(db)
    sf = store.load_subfeed(uri)
    pad = "x" * (PAYLOAD_BYTES - 48)
    interval = float(interval_ms) / 1000
    took = []
    time.sleep(0.1)
    next_at = time.perf_counter()
    for i in range(int(n)):
        t0 = time.perf_counter()
        sf.append_message({"i": i, "t_ns": time.time_ns(), "data": pad})
        took.append((time.perf_counter() - t0) * 1000)
        next_at += interval
        delay = next_at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    took.sort()
    Path(out).write_text(
        json.dumps({"append_p50_ms": percentile(took, 50), "append_p99_ms": percentile(took, 99)})
    )


def bench_import(tmp: Path, n: int) -> dict[str, Any]:
    """Verified import of n messages into a fresh store: batch-signed and individually signed."""
    src = kf.open_store(tmp / "import-src.sqlite")
    feed = src.create_feed()
    res: dict[str, Any] = {"import_messages": n}

    log(f"  building {n} messages with batch appends of 1000")
    batched = feed.load_subfeed("batched")
    for b in range(0, n, 1000):
        batched.append_messages([payload(i) for i in range(b, min(n, b + 1000))])
    log(f"  building {n} messages with individual appends")
    single = feed.load_subfeed("single")
    t0 = time.perf_counter()
    for i in range(n):
        single.append_message(payload(i))
    res["build_individual_appends_per_s"] = n / (time.perf_counter() - t0)

    schema = messages_schema(tmp / "import-src.sqlite")
    for tag, sf in (("batched", batched), ("individual", single)):
        lines = sf.get_signed_messages()
        assert len(lines) == n, (tag, len(lines))
        rows = rows_from_wire(lines)
        # Raw insert and import alternate (3 times for the SQLite-bound batch-signed case, twice
        # for the CPU-bound signed one); the best of each counts: the machine is shared and its
        # disk writeback noisy, and a limit is a ceiling. CPU-time rates are kept too.
        raw, raw_cpu, imp, imp_cpu = [], [], [], []
        for attempt in range(3 if tag == "batched" else 2):
            wall, cpu = raw_insert_rate(tmp, schema, rows, f"{tag}-{attempt}")
            raw.append(wall)
            raw_cpu.append(cpu)
            dst = kf.open_store(tmp / f"import-dst-{tag}-{attempt}.sqlite")
            target = dst.load_subfeed(sf.uri)
            settle()
            t0, c0 = time.perf_counter(), time.process_time()
            added = target.add_signed_messages(lines)
            secs, cpu = time.perf_counter() - t0, time.process_time() - c0
            assert added == n, (tag, added)
            imp.append(n / secs)
            imp_cpu.append(n / max(cpu, 1e-9))
            dst.close()
        res[f"raw_insert_{tag}_per_s"] = max(raw)
        res[f"import_{tag}_per_s"] = max(imp)
        res[f"raw_insert_{tag}_cpu_per_s"] = max(raw_cpu)
        res[f"import_{tag}_cpu_per_s"] = max(imp_cpu)
        res[f"raw_insert_{tag}_runs"] = raw
        res[f"import_{tag}_runs"] = imp
        res[f"signed_fraction_{tag}"] = sum(1 for _b, s in rows if s) / n
        if tag == "batched":
            res["body_bytes_mean"] = sum(len(b) for b, _s in rows) / n
            res["_bodies"] = [b for b, _s in rows[:1000]]
            res["_schema"] = schema
        else:
            res["_rows"] = rows  # every row signed, like single appends
    src.close()
    return res


def bench_follow_memory(tmp: Path, n: int) -> dict[str, Any]:
    db = tmp / "follow-mem.sqlite"
    store = kf.open_store(db)
    sf = store.create_feed().load_subfeed("big")
    log(f"  building {n} messages with batch appends of 1000")
    t0 = time.perf_counter()
    for b in range(0, n, 1000):
        sf.append_messages([payload(i) for i in range(b, min(n, b + 1000))])
    build_rate = n / (time.perf_counter() - t0)
    uri = sf.uri
    store.close()
    out = tmp / "follow-mem.json"
    settle()
    subprocess.run(worker_cmd("_follow_memory", str(db), uri, str(out)), check=True, timeout=1800)
    res = json.loads(out.read_text())
    assert res["count"] == n, res
    # The same read through iter_messages (streaming) and get_messages (everything in a list).
    for how in ("iter", "list"):
        settle()
        subprocess.run(worker_cmd("_follow_memory", str(db), uri, str(out), how), check=True, timeout=1800)
        other = json.loads(out.read_text())
        assert other["count"] == n, other
        res[how] = other
    res["build_batch_per_s"] = build_rate
    res["db_mb"] = db.stat().st_size / 1e6
    return res


def _follow_memory(db: str, uri: str, out: str, how: str = "follow") -> None:
    """Read the whole subfeed in a fresh process: ``follow`` (the default), ``iter``
    (``iter_messages``) or ``list`` (``get_messages``); write count, peak RSS and rate."""
    def maxrss_mb() -> float:
        # VmHWM is this program image's own peak RSS. ru_maxrss is not: Linux carries the
        # parent's high-water mark across fork + exec, which would count the bench runner.
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    store = kf.open_store(db)
    sf = store.load_subfeed(uri)
    gc.collect()
    baseline = maxrss_mb()
    count = 0
    t0 = time.perf_counter()
    if how == "follow":
        for _p in sf.follow(start=0, timeout=0.5):
            count += 1
        secs = time.perf_counter() - t0 - 0.5  # the idle timeout at the end is not reading
    elif how == "iter":
        for _p in sf.iter_messages():
            count += 1
        secs = time.perf_counter() - t0
    else:
        count = len(sf.get_messages())
        secs = time.perf_counter() - t0
    peak = maxrss_mb()
    Path(out).write_text(
        json.dumps(
            {
                "count": count,
                "baseline_rss_mb": baseline,
                "peak_rss_mb": peak,
                "delta_rss_mb": peak - baseline,
                "read_per_s": count / max(secs, 1e-9),
            }
        )
    )


# ---------------------------------------------------------------------------------- hypercore
def run_hypercore(tmp: Path, quick: bool) -> dict[str, Any] | None:
    return run_hypercore_bench(tmp, ["--quick"] if quick else [], log)


# ---------------------------------------------------------------------------------- report
def fmt_rate(x: float | None) -> str:
    if x is None:
        return "n/a"
    if x >= 1e6:
        return f"{x / 1e6:.2f}M/s"
    if x >= 1e4:
        return f"{x / 1e3:.0f}k/s"
    if x >= 1e3:
        return f"{x / 1e3:.1f}k/s"
    return f"{x:.0f}/s"


def fmt_ms(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f} ms"


def fmt_ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}x"


def div(a: float | None, b: float | None) -> float | None:
    return None if a is None or b in (None, 0) else a / b


def build_rows(k: dict, h: dict | None, lim: dict) -> list[dict[str, Any]]:
    h = h or {}
    rows = []

    def add(metric, kv, hv, ratio, limit, target, met, kfmt=fmt_rate, hfmt=fmt_rate):
        rows.append(
            {
                "metric": metric,
                "kachery": kv,
                "hypercore": hv,
                "ratio": ratio,
                "limit": limit,
                "target": target,
                "met": met,
                "_kfmt": kfmt,
                "_hfmt": hfmt,
            }
        )

    r = div(k["single_appends_per_s"], h.get("single_appends_per_s"))
    floor = 1 / (1 / lim["ed25519_sign_per_s"] + 1 / lim["commit_per_row_per_s"])
    add(
        "durable single appends/s", k["single_appends_per_s"], h.get("single_appends_per_s"), r,
        f"sign+commit/row {fmt_rate(floor)} ({fmt_ratio(k['single_appends_per_s'] / floor)})",
        ">= 2x hypercore", None if r is None else r >= 2,
    )  # fmt: skip
    r = div(k["batch_messages_per_s"], h.get("batch_blocks_per_s"))
    add(
        "batch appends (1000/call), msgs/s", k["batch_messages_per_s"], h.get("batch_blocks_per_s"),
        r, f"raw insert {fmt_rate(lim['raw_insert_batched_per_s'])} "
        f"({fmt_ratio(k['batch_messages_per_s'] / lim['raw_insert_batched_per_s'])})",
        ">= 1x hypercore", None if r is None else r >= 1,
    )  # fmt: skip
    add(
        "follow latency p50 (cross-process)", k["follow_p50_ms"], h.get("tail_event_p50_ms"),
        div(k["follow_p50_ms"], h.get("tail_event_p50_ms")), "-", "<= 5 ms (p50)",
        k["follow_p50_ms"] <= 5, fmt_ms, fmt_ms,
    )  # fmt: skip
    add(
        "follow latency p99 (cross-process)", k["follow_p99_ms"], h.get("tail_event_p99_ms"),
        div(k["follow_p99_ms"], h.get("tail_event_p99_ms")), "-", "<= 50 ms (p99)",
        k["follow_p99_ms"] <= 50, fmt_ms, fmt_ms,
    )  # fmt: skip
    rl = k["import_batched_per_s"] / k["raw_insert_batched_per_s"]
    add(
        f"verified import {k['import_messages'] // 1000}k, batch-signed",
        k["import_batched_per_s"], h.get("repl_small_blocks_per_s"),
        div(k["import_batched_per_s"], h.get("repl_small_blocks_per_s")),
        f"raw insert {fmt_rate(k['raw_insert_batched_per_s'])} ({fmt_ratio(rl)})",
        ">= 0.5x raw insert", rl >= 0.5,
    )  # fmt: skip
    rl = k["import_individual_per_s"] / lim["ed25519_verify_per_s"]
    add(
        f"verified import {k['import_messages'] // 1000}k, each signed",
        k["import_individual_per_s"], None, None,
        f"ed25519 verify {fmt_rate(lim['ed25519_verify_per_s'])} ({fmt_ratio(rl)})",
        ">= 0.6x raw verify", rl >= 0.6,
    )  # fmt: skip
    mem = k["follow_mem"]
    add(
        f"follow {mem['count'] // 1000}k msgs: peak RSS", mem["peak_rss_mb"], None, None,
        f"baseline {mem['baseline_rss_mb']:.1f} MB, +{mem['delta_rss_mb']:.1f} MB",
        "<= 100 MB", mem["peak_rss_mb"] <= 100, lambda x: f"{x:.1f} MB", lambda x: "-",
    )  # fmt: skip
    for how, what in (("iter", "iter_messages"), ("list", "get_messages")):
        if how in mem:
            m = mem[how]
            add(
                f"{what} {m['count'] // 1000}k msgs: peak RSS", m["peak_rss_mb"], None, None,
                f"baseline {m['baseline_rss_mb']:.1f} MB, +{m['delta_rss_mb']:.1f} MB; "
                f"{fmt_rate(m['read_per_s'])}",
                "<= 100 MB" if how == "iter" else "(loads all; documented)",
                m["peak_rss_mb"] <= 100 if how == "iter" else None,
                lambda x: f"{x:.1f} MB", lambda x: "-",
            )  # fmt: skip
    return rows


def render(result: dict) -> str:
    k, h, lim = result["kachery"], result.get("hypercore"), result["limits"]
    out = []
    m = result["machine"]
    out.append(
        f"kachery_feeds vs hypercore — {result['date']} — {m['cpu']} x{m['cpus']}, "
        f"Python {m['python']}, SQLite {m['sqlite']}, PyNaCl {m['pynacl']}"
        + (f", hypercore {h['hypercore_version']} on node {h['node_version']}" if h else ", no hypercore")
        + (" — QUICK (smoke sizes, not comparable)" if result["quick"] else "")
    )
    out.append(
        f"payload {PAYLOAD_BYTES} B JSON (stored body ~{k['body_bytes_mean']:.0f} B); "
        "hypercore blocks of 256 B"
    )
    out.append("")
    rows = build_rows(k, h, lim)
    out.append(
        table(
            ["metric", "kachery", "hypercore", "ratio", "physical limit (this run)", "target", "met?"],
            [
                [
                    r["metric"],
                    r["_kfmt"](r["kachery"]),
                    "-" if r["hypercore"] is None else r["_hfmt"](r["hypercore"]),
                    "-" if r["ratio"] is None else fmt_ratio(r["ratio"]),
                    r["limit"],
                    r["target"],
                    "n/a" if r["met"] is None else ("yes" if r["met"] else "NO"),
                ]
                for r in rows
            ],
        )
    )
    out.append("")
    out.append(
        "ratio = kachery / hypercore. Latency: hypercore is in-process (append -> replica "
        "'append' event), kachery is writer process -> follower process, so the ratio says how "
        "far we are. Import rows: the hypercore column is its in-process replication of "
        f"{h['repl_small_blocks'] if h else 'n/a'} 256-B blocks (verify + store), for context; the "
        "target is judged against the limit."
    )
    out.append(
        f"follow latency: kachery writer append_message itself p50 "
        f"{fmt_ms(k['follow_writer_append_p50_ms'])}, p99 {fmt_ms(k['follow_writer_append_p99_ms'])}"
        f"; hypercore replica core.get p50 {fmt_ms(h and h.get('tail_get_p50_ms'))}, "
        f"p99 {fmt_ms(h and h.get('tail_get_p99_ms'))}"
    )
    runs = lambda xs: ", ".join(fmt_rate(x) for x in xs) if xs else "n/a"  # noqa: E731
    out.append(
        f"appends, every run (the best counts): single kachery {runs(k['single_appends_runs'])}"
        f" / hypercore {runs(h and h.get('single_appends_runs'))}; batch kachery "
        f"{runs(k['batch_messages_runs'])} / hypercore {runs(h and h.get('batch_blocks_runs'))}"
    )
    out.append(
        f"verified import by CPU time instead of wall time (less sensitive to disk writeback): "
        f"batch-signed {fmt_rate(k['import_batched_cpu_per_s'])} vs raw insert "
        f"{fmt_rate(k['raw_insert_batched_cpu_per_s'])} "
        f"({fmt_ratio(k['import_batched_cpu_per_s'] / k['raw_insert_batched_cpu_per_s'])}); "
        f"runs (wall): import {', '.join(fmt_rate(x) for x in k['import_batched_runs'])}, "
        f"raw {', '.join(fmt_rate(x) for x in k['raw_insert_batched_runs'])}"
    )
    out.append("")
    out.append("Physical limits, measured in this run (one core, Python):")
    lrows = [
        ["Ed25519 sign (nacl.bindings.crypto_sign, 56 B input)", lim["ed25519_sign_per_s"]],
        ["Ed25519 verify (crypto_sign_open)", lim["ed25519_verify_per_s"]],
        [f"SHA-256 of one body (~{lim['sha256_body_bytes']:.0f} B)", lim["sha256_per_s"]],
        ["orjson dumps of one payload (sorted keys)", lim["orjson_dumps_per_s"]],
        ["sqlite3 insert, same rows, one txn (batch-signed rows)", lim["raw_insert_batched_per_s"]],
        ["sqlite3 insert, same rows, one txn (signed rows)", lim["raw_insert_individual_per_s"]],
        ["sqlite3 one commit per row (WAL, NORMAL)", lim["commit_per_row_per_s"]],
    ]
    out.append(
        table(
            ["limit", "rate", "per op"],
            [[name, fmt_rate(v), f"{1e6 / v:.2f} us"] for name, v in lrows],
        )
    )
    out.append("")
    extra = [
        ["kachery: individual appends building the import source",
         fmt_rate(k["build_individual_appends_per_s"])],
        ["kachery: batch appends building the follow subfeed",
         fmt_rate(k["follow_mem"]["build_batch_per_s"])],
        ["kachery: follow read rate (start to end)", fmt_rate(k["follow_mem"]["read_per_s"])],
        ["kachery: single appends with durability='full' (fsync per commit)",
         fmt_rate(k["single_appends_full_per_s"])],
    ]  # fmt: skip
    if h:
        extra += [
            [f"hypercore: replication {h['repl_small_blocks'] // 1000}k x 256 B (issue 5)",
             f"{fmt_rate(h['repl_small_blocks_per_s'])} ({h['repl_small_mb_per_s']:.2f} MB/s)"],
            [f"hypercore: replication 64 KiB blocks, {h['repl_big_blocks'] * 64 // 1024} MiB (issue 5)",
             f"{h['repl_big_mb_per_s']:.0f} MB/s"],
            ["hypercore: append 64 KiB blocks, batches of 16", f"{h['big_append_mb_per_s']:.0f} MB/s"],
        ]  # fmt: skip
    out.append(table(["other figures", "value"], extra))
    return "\n".join(out)


def machine_info() -> dict[str, Any]:
    import nacl

    return {**common_machine_info(), "sqlite": sqlite3.sqlite_version, "pynacl": nacl.__version__,
            "orjson": orjson.__version__}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test, < 30 s)")
    ap.add_argument("--no-hypercore", action="store_true", help="skip the Node.js hypercore side")
    ap.add_argument("--json", metavar="PATH", help="also write all results as JSON")
    ap.add_argument("--tmp", metavar="DIR", help="parent folder for the temporary stores")
    args = ap.parse_args()
    cfg = QUICK if args.quick else FULL
    t_start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="kachery-bench-", dir=args.tmp))
    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": args.quick,
        "config": cfg,
        "machine": machine_info(),
    }
    try:
        h = None
        if not args.no_hypercore:
            log("hypercore (node)")
            h = run_hypercore(tmp, args.quick)
        result["hypercore"] = h

        log("physical limits: ed25519")
        lim: dict[str, Any] = crypto_limits(cfg)
        k: dict[str, Any] = {}
        log("kachery: verified import (builds its sources, measures raw inserts of the same rows)")
        k.update(bench_import(tmp, cfg["import"]))
        bodies, rows, schema = k.pop("_bodies"), k.pop("_rows"), k.pop("_schema")
        log("physical limits: sha256, orjson, commit per row")
        lim.update(small_op_limits(cfg, bodies))
        lim["commit_per_row_per_s"] = commit_per_row_rate(tmp, schema, rows[: cfg["commit_rows"]])
        lim["raw_insert_batched_per_s"] = k["raw_insert_batched_per_s"]
        lim["raw_insert_individual_per_s"] = k["raw_insert_individual_per_s"]
        log("kachery: single appends")
        k.update(bench_single(tmp, cfg["single"], cfg["repeat"]))
        log("kachery: single appends, durability='full'")
        k["single_appends_full_per_s"] = bench_single(tmp, cfg["single"] // 5, 1, "full")[
            "single_appends_per_s"
        ]
        log("kachery: batch appends")
        k.update(bench_batch(tmp, cfg["batches"], cfg["repeat"]))
        log("kachery: follow latency (2 processes)")
        k.update(bench_follow_latency(tmp, cfg["tail"], cfg["tail_interval_ms"]))
        log("kachery: follow memory")
        k["follow_mem"] = bench_follow_memory(tmp, cfg["follow_mem"])
        result["limits"] = lim
        result["kachery"] = k
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["rows"] = [
        {key: v for key, v in r.items() if not key.startswith("_")}
        for r in build_rows(result["kachery"], result["hypercore"], result["limits"])
    ]
    result["seconds"] = time.perf_counter() - t_start
    print(render(result))
    print(f"\n(total {result['seconds']:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("_follower", "_writer", "_follow_memory"):
        globals()[sys.argv[1]](*sys.argv[2:])
    else:
        main()
