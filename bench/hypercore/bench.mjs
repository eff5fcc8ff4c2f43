// Side-by-side hypercore measurements for bench/feeds/run.py (kachery issues 2 and 5).
//
// Usage: node bench.mjs [--quick] [--dir TMPDIR] [--block-size 256]
//        [--single N] [--batches N] [--tail N] [--tail-interval-ms 2]
//        [--repl-blocks N] [--big-mib N] [--repeat N]
// Prints exactly one JSON object on stdout (progress goes to stderr).
//
// Everything runs in this one process on disk storage in a temporary folder:
//   single_appends_per_s   `await core.append(block)` one at a time (each call signs and commits)
//   batch_blocks_per_s     `await core.append([1000 blocks])`
//                          (both: best of --repeat runs on fresh cores; every run is in *_runs)
//   tail_*                 live tail: append on the writer -> replica sees it, over an in-process
//                          replication stream pair (a.replicate(true) <-> b.replicate(false));
//                          "append event" = replica's 'append' event, "get" = core.get(i) on the
//                          replica resolved (the block's bytes are there)
//   repl_small_*           full replication of N 256-byte blocks (written in batches of 1000)
//                          to an empty replica over a stream pair, until download().done()
//   repl_big_*             same with 64 KiB blocks (written in batches of 16), reported in MB/s
import Hypercore from 'hypercore'
import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'

const args = process.argv.slice(2)
const quick = args.includes('--quick')
function opt (name, dflt) {
  const i = args.indexOf(name)
  if (i < 0) return dflt
  const v = args[i + 1]
  return typeof dflt === 'number' ? Number(v) : v
}

const cfg = {
  quick,
  block_size: opt('--block-size', 256),
  single: opt('--single', quick ? 300 : 5000),
  batch_size: 1000,
  batches: opt('--batches', quick ? 5 : 100),
  tail: opt('--tail', quick ? 200 : 2000),
  tail_interval_ms: opt('--tail-interval-ms', 2),
  repl_blocks: opt('--repl-blocks', quick ? 5000 : 100000),
  big_block_size: 64 * 1024,
  big_batch: 16,
  big_mib: opt('--big-mib', quick ? 16 : 256),
  repeat: opt('--repeat', quick ? 1 : 2) // single and batch appends: best of this many runs
}

const root = fs.mkdtempSync(path.join(opt('--dir', os.tmpdir()), 'hcbench-'))
let dirCount = 0
const newDir = () => path.join(root, `core${dirCount++}`)
const log = (...a) => console.error('[hypercore]', ...a)
const now = () => Number(process.hrtime.bigint()) / 1e6 // ms, monotonic
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

function blocks (n, size) {
  const out = new Array(n)
  for (let i = 0; i < n; i++) out[i] = crypto.randomBytes(size)
  return out
}

function percentile (sorted, p) {
  if (!sorted.length) return null
  const k = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))
  return sorted[k]
}

function summarize (values) {
  const s = [...values].sort((a, b) => a - b)
  return {
    n: s.length,
    p50_ms: percentile(s, 50),
    p99_ms: percentile(s, 99),
    max_ms: s.length ? s[s.length - 1] : null,
    mean_ms: s.length ? s.reduce((x, y) => x + y, 0) / s.length : null
  }
}

async function openCore (key) {
  const core = key ? new Hypercore(newDir(), key) : new Hypercore(newDir())
  await core.ready()
  return core
}

function connect (a, b) {
  const s1 = a.replicate(true)
  const s2 = b.replicate(false)
  s1.pipe(s2).pipe(s1)
  return () => { s1.destroy(); s2.destroy() }
}

async function benchSingle () {
  const core = await openCore()
  const data = blocks(cfg.single, cfg.block_size)
  const t0 = now()
  for (const b of data) await core.append(b)
  const secs = (now() - t0) / 1000
  await core.close()
  return { single_appends: cfg.single, single_appends_per_s: cfg.single / secs }
}

async function benchBatch () {
  const core = await openCore()
  const data = []
  for (let i = 0; i < cfg.batches; i++) data.push(blocks(cfg.batch_size, cfg.block_size))
  const t0 = now()
  for (const batch of data) await core.append(batch)
  const secs = (now() - t0) / 1000
  await core.close()
  const n = cfg.batches * cfg.batch_size
  return { batch_blocks: n, batch_blocks_per_s: n / secs, batch_calls_per_s: cfg.batches / secs }
}

