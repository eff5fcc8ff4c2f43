// Every vector in spec/vectors (valid AND invalid) against kachery.js.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import * as k from '../src/index.js';

const SPEC = fileURLToPath(new URL('../../spec/vectors/', import.meta.url));
const feeds = JSON.parse(readFileSync(SPEC + 'feeds-v1.json', 'utf8'));
const tasks = JSON.parse(readFileSync(SPEC + 'tasks-v1.json', 'utf8'));
const proto = JSON.parse(readFileSync(SPEC + 'protocol-v1.json', 'utf8'));
const hex = (h) => k.fromHex(h, h.length / 2);
const wires = (c) => (c.wire_hex ? c.wire_hex.map(hex) : c.wire);
const F = feeds.feed_id;
const S = feeds.subfeed_hash;

test('feeds: message vectors parse, hash and verify', async () => {
  for (const m of feeds.messages) {
    const p = await k.parseWireLine(m.wire, F, S);
    assert.equal(p.hash, m.sha256);
    assert.equal(p.number, m.number);
    assert.equal(p.timestampMs, m.timestamp_ms);
    assert.deepEqual(p.payload, m.payload);
    assert.deepEqual(p.metadata, m.metadata);
    assert.equal(k.toHex(k.utf8(m.body)), k.toHex(p.body));
  }
  const segment = k.decodeSegment(k.utf8(feeds.segment));
  const msgs = await k.verifyRange(segment, F, S);
  assert.deepEqual(msgs.map((m) => m.payload), feeds.messages.map((m) => m.payload));
});

test('feeds: valid ranges are accepted', async () => {
  for (const c of feeds.valid_ranges) {
    const msgs = await k.verifyRange(wires(c), F, S);
    assert.deepEqual(msgs.map((m) => m.payload), c.payloads, c.why);
  }
});

test('feeds: every invalid range is refused', async () => {
  assert.ok(feeds.invalid_ranges.length >= 40);
  for (const c of feeds.invalid_ranges) {
    await assert.rejects(k.verifyRange(wires(c), c.feed_id ?? F, S), k.VerificationError, c.why);
  }
});

test('feeds: invalid segments are refused', async () => {
  for (const c of feeds.invalid_segments) {
    await assert.rejects(async () => k.verifyRange(k.decodeSegment(k.utf8(c.segment)), F, S), k.VerificationError, c.why);
  }
});

test("ed25519: every case decided as libsodium decides it", async () => {
  for (const c of feeds.ed25519) {
    const ok = await k.verifyEd25519(hex(c.public_key), hex(c.message_hex), hex(c.signature));
    assert.equal(ok, c.valid, c.why);
  }
});

test('fork proofs: valid ones verify, invalid ones are refused', async () => {
  for (const c of feeds.fork_proofs) {
    assert.deepEqual(await k.verifyForkProof(c.proof), { feedId: c.feed_id, subfeedHash: c.subfeed_hash, position: c.position });
  }
  for (const c of feeds.invalid_fork_proofs) {
    await assert.rejects(k.verifyForkProof(c.proof), k.VerificationError, c.why);
  }
});

test('subfeed names and URIs', async () => {
  for (const v of feeds.subfeed_hash_vectors) assert.equal(await k.subfeedHash(v.name), v.hash, JSON.stringify(v.name));
  for (const c of feeds.invalid_subfeed_names_json) {
    await assert.rejects(k.subfeedHash(JSON.parse(c.name_json)), k.InvalidArgumentError, c.why);
  }
  for (const c of feeds.uri_vectors) {
    const p = await k.parseFeedUri(c.uri);
    assert.equal(p.feedId, c.feed_id, c.uri);
    assert.equal(p.subfeedHash, c.subfeed_hash, c.uri);
  }
  for (const c of feeds.invalid_uris) await assert.rejects(k.parseFeedUri(c.uri), k.InvalidArgumentError, c.why);
  for (const c of feeds.uri_writer_vectors) assert.equal(await k.subfeedUri(F, c.name), c.uri);
});

// tasks-v1.json's invalid texts use Python's NaN/Infinity tokens: read them as those numbers.
function parseWithNonFinite(text) {
  return JSON.parse(text.replace(/-?\b(NaN|Infinity)\b/g, (t) => `"@nonfinite@${t}"`), (_k, v) =>
    typeof v === 'string' && v.startsWith('@nonfinite@') ? Number(v.slice(11)) : v);
}

