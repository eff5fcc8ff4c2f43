// Cross-check against live output of the Python implementation (js/test/py/live_fixture.py):
// kachery.js verifies what Python wrote, and refuses tampered copies. The Python interpreter is
// $KACHERY_PYTHON, else the repository's .venv, else python3.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createServer } from 'node:http';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import * as k from '../src/index.js';

const REPO = fileURLToPath(new URL('../../', import.meta.url));
const PYTHON = process.env.KACHERY_PYTHON
  || (existsSync(join(REPO, '.venv/bin/python')) ? join(REPO, '.venv/bin/python') : 'python3');
let py;
let fx;
let work;
let lines;
let server;
let bucketUrl;
const overrides = new Map(); // key -> bytes served instead of the stored object

function tamperLine(line) {
  // Change a payload digit in the body; keep the signature.
  return line.replace(/"i":(\d+)/, (_m, d) => `"i":${Number(d) + 1}`);
}

async function command(cmd) {
  py.stdin.write(cmd + '\n');
  const { value } = await lines.next();
  return JSON.parse(value);
}

before(async () => {
  work = mkdtempSync(join(tmpdir(), 'kachery-js-'));
  py = spawn(PYTHON, [join(REPO, 'js/test/py/live_fixture.py'), work], { stdio: ['pipe', 'pipe', 'inherit'], cwd: REPO });
  lines = createInterface({ input: py.stdout })[Symbol.asyncIterator]();
  const timer = setTimeout(() => py.kill(), 120_000);
  const first = await lines.next();
  clearTimeout(timer);
  assert.ok(!first.done, 'the Python fixture printed nothing');
  fx = JSON.parse(first.value);
  server = createServer((req, res) => {
    const key = decodeURIComponent(new URL(req.url, 'http://x').pathname.replace(/^\/bucket\//, ''));
    let data = overrides.get(key);
    if (data === undefined) {
      const path = join(fx.bucket_dir, ...key.split('/'));
      if (key.split('/').includes('..') || !existsSync(path)) {
        res.writeHead(404).end();
        return;
      }
      data = readFileSync(path);
    }
    res.writeHead(200, { 'content-type': 'application/octet-stream' }).end(data);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  bucketUrl = `http://127.0.0.1:${server.address().port}/bucket`;
});

after(async () => {
  py?.stdin.end('quit\n');
  await new Promise((r) => (py.exitCode !== null ? r() : py.once('exit', r)));
  server?.close();
  if (work) rmSync(work, { recursive: true, force: true });
});

test('wire lines from Python verify as a range; payloads match', async () => {
  const msgs = await k.verifyRange(fx.lines, fx.feed_id, fx.subfeed_hash);
  assert.equal(msgs.length, 1501);
  assert.deepEqual(msgs.map((m) => m.payload), fx.payloads);
  assert.equal(msgs.filter((m) => m.signature !== null).length, 3); // single, end of batch, single
  assert.deepEqual(msgs[1500].metadata, { by: 'test' });
  assert.equal(await k.subfeedHash('live'), fx.subfeed_hash);
  const parsed = await k.parseFeedUri(fx.object_name_uri);
  assert.equal(parsed.subfeedHash, fx.object_name_hash);
  assert.equal(await k.subfeedHash({ sortingId: 3, name: 'curation' }), fx.object_name_hash);
  await k.verifyRange(fx.object_name_lines, fx.feed_id, fx.object_name_hash);
});

test('tampered copies of the wire lines are refused', async () => {
  const inBatch = fx.lines.slice();
  inBatch[700] = tamperLine(inBatch[700]);
  await assert.rejects(k.verifyRange(inBatch, fx.feed_id, fx.subfeed_hash), k.VerificationError);
  const last = fx.lines.slice(0, 1);
  last[0] = tamperLine(last[0]);
  await assert.rejects(k.verifyRange(last, fx.feed_id, fx.subfeed_hash), /bad signature/);
  await assert.rejects(k.verifyRange(fx.lines.slice(0, 700), fx.feed_id, fx.subfeed_hash), /not signed/);
  await assert.rejects(k.verifyRange(fx.lines, fx.feed_id, await k.subfeedHash('other')), k.VerificationError);
});

test('segments and heads exported by Python', async () => {
  const seg = k.decodeSegment(k.utf8(fx.segment0));
  assert.equal(seg.length, 1000);
  const head = k.parseHead(fx.head);
  assert.equal(head.count, fx.count);
  const v = new k.SubfeedVerifier(fx.feed_id, fx.subfeed_hash);
  assert.equal((await v.add(seg)).length, 1); // message 0 is signed; 1..999 wait for the batch's signature
  assert.equal((await v.add(head.tail)).length, fx.count - 1);
  await assert.rejects(async () => k.verifyRange(k.decodeSegment(k.utf8(fx.segment0.slice(0, -1))), fx.feed_id, fx.subfeed_hash), /torn|newline/);
});

test('a fork proof made by Python verifies; a tampered one does not', async () => {
  const info = await k.verifyForkProof(fx.fork_proof);
  assert.equal(info.position, fx.fork_position);
  assert.equal(info.feedId, fx.feed_id);
  const d = JSON.parse(fx.fork_proof);
  d.b[d.b.length - 1] = d.b[d.b.length - 1].replace('three', 'four');
  await assert.rejects(k.verifyForkProof(JSON.stringify(d)), k.VerificationError);
  const same = { ...JSON.parse(fx.fork_proof) };
  same.b = same.a;
  await assert.rejects(k.verifyForkProof(JSON.stringify(same)), /do not conflict/);
});

test('a feed whose key Python rotated and recovered: verified under the key of each position', async () => {
  const R = fx.rotated;
  const msgs = await k.verifyRange(R.lines, R.feed_id, R.subfeed_hash);
  assert.deepEqual(msgs.map((m) => m.payload), R.payloads);
  assert.deepEqual(msgs.map((m) => m.succession?.length ?? 0), [0, 0, 0, 0, 0, 1, 0, 2, 3]);
  const v = new k.SubfeedVerifier(R.feed_id, R.subfeed_hash);
  assert.equal((await v.add(R.lines)).length, 9);
  assert.deepEqual(v.chain.lines(), R.succession);
  const chain = await k.KeyChain.verify(R.feed_id, R.succession);
  assert.deepEqual(chain.records.map((r) => r.by), ['key', 'key', 'recovery']);
  assert.notEqual(chain.keyFor(R.subfeed_hash, 4), chain.keyFor(R.subfeed_hash, 5));
  assert.notEqual(chain.keyFor(R.subfeed_hash, 7), chain.keyFor(R.subfeed_hash, 8));
  assert.equal(chain.keyFor(R.subfeed_hash, 4), R.feed_id);
});

test('a tampered copy of the rotated feed is refused: the replaced key signing after the hand-over', async () => {
  const R = fx.rotated;
  const tampered = [...R.lines.slice(0, 8), R.old_key_line];
  const err = await k.verifyRange(tampered, R.feed_id, R.subfeed_hash).then(() => null, (e) => e);
  assert.ok(err instanceof k.SuccessionViolationError, String(err));
  assert.equal(err.position, 8);
  assert.match(err.message, /message 8 is signed by a key that the feed's key succession replaced/);
  // The proof kachery.js builds verifies in kachery.js and in Python.
  assert.deepEqual(await k.verifyForkProof(err.proof), { feedId: R.feed_id, subfeedHash: R.subfeed_hash, position: 8 });
  assert.deepEqual(await command(`verify-proof ${Buffer.from(err.proof).toString('hex')}`), { ok: true, position: 8 });
  // Records altered in the copy, or dropped from it: refused.
  const forgedRecord = R.lines.map((l, i) => (i === 5 ? l.replace('\\"by\\":\\"key\\"', '\\"by\\":\\"recovery\\"') : l));
  assert.notDeepEqual(forgedRecord, R.lines);
  await assert.rejects(k.verifyRange(forgedRecord, R.feed_id, R.subfeed_hash), k.VerificationError);
  const v = new k.SubfeedVerifier(R.feed_id, R.subfeed_hash);
  await v.add(R.lines.slice(0, 5));
  await assert.rejects(v.add([R.old_key_line.replace('"n":8', '"n":5')]), k.VerificationError);
  // Limit (spec/feeds.md §9.3): a reader that never saw the records cannot tell.
  await k.verifyRange([R.old_key_line], R.feed_id, R.subfeed_hash);
});

test('a fork proof of the rotated feed carries its succession; Python made it, kachery.js checks it', async () => {
  const R = fx.rotated;
  const d = JSON.parse(R.fork_proof);
  assert.deepEqual(d.succession, R.succession);
  assert.deepEqual(await k.verifyForkProof(R.fork_proof), { feedId: R.feed_id, subfeedHash: R.subfeed_hash, position: R.fork_position });
  const without = { ...d };
  delete without.succession;
  await assert.rejects(k.verifyForkProof(JSON.stringify(without)), /bad signature/);
  await assert.rejects(k.verifyForkProof(JSON.stringify({ ...d, succession: d.succession.slice(0, 1) })), /bad signature/);
  await assert.rejects(k.verifyForkProof(JSON.stringify({ ...d, succession: [] })), /'succession'/);
  await assert.rejects(k.verifyForkProof(JSON.stringify({ ...d, succession: d.succession.slice(1) })), /succession record/);
});

test('following the rotated feed from the bucket and through a daemon stream; the old key is rejected', async () => {
  const R = fx.rotated;
  const bucket = new k.BucketReader(bucketUrl, fx.channel);
  const headKey = k.keys.head(fx.channel, R.feed_id, R.subfeed_hash);
  const real = readFileSync(join(fx.bucket_dir, ...headKey.split('/')), 'utf8');
  const h = JSON.parse(real);
  h.tail[8] = R.old_key_line;
  overrides.set(headKey, Buffer.from(JSON.stringify(h)));
  const ac = new AbortController();
  const errors = [];
  const got = [];
  try {
    for await (const m of bucket.follow(R.uri, { pollMs: 50, signal: ac.signal, onError: (e) => { errors.push(e); overrides.clear(); } })) {
      got.push(m);
      if (got.length === 9) break;
    }
  } finally {
    overrides.clear();
  }
  assert.deepEqual(got.map((m) => m.payload), R.payloads); // the old key's message 8 was never yielded
  assert.equal(errors.length, 1);
  assert.ok(errors[0] instanceof k.SuccessionViolationError && errors[0].position === 8, String(errors[0]));
  // Starting after the key changes: the records carried before `start` are found in the bucket.
  assert.deepEqual(await bucket.findSuccession(R.uri, 9), R.succession);
  assert.deepEqual(await bucket.findSuccession(R.uri, 7), R.succession.slice(0, 1));
  assert.deepEqual(await bucket.findSuccession(R.uri, 5), []);
  const late = [];
  for await (const m of bucket.follow(R.uri, { start: 8, pollMs: 50, signal: ac.signal })) {
    late.push(m.payload);
    break;
  }
  assert.deepEqual(late, [{ r: 8 }]);

  // Through a daemon-style stream: the old key's line is rejected (onRejected), then the honest
  // one is accepted on the reopened stream.
  let tamper = true;
  const sse = createServer((req, res) => {
    const start = Number(new URL(req.url, 'http://x').searchParams.get('start'));
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    for (let n = start; n < R.lines.length; n++) {
      const wire = n === 8 && tamper ? R.old_key_line : R.lines[n];
      res.write(`id: ${n}\ndata: ${JSON.stringify({ number: n, wire })}\n\n`);
    }
    tamper = false;
  });
  await new Promise((r) => sse.listen(0, '127.0.0.1', r));
  try {
    const rejected = [];
    const fromDaemon = [];
    for await (const m of k.followFromDaemon(`http://127.0.0.1:${sse.address().port}`, R.uri, {
      token: 't', signal: ac.signal, retryMs: 20, onRejected: (r) => rejected.push(r),
    })) {
      fromDaemon.push(m.payload);
      if (fromDaemon.length === 9) break;
    }
    assert.deepEqual(fromDaemon, R.payloads);
    assert.equal(rejected.length, 1);
    assert.equal(rejected[0].number, 8);
    assert.ok(rejected[0].error instanceof k.SuccessionViolationError);
    assert.match(rejected[0].reason, /replaced/);
    // From a later start, with the records passed in.
    const later = [];
    for await (const m of k.followFromDaemon(`http://127.0.0.1:${sse.address().port}`, R.uri, {
      token: 't', start: 6, succession: R.succession, signal: ac.signal,
    })) {
      later.push(m.payload);
      if (later.length === 3) break;
    }
    assert.deepEqual(later, R.payloads.slice(6));
  } finally {
    ac.abort();
    sse.closeAllConnections();
    sse.close();
  }
});

test('a signed node message (v2) and a hub request made by Python', async () => {
  const message = k.fromHex(fx.envelope_hex, fx.envelope_hex.length / 2);
  const at = { channel: fx.channel, band: 'provide-feeds', nowMs: fx.envelope_time_ms + 1000 };
  const env = await k.openEnvelope(message, at);
  assert.equal(env.sender, fx.node_id);
  assert.equal(env.body.count, fx.count);
  assert.equal(env.attachment, null);
  const body = new TextDecoder().decode(message.subarray(97)).replace(`"count":${fx.count}`, '"count":1');
  const tampered = new Uint8Array([...message.subarray(0, 97), ...k.utf8(body)]);
  await assert.rejects(k.openEnvelope(tampered, at), /bad signature/);
  await assert.rejects(k.openEnvelope(message, { ...at, band: 'provide-files' }), k.VerificationError);
  // newSubfeedMessages: the wire lines travel as the attachment, and verify as a range.
  const withLines = k.fromHex(fx.envelope_with_lines_hex, fx.envelope_with_lines_hex.length / 2);
  const news = await k.openEnvelope(withLines, at);
  assert.equal(news.body.type, 'newSubfeedMessages');
  assert.equal(new TextDecoder().decode(news.attachment), fx.attached_lines);
  const msgs = await k.verifyRange(k.decodeSegment(news.attachment), fx.feed_id, news.body.subfeed_hash);
  assert.equal(msgs.length, 1);
  const cut = withLines.slice(0, -1);
  await assert.rejects(k.openEnvelope(cut, at), /bad signature/);
  const h = fx.hub_request;
  const hb = JSON.parse(h.body);
  const r = await k.verifyHubRequest('node', h.body, h.headers, { hubId: h.hub_id, nowMs: hb.time_ms });
  assert.equal(r.signer, fx.node_id);
  await assert.rejects(k.verifyHubRequest('user', h.body, Object.fromEntries(Object.entries(h.headers).map(([a, b]) => [a.replace('Node', 'User'), b])), { hubId: h.hub_id, nowMs: hb.time_ms }), k.VerificationError);
});

test('a task result made by Python: hash, signature, tampering', async () => {
  const t = fx.task;
  assert.equal(await k.taskHash(t.function_id, t.kwargs), t.task_hash);
  const r = await k.verifyTaskResult(t.object, { taskHash: t.task_hash, functionId: t.function_id });
  assert.deepEqual(r.result, { y: [2.25, 4] });
  assert.equal(r.provider, fx.node_id);
  await assert.rejects(k.verifyTaskResult(t.object.replace('2.25', '2.5'), { taskHash: t.task_hash, functionId: t.function_id }), /bad signature/);
  const bucket = new k.BucketReader(bucketUrl, fx.channel);
  const cached = await bucket.readTaskResult(t.task_hash, t.function_id);
  assert.deepEqual(cached.result, { y: [2.25, 4] });
});

test('files and byte ranges from the bucket, verified', async () => {
  const bucket = new k.BucketReader(bucketUrl, fx.channel);
  assert.equal(new TextDecoder().decode(await bucket.readFile(fx.small_file.uri)), fx.small_file.text);
  assert.equal(new TextDecoder().decode(await bucket.readFileRange(fx.small_file.uri, 7, 12)), 'world');
  const [a, b] = fx.big_file.range;
  assert.equal(k.toHex(await bucket.readFileRange(fx.big_file.uri, a, b)), fx.big_file.range_hex);
  const tail = await bucket.readFileRange(fx.big_file.uri, fx.big_file.size - 100, fx.big_file.size);
  assert.equal(await k.sha1Hex(tail), fx.big_file.tail_sha1);
  // A corrupted chunk is refused.
  const { sha1 } = k.parseSha1Uri(fx.small_file.uri);
  overrides.set(k.keys.file(fx.channel, sha1), Buffer.from('Hello, World!'));
  await assert.rejects(bucket.readFile(fx.small_file.uri), /does not hash/);
  overrides.clear();
});

test('following a subfeed from the bucket by polling the head, and refusing tampering', async () => {
  const bucket = new k.BucketReader(bucketUrl, fx.channel);
  const ac = new AbortController();
  const got = [];
  const errors = [];
  const it = bucket.follow(fx.uri, { pollMs: 50, signal: ac.signal, onError: (e) => errors.push(e) });
  for await (const m of it) {
    got.push(m);
    if (got.length === fx.count) break;
  }
  assert.deepEqual(got.map((m) => m.payload), fx.payloads);
  // Live: Python appends, republishes the head; the follower picks it up. A tampered message
  // in the head is reported and never yielded.
  const headKey = k.keys.head(fx.channel, fx.feed_id, fx.subfeed_hash);
  const follower = bucket.follow(fx.uri, { start: fx.count, pollMs: 50, signal: ac.signal, onError: (e) => errors.push(e) });
  const { count } = await command('append 2');
  assert.equal(count, fx.count + 2);
  const real = readFileSync(join(fx.bucket_dir, ...headKey.split('/')), 'utf8');
  const h = JSON.parse(real);
  h.tail[h.tail.length - 1] = h.tail[h.tail.length - 1].replace('"more":1', '"more":7');
  overrides.set(headKey, Buffer.from(JSON.stringify(h)));
  // The good message before the tampered one is still released; the tampered one is not.
  const m1 = (await follower.next()).value;
  const second = follower.next();
  await new Promise((r) => setTimeout(r, 300));
  assert.ok(errors.some((e) => e instanceof k.VerificationError), 'the tampered head was reported');
  overrides.clear();
  const m2 = (await second).value;
  assert.deepEqual([m1.number, m1.payload, m2.payload], [fx.count, { more: 0 }, { more: 1 }]);
  ac.abort();
});

test('following through a daemon-style SSE stream of wire lines; records without wire lines are refused', async () => {
  // The stream format kachery.js accepts (js/README.md): each event's data is a JSON object
  // with the signed wire line in "wire" (or the line as a JSON string).
  let mode = 'wire';
  const sse = createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    if (req.headers.authorization !== 'Bearer t' && url.searchParams.get('token') !== 't') {
      res.writeHead(401).end('bad token');
      return;
    }
    const start = Number(url.searchParams.get('start'));
    assert.equal(url.searchParams.get('uri'), fx.uri);
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.write('retry: 1000\n\n: keepalive\n\n');
    for (let n = start; n < fx.lines.length; n++) {
      const data = mode === 'wire' ? { number: n, wire: fx.lines[n] }
        : mode === 'tampered' ? { number: n, wire: n === 5 ? tamperLine(fx.lines[n]) : fx.lines[n] }
          : { number: n, timestamp_ms: 0, payload: fx.payloads[n], metadata: null };
      res.write(`id: ${n}\ndata: ${JSON.stringify(data)}\n\n`);
    }
    res.end();
  });
  await new Promise((r) => sse.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${sse.address().port}`;
  try {
    const ac = new AbortController();
    const got = [];
    for await (const m of k.followFromDaemon(url, fx.uri, { token: 't', signal: ac.signal })) {
      got.push(m.payload);
      if (got.length === fx.lines.length) break;
    }
    assert.deepEqual(got, fx.payloads);
    await assert.rejects(async () => {
      for await (const _m of k.followFromDaemon(url, fx.uri, { token: 'wrong', signal: ac.signal })) { /* consume */ }
    }, /HTTP 401/);
    mode = 'tampered';
    await assert.rejects(async () => {
      for await (const _m of k.followFromDaemon(url, fx.uri, { token: 't', signal: ac.signal })) { /* consume */ }
    }, k.VerificationError);
    mode = 'records';
    await assert.rejects(async () => {
      for await (const _m of k.followFromDaemon(url, fx.uri, { token: 't', signal: ac.signal })) { /* consume */ }
    }, /no signed wire lines/);
    ac.abort();
  } finally {
    sse.close();
  }
});

test('daemon events (record fields + wire): a tampered event is reported as rejected, never yielded', async () => {
  // The daemon's event format (local_api_feeds.py): {number, timestamp_ms, payload, metadata, wire}.
  // A man in the middle alters message 1500's line (signed alone) the first `tamperings` times,
  // and claims a different payload in the unsigned record fields of message 3.
  let tamperings = 2;
  let connections = 0;
  const sse = createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    if (url.searchParams.get('token') !== 't') {
      res.writeHead(403, { 'content-type': 'application/json' })
        .end(JSON.stringify({ error: 'origin http://evil.example is not allowed', kind: 'OriginNotAllowed' }));
      return;
    }
    connections += 1;
    const start = Number(url.searchParams.get('start'));
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    let tampered = false;
    for (let n = start; n < fx.lines.length; n++) {
      let wire = fx.lines[n];
      if (n === 1500 && tamperings > 0) {
        wire = wire.replace('"by":"test"', '"by":"evil"');
        tampered = true;
      }
      const payload = n === 3 ? { forged: true } : fx.payloads[n];
      res.write(`id: ${n}\ndata: ${JSON.stringify({ number: n, timestamp_ms: 0, payload, metadata: null, wire })}\n\n`);
    }
    if (tampered) tamperings -= 1;
    // Keep the connection open, as the daemon does, until the client drops it.
  });
  await new Promise((r) => sse.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${sse.address().port}`;
  try {
    const ac = new AbortController();
    const got = [];
    const rejected = [];
    const states = [];
    for await (const m of k.followFromDaemon(url, fx.uri, {
      token: 't', signal: ac.signal, retryMs: 20,
      onRejected: (r) => rejected.push(r), onStatus: (s) => states.push(s),
    })) {
      got.push(m);
      if (got.length === fx.lines.length) break;
    }
    ac.abort();
    assert.deepEqual(got.map((m) => m.number), [...Array(fx.lines.length).keys()]);
    assert.deepEqual(got.map((m) => m.payload), fx.payloads); // not the record's forged payload
    assert.deepEqual(got[1500].metadata, { by: 'test' });
    assert.equal(rejected.length, 2);
    for (const r of rejected) {
      assert.equal(r.number, 1500);
      assert.match(r.reason, /bad signature on message 1500/);
      assert.ok(r.error instanceof k.VerificationError);
    }
    assert.equal(connections, 3); // reopened from message 1500 after each rejection
    assert.ok(states.includes('live'));
    // A refusal (403) says why at once instead of retrying.
    await assert.rejects(async () => {
      for await (const _m of k.followFromDaemon(url, fx.uri, { token: 'x' })) { /* consume */ }
    }, (err) => err instanceof k.DaemonRefusedError && err.status === 403
      && err.kind === 'OriginNotAllowed' && /evil\.example is not allowed/.test(err.message));
  } finally {
    sse.closeAllConnections();
    sse.close();
  }
});

test('files and ranges read through a daemon (GET /api/files/read) are verified in the page', async () => {
  // A stand-in for the daemon's file endpoint over the objects Python wrote: bytes [start, end)
  // of a stored file (the big one assembled from its chunks). `corrupt` flips a byte of what it
  // serves; `limit` answers 413 as the daemon does for a page asking more than its limit.
  const objects = (sha1) => readFileSync(join(fx.bucket_dir, ...k.keys.file(fx.channel, sha1).split('/')));
  let corrupt = false;
  let limit = Infinity;
  const seen = [];
  const daemon = createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    seen.push(url.searchParams.toString());
    if (url.pathname !== '/api/files/read' || url.searchParams.get('token') !== 't') {
      res.writeHead(403, { 'content-type': 'application/json' }).end('{"error":"bad token","kind":"ApiError"}');
      return;
    }
    const { sha1, manifest } = k.parseSha1Uri(url.searchParams.get('uri'));
    let data;
    if (manifest) {
      const m = JSON.parse(objects(manifest).toString());
      data = Buffer.concat(m.chunks.map((c) => objects(c.sha1)));
    } else {
      data = objects(sha1);
    }
    if (data.length > limit) {
      res.writeHead(413, { 'content-type': 'application/json' })
        .end(JSON.stringify({ error: `at least ${data.length} bytes, more than a page may make this node download`, kind: 'ApiError' }));
      return;
    }
    const start = Number(url.searchParams.get('start') ?? 0);
    const end = Math.min(Number(url.searchParams.get('end') ?? data.length), data.length);
    const out = Buffer.from(data.subarray(start, end));
    if (corrupt && out.length) out[0] ^= 1;
    res.writeHead(200, { 'content-type': 'application/octet-stream' }).end(out);
  });
  await new Promise((r) => daemon.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${daemon.address().port}`;
  try {
    const text = (b) => new TextDecoder().decode(b);
    assert.equal(text(await k.readFileFromDaemon(url, fx.small_file.uri, { token: 't' })), fx.small_file.text);
    assert.equal(text(await k.readFileFromDaemon(url, fx.small_file.uri, { token: 't', start: 7, end: 12 })), 'world');
    const [a, b] = fx.big_file.range;
    seen.length = 0;
    assert.equal(k.toHex(await k.readFileFromDaemon(url, fx.big_file.uri, { token: 't', start: a, end: b })), fx.big_file.range_hex);
    assert.equal(seen.length, 3); // the manifest, then only the two chunks the range spans
    corrupt = true;
    await assert.rejects(k.readFileFromDaemon(url, fx.small_file.uri, { token: 't' }), k.VerificationError);
    await assert.rejects(k.readFileFromDaemon(url, fx.big_file.uri, { token: 't', start: a, end: b }), /does not hash/);
    corrupt = false;
    limit = 1000;
    await assert.rejects(k.readFileFromDaemon(url, fx.big_file.uri, { token: 't', start: 0, end: 10 }),
      (err) => err instanceof k.DaemonRefusedError && err.status === 413 && /more than a page/.test(err.message));
    await assert.rejects(k.readFileFromDaemon(url, fx.small_file.uri, { token: 'x' }), /HTTP 403/);
  } finally {
    daemon.close();
  }
});