async function benchTail () {
  const writer = await openCore()
  await writer.append(crypto.randomBytes(cfg.block_size)) // so the replica has something to sync
  const replica = await openCore(writer.key)
  const disconnect = connect(writer, replica)
  replica.download({ start: 0, end: -1 }) // follow the live tail (non-sparse)
  await replica.get(0, { timeout: 10000 })

  const sent = new Map() // index -> send time (ms)
  const eventLat = []
  const getLat = []
  let seen = replica.length
  const pending = []
  replica.on('append', () => {
    const t = now()
    for (let i = seen; i < replica.length; i++) {
      const t0 = sent.get(i)
      if (t0 !== undefined) eventLat.push(t - t0)
      pending.push(replica.get(i, { timeout: 10000 }).then(() => {
        const t0g = sent.get(i)
        if (t0g !== undefined) getLat.push(now() - t0g)
      }))
    }
    seen = Math.max(seen, replica.length)
  })

  const data = blocks(cfg.tail, cfg.block_size)
  for (let i = 0; i < cfg.tail; i++) {
    sent.set(writer.length, now())
    await writer.append(data[i])
    await sleep(cfg.tail_interval_ms)
  }
  const deadline = now() + 10000
  while (getLat.length < cfg.tail && now() < deadline) await sleep(5)
  await Promise.allSettled(pending)
  disconnect()
  await replica.close()
  await writer.close()
  const ev = summarize(eventLat)
  const gt = summarize(getLat)
  return {
    tail_messages: cfg.tail,
    tail_interval_ms: cfg.tail_interval_ms,
    tail_event_p50_ms: ev.p50_ms,
    tail_event_p99_ms: ev.p99_ms,
    tail_event_max_ms: ev.max_ms,
    tail_event_n: ev.n,
    tail_get_p50_ms: gt.p50_ms,
    tail_get_p99_ms: gt.p99_ms,
    tail_get_max_ms: gt.max_ms,
    tail_get_n: gt.n
  }
}

async function benchReplication (nBlocks, blockSize, batch) {
  const source = await openCore()
  for (let i = 0; i < nBlocks; i += batch) {
    await source.append(blocks(Math.min(batch, nBlocks - i), blockSize))
  }
  const replica = await openCore(source.key)
  const t0 = now()
  const disconnect = connect(source, replica)
  await replica.download({ start: 0, end: nBlocks }).done()
  const secs = (now() - t0) / 1000
  const ok = replica.contiguousLength === nBlocks
  disconnect()
  await replica.close()
  await source.close()
  return { blocks: nBlocks, secs, blocks_per_s: nBlocks / secs, mb_per_s: (nBlocks * blockSize) / 1e6 / secs, complete: ok }
}

async function benchBigAppend (nBlocks) {
  const core = await openCore()
  const data = []
  for (let i = 0; i < nBlocks; i += cfg.big_batch) data.push(blocks(Math.min(cfg.big_batch, nBlocks - i), cfg.big_block_size))
  const t0 = now()
  for (const b of data) await core.append(b)
  const secs = (now() - t0) / 1000
  await core.close()
  return (nBlocks * cfg.big_block_size) / 1e6 / secs
}

async function main () {
  const out = {
    tool: 'hypercore',
    hypercore_version: JSON.parse(fs.readFileSync(new URL('./node_modules/hypercore/package.json', import.meta.url))).version,
    node_version: process.version,
    config: cfg
  }
  try {
    out.single_appends_runs = []
    out.batch_blocks_runs = []
    for (let r = 0; r < cfg.repeat; r++) {
      log('single appends'); out.single_appends_runs.push((await benchSingle()).single_appends_per_s)
      log('batch appends'); out.batch_blocks_runs.push((await benchBatch()).batch_blocks_per_s)
    }
    out.single_appends = cfg.single
    out.single_appends_per_s = Math.max(...out.single_appends_runs)
    out.batch_blocks = cfg.batches * cfg.batch_size
    out.batch_blocks_per_s = Math.max(...out.batch_blocks_runs)
    log('live tail'); Object.assign(out, await benchTail())
    log('replication, small blocks')
    const small = await benchReplication(cfg.repl_blocks, cfg.block_size, cfg.batch_size)
    Object.assign(out, {
      repl_small_blocks: small.blocks,
      repl_small_blocks_per_s: small.blocks_per_s,
      repl_small_mb_per_s: small.mb_per_s,
      repl_small_complete: small.complete
    })
    const bigBlocks = Math.round((cfg.big_mib * 1024 * 1024) / cfg.big_block_size)
    log('append, 64 KiB blocks'); out.big_append_mb_per_s = await benchBigAppend(bigBlocks)
    log('replication, 64 KiB blocks')
    const big = await benchReplication(bigBlocks, cfg.big_block_size, cfg.big_batch)
    Object.assign(out, {
      repl_big_blocks: big.blocks,
      repl_big_block_size: cfg.big_block_size,
      repl_big_mb_per_s: big.mb_per_s,
      repl_big_complete: big.complete
    })
  } finally {
    fs.rmSync(root, { recursive: true, force: true })
  }
  process.stdout.write(JSON.stringify(out) + '\n')
}

main().then(() => process.exit(0), (err) => {
  console.error(err)
  process.exit(1)
})