test('tasks: canonical JSON and task hashes', async () => {
  for (const c of tasks.cases) {
    const kwargs = JSON.parse(c.kwargs_json);
    assert.equal(k.canonicalJson({ function_id: c.function_id, kwargs }), c.canonical, c.description);
    assert.equal(await k.taskHash(c.function_id, kwargs), c.task_hash, c.description);
  }
});

test('tasks: every invalid case is refused', async () => {
  assert.ok(tasks.invalid.length >= 10);
  for (const c of tasks.invalid) {
    await assert.rejects(async () => k.taskHash(c.function_id, parseWithNonFinite(c.kwargs_json)), k.InvalidArgumentError, c.description);
  }
});

test('protocol: node messages (v2)', async () => {
  const E = proto.envelopes;
  for (const c of E.valid) {
    const env = await k.openEnvelope(hex(c.message_hex), { channel: E.channel, band: E.band, nowMs: E.now_ms });
    assert.equal(env.sender, c.sender, c.why);
    assert.deepEqual(env.body, c.body, c.why);
    assert.equal(env.attachment === null ? null : k.toHex(env.attachment), c.attachment_hex ?? null, c.why);
  }
  for (const c of E.invalid) {
    await assert.rejects(k.openEnvelope(hex(c.message_hex), { channel: c.channel ?? E.channel, band: c.band ?? E.band, nowMs: E.now_ms }), k.VerificationError, c.why);
  }
  const v1 = E.invalid.find((c) => c.why.startsWith('a version 1'));
  await assert.rejects(k.openEnvelope(hex(v1.message_hex), { channel: E.channel, band: E.band, nowMs: E.now_ms }), /version 1/);
});

test('protocol: hub requests', async () => {
  const H = proto.hub_requests;
  for (const c of H.valid) {
    const r = await k.verifyHubRequest(c.kind, c.body, c.headers, { hubId: H.hub_id, nowMs: H.now_ms });
    assert.equal(r.signer, c.signer);
  }
  for (const c of H.invalid) {
    await assert.rejects(k.verifyHubRequest(c.kind, c.body, c.headers, { hubId: H.hub_id, nowMs: H.now_ms }), k.VerificationError, c.why);
  }
});

test('protocol: task results', async () => {
  const R = proto.task_results;
  assert.equal(await k.taskHash(R.function_id, R.kwargs), R.task_hash);
  for (const c of R.valid) {
    const r = await k.verifyTaskResult(c.object, { taskHash: R.task_hash, functionId: R.function_id });
    assert.deepEqual([r.provider, r.result, r.timeMs], [c.provider, c.result, c.time_ms]);
  }
  for (const c of R.invalid) {
    await assert.rejects(k.verifyTaskResult(c.object, { taskHash: R.task_hash, functionId: R.function_id }), k.VerificationError, c.why);
  }
});

test('protocol: heads and bucket keys', () => {
  for (const c of proto.heads.valid) {
    const h = k.parseHead(c.head);
    assert.equal(h.count, c.count);
    assert.equal(h.tail.length, c.tail_length);
  }
  for (const c of proto.heads.invalid) assert.throws(() => k.parseHead(c.head), k.VerificationError, c.why);
  const b = proto.bucket_keys;
  assert.equal(k.keys.head(b.channel, b.feed_id, b.subfeed_hash), b.head);
  assert.equal(k.keys.segment(b.channel, b.feed_id, b.subfeed_hash, 12), b.segment_12);
  assert.equal(k.keys.file(b.channel, b.sha1), b.file);
  assert.equal(k.keys.taskResult(b.channel, b.task_hash), b.task_result);
});

test('the vendored @noble/ed25519 is the pinned npm package, byte for byte', (t) => {
  const installed = fileURLToPath(new URL('../node_modules/@noble/ed25519/', import.meta.url));
  if (!existsSync(installed)) return t.skip('run `npm ci` in js/ to compare with the pinned package');
  const pkg = JSON.parse(readFileSync(installed + 'package.json', 'utf8'));
  const want = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')).devDependencies['@noble/ed25519'];
  assert.equal(pkg.version, want);
  assert.equal(readFileSync(new URL('../vendor/noble-ed25519.js', import.meta.url), 'utf8'), readFileSync(installed + 'index.js', 'utf8'));
});

// ----------------------------------------------------------------------------- key succession
const succ = JSON.parse(readFileSync(SPEC + 'succession-v1.json', 'utf8'));
const seedKey = async (label) => {
  const ed = await import('../vendor/noble-ed25519.js');
  return k.toHex(await ed.getPublicKeyAsync(hex(succ.seeds[label])));
};

test('succession: the chain verifies from the feed ID; record hashes and the key of each position', async () => {
  assert.equal(await seedKey('K0'), succ.feed);
  const chain = await k.KeyChain.verify(succ.feed, succ.records);
  assert.deepEqual(chain.records.map((r) => r.bodyHash), succ.record_hashes);
  assert.equal(chain.currentKey, await seedKey('K2'));
  assert.equal(chain.currentRecovery, null);
  assert.equal(chain.records[0].recovery, await seedKey('Q'));
  for (const c of succ.key_for) assert.equal(chain.keyFor(succ.subfeed, c.position), c.key, `position ${c.position}`);
  assert.equal(await k.subfeedHash(succ.subfeed_name), succ.subfeed);
});

test('succession: the messages verify as a range, learning the chain they carry', async () => {
  const msgs = await k.verifyRange(succ.messages, succ.feed, succ.subfeed);
  assert.deepEqual(msgs.map((m) => m.payload), ['zero', 'one', 'two', 'three', 'four']);
  assert.deepEqual(msgs[4].succession, succ.records);
  assert.equal(msgs[3].succession, null);
  // Followed one message at a time, and from a later start with the records passed in.
  const v = new k.SubfeedVerifier(succ.feed, succ.subfeed);
  for (const line of succ.messages) assert.equal((await v.add([line])).length, 1);
  assert.equal(v.chain.records.length, 3);
  const late = new k.SubfeedVerifier(succ.feed, succ.subfeed, { start: 3, succession: succ.records.slice(0, 2) });
  assert.deepEqual((await late.add(succ.messages.slice(3))).map((m) => m.payload), ['three', 'four']);
  // Without the records, a follower starting after the key change cannot tell K1 from a forger.
  const blind = new k.SubfeedVerifier(succ.feed, succ.subfeed, { start: 3 });
  await assert.rejects(blind.add([succ.messages[3]]), /bad signature on message 3 \(or the feed changed keys/);
  // A range that carries no records is checked under the feed's own key only.
  await assert.rejects(k.verifyRange(succ.messages.slice(3, 4), succ.feed, succ.subfeed), /bad signature on message 3/);
  await k.verifyRange(succ.messages.slice(3, 4), succ.feed, succ.subfeed, { succession: succ.records });
});

test('succession: every invalid chain is refused, alone and carried by a message', async () => {
  assert.ok(succ.invalid_chains.length >= 6);
  for (const c of succ.invalid_chains) {
    await assert.rejects(k.KeyChain.verify(succ.feed, c.records), k.VerificationError, c.why);
    await assert.rejects(k.verifyRange(succ.messages, succ.feed, succ.subfeed, { succession: c.records }), k.VerificationError, c.why);
  }
  // A message carrying a chain with a forged record: the record's signature fails, whatever
  // the message's.
  const r1 = succ.records[0];
  const forged = r1.replace(/"ts":(\d+)/, (_m, d) => `"ts":${Number(d) + 1}`);
  await assert.rejects(k.KeyChain.verify(succ.feed, [forged]), /bad signature on succession record 1/);
  // Two valid chains that diverge (K0 signed two different records 1) are refused.
  const ed = await import('../vendor/noble-ed25519.js');
  const body = `{"by":"key","feed":"${succ.feed}","heads":{},"key":"${succ.feed}","prev":null,"recovery":null,"seq":1,"ts":1,"type":"kachery-feed-succession","v":1}`;
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', k.utf8(body)));
  const sig = await ed.signAsync(new Uint8Array([...k.SUCCESSION_CONTEXT, ...digest]), hex(succ.seeds.K0));
  const other = `${body}\t${k.toHex(sig)}`;
  assert.equal((await k.KeyChain.verify(succ.feed, [other])).records.length, 1);
  await assert.rejects(k.verifyRange(succ.messages, succ.feed, succ.subfeed, { succession: [other] }), /two different key successions/);
});

test('succession: an old key signing after the hand-over is a violation, with the vector proof', async () => {
  assert.equal(succ.violations.length, 2);
  for (const c of succ.violations) {
    assert.deepEqual(await k.verifyForkProof(c.proof), { feedId: succ.feed, subfeedHash: succ.subfeed, position: c.position });
    // A follower that knows the records (from `range`, which carries them) and has taken the
    // messages before the position is then offered `then`.
    const v = new k.SubfeedVerifier(succ.feed, succ.subfeed, { succession: succ.records });
    await v.add(c.range.slice(0, c.position));
    const err = await v.add(c.then).then(() => null, (e) => e);
    assert.ok(err instanceof k.SuccessionViolationError, c.why);
    assert.ok(err instanceof k.VerificationError);
    assert.equal(err.position, c.position);
    assert.equal(err.proof, c.proof, c.why);
    assert.match(err.message, new RegExp(`message ${c.position} is signed by a key that the feed's key succession replaced`));
    assert.equal(v.next, c.position); // nothing released
    // The same as one range.
    await assert.rejects(k.verifyRange([...c.range.slice(0, c.position), ...c.then], succ.feed, succ.subfeed, { succession: succ.records }),
      k.SuccessionViolationError, c.why);
  }
  // A follower that never saw the records takes K0's message 2 (spec §9.3: detection, not
  // prevention); the honest messages after it then fail to link (js/README.md).
  const c = succ.violations[1];
  const blind = new k.SubfeedVerifier(succ.feed, succ.subfeed);
  assert.equal((await blind.add([...c.range.slice(0, 2), ...c.then])).length, 3);
  assert.equal((await blind.add([c.range[2]])).length, 0); // a re-push of position 2: skipped
  await assert.rejects(blind.add([c.range[3]]), /does not link to the verified chain/);
  // A tampered violation proof is refused.
  const d = JSON.parse(succ.violations[0].proof);
  d.chain = [succ.messages[4]]; // signed by the right key: no violation
  await assert.rejects(k.verifyForkProof(JSON.stringify(d)), /no violation/);
  d.chain = [succ.violations[0].then[0].replace('found by', 'lost by')];
  await assert.rejects(k.verifyForkProof(JSON.stringify(d)), /not signed by a key the succession replaced/);
});

test('succession: a range contradicting a hash the records pin is refused', async () => {
  // Record 2 pins message 1's hash. K0 signs another message 1 and K1 (the new key) signs a
  // message 2 after it that carries records 1-2: every signature is valid, the pin is not.
  const ed = await import('../vendor/noble-ed25519.js');
  const sign = async (seed, body) => {
    const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', k.utf8(body)));
    return { line: `${body}\t${k.toHex(await ed.signAsync(new Uint8Array([...k.SIGNATURE_CONTEXT, ...digest]), hex(seed)))}`, hash: k.toHex(digest) };
  };
  const m0 = await k.parseWireLine(succ.messages[0], succ.feed, succ.subfeed);
  const other1 = await sign(succ.seeds.K0, `{"feed":"${succ.feed}","n":1,"payload":"ONE","prev":"${m0.hash}","subfeed":"${succ.subfeed}","ts":1,"v":1}`);
  const other2 = await sign(succ.seeds.K1, `{"feed":"${succ.feed}","n":2,"payload":"two","prev":"${other1.hash}","subfeed":"${succ.subfeed}","succession":${JSON.stringify(succ.records.slice(0, 2))},"ts":2,"v":1}`);
  const chain = await k.KeyChain.verify(succ.feed, succ.records);
  assert.deepEqual(chain.pinned(succ.subfeed).map((p) => p[0]), [1, 3]);
  await assert.rejects(k.verifyRange([succ.messages[0], other1.line, other2.line], succ.feed, succ.subfeed), /message 1 contradicts the key succession/);
  await assert.rejects(k.verifyRange([other2.line], succ.feed, succ.subfeed), /message 1 contradicts the key succession/);
  const v = new k.SubfeedVerifier(succ.feed, succ.subfeed);
  await v.add([succ.messages[0], other1.line]);
  await assert.rejects(v.add([other2.line]), /message 1 contradicts the key succession/);
});
