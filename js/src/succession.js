/**
 * Key succession (spec/feeds.md §9): a feed's ID stays its first key K0 while a chain of signed
 * succession records hands it to later keys. Records travel inside message bodies (their
 * `succession` field, §9.3); a reader verifies the chain from K0 alone (KeyChain.verify) and
 * then checks message n of subfeed S against the key that governs that position (keyFor). A
 * valid signature by a key the succession replaced there is a succession violation (§9.4):
 * SuccessionViolationError, carrying a portable violation proof.
 */
import { VerificationError } from './errors.js';
import { asBytes, concat, decodeUtf8, fromHex, sha256, toHex, utf8 } from './bytes.js';
import { integerMember, parseJson } from './json.js';
import { verifyEd25519 } from './ed25519.js';

/** "kachery-feed-succession-v1" || 0x00: a record signature can never pass for a message's. */
export const SUCCESSION_CONTEXT = concat(utf8('kachery-feed-succession-v1'), new Uint8Array([0]));
/** Records per feed a reader accepts (spec/feeds.md §9.1). */
export const MAX_RECORDS = 1000;
const RECORD_KEYS = ['by', 'feed', 'heads', 'key', 'prev', 'recovery', 'seq', 'ts', 'type', 'v'];
const VIOLATION_KEYS = ['chain', 'feed', 'position', 'subfeed', 'succession', 'type', 'v'];
const HEX64 = /^[0-9a-f]{64}$/;
const HEX40 = /^[0-9a-f]{40}$/;
const TAB = 0x09;
const LF = 0x0a;

/** A message signed by a key that a key succession had already replaced at its position
 * (spec/feeds.md §9.2, §9.4): the old key signed after handing the feed over. `position` is
 * the message number, `proof` the violation proof (JSON text, §9.4) a page may pass on. */
export class SuccessionViolationError extends VerificationError {
  constructor(message, { position, proof }) {
    super(message);
    this.name = 'SuccessionViolationError';
    this.position = position;
    this.proof = proof;
  }
}

function sameKeys(obj, keys) {
  const k = Object.keys(obj).sort();
  return k.length === keys.length && k.every((x, i) => x === keys[i]);
}

function hexField(value, re, what) {
  if (typeof value !== 'string' || !re.test(value)) {
    throw new VerificationError(`malformed succession record: ${what} is not lowercase hex of its length`);
  }
  return value;
}

function intField(obj, key, min = 0) {
  const v = integerMember(obj, key, min);
  if (v === undefined) throw new VerificationError(`malformed succession record: ${key} is not an integer in [${min}, 2^53-1]`);
  return v;
}

/**
 * Parse one record line (bytes, or a string whose UTF-8 form is the line) of feed `feedId`
 * (format only, spec/feeds.md §9.1). Returns {line, bodyHash, seq, prev, key, recovery, by,
 * heads: Map(subfeed hash -> {count, hash}), ts, signature} with hashes and keys as hex.
 */
export async function parseRecord(line, feedId) {
  const bytes = asBytes(line, 'succession record');
  const tab = bytes.lastIndexOf(TAB);
  if (tab <= 0 || bytes.includes(LF)) throw new VerificationError("malformed succession record: expected '<body>\\t<signature>'");
  const body = bytes.subarray(0, tab);
  const signature = fromHex(decodeUtf8(bytes.subarray(tab + 1), 'signature'), 64);
  if (signature === null) throw new VerificationError('malformed succession record: the signature is not 128 lowercase hex');
  const d = parseJson(body, 'succession record');
  if (d === null || typeof d !== 'object' || Array.isArray(d) || !sameKeys(d, RECORD_KEYS)) {
    throw new VerificationError(`malformed succession record: expected exactly the keys ${RECORD_KEYS.join(', ')}`);
  }
  if (d.type !== 'kachery-feed-succession' || integerMember(d, 'v', 1, 1) !== 1) {
    throw new VerificationError('not a kachery feed succession record (v1)');
  }
  if (d.feed !== feedId) throw new VerificationError(`succession record of feed ${JSON.stringify(d.feed)}, not ${feedId}`);
  const seq = intField(d, 'seq', 1);
  const prev = d.prev === null ? null : hexField(d.prev, HEX64, 'prev');
  if ((prev === null) !== (seq === 1)) throw new VerificationError('malformed succession record: prev is null exactly for seq 1');
  const key = hexField(d.key, HEX64, 'key');
  const recovery = d.recovery === null ? null : hexField(d.recovery, HEX64, 'recovery');
  if (d.by !== 'key' && d.by !== 'recovery') throw new VerificationError("malformed succession record: by is 'key' or 'recovery'");
  if (d.heads === null || typeof d.heads !== 'object' || Array.isArray(d.heads)) {
    throw new VerificationError('malformed succession record: heads is not an object');
  }
  const heads = new Map();
  for (const [sh, head] of Object.entries(d.heads)) {
    if (!HEX40.test(sh) || head === null || typeof head !== 'object' || Array.isArray(head) || !sameKeys(head, ['count', 'hash'])) {
      throw new VerificationError('malformed succession record: heads maps subfeed hashes to {count, hash}');
    }
    const count = integerMember(head, 'count', 1);
    if (count === undefined) throw new VerificationError('malformed succession record: a head count is not an integer in [1, 2^53-1]');
    heads.set(sh, { count, hash: hexField(head.hash, HEX64, 'a head hash') });
  }
  const ts = intField(d, 'ts');
  return {
    line: typeof line === 'string' ? line : decodeUtf8(bytes, 'succession record'),
    bodyHash: toHex(await sha256(body)), seq, prev, key, recovery, by: d.by, heads, ts, signature,
  };
}

/** Verify an Ed25519 signature (spec/feeds.md §3.1) over context || hash, keys and hash as hex. */
export async function signedBy(publicKeyHex, context, hashHex, signature) {
  return verifyEd25519(fromHex(publicKeyHex, 32), concat(context, fromHex(hashHex, 32)), signature);
}

/**
 * A verified chain of succession records of one feed (possibly empty: the feed's own key).
 * Build it with KeyChain.verify; it never holds an unverified record.
 */
export class KeyChain {
  constructor(feedId, records = []) {
    this.feedId = feedId;
    this.records = records;
    this.changes = []; // key changes in chain order: {key, heads}
    let key = feedId;
    let recovery = null;
    for (const r of records) {
      if (r.key !== key) this.changes.push({ key: r.key, heads: r.heads });
      key = r.key;
      recovery = r.recovery;
    }
    this.currentKey = key;
    this.currentRecovery = recovery;
  }

  /** Verify record lines 1, 2, … (in order) from the feed's own key (spec/feeds.md §9.1);
   * raises VerificationError naming the first bad record. */
  static async verify(feedId, lines) {
    if (!Array.isArray(lines)) throw new VerificationError('succession records must be an array of lines');
    if (lines.length > MAX_RECORDS) throw new VerificationError(`more than ${MAX_RECORDS} succession records`);
    const records = [];
    const changes = [];
    let key = feedId;
    let recovery = null;
    for (let i = 1; i <= lines.length; i++) {
      const r = await parseRecord(lines[i - 1], feedId);
      if (r.seq !== i || r.prev !== (records.length ? records[records.length - 1].bodyHash : null)) {
        throw new VerificationError(`succession record ${r.seq} does not follow record ${i - 1}`);
      }
      const signer = r.by === 'key' ? key : recovery;
      if (signer === null) {
        throw new VerificationError(`succession record ${i} is signed by a recovery key, but none was committed before it`);
      }
      if (!(await signedBy(signer, SUCCESSION_CONTEXT, r.bodyHash, r.signature))) {
        throw new VerificationError(`bad signature on succession record ${i} (by ${r.by})`);
      }
      if (r.key === key) {
        if (r.heads.size || r.by !== 'key') {
          throw new VerificationError(`succession record ${i} keeps the key: it must be signed by it and list no heads`);
        }
      } else {
        for (const before of changes) { // boundaries only move forward (§9.1)
          for (const [sh, { count }] of before) {
            if ((r.heads.get(sh)?.count ?? 0) < count) {
              throw new VerificationError(`succession record ${i} moves subfeed ${sh}'s boundary back (or omits it)`);
            }
          }
        }
        changes.push(r.heads);
      }
      records.push(r);
      key = r.key;
      recovery = r.recovery;
    }
    return new KeyChain(feedId, records);
  }

  /** The record lines, oldest first (strings). */
  lines() {
    return this.records.map((r) => r.line);
  }

  /** True if `other`'s records are the first records of this chain. */
  extends(other) {
    return other.records.length <= this.records.length
      && other.records.every((r, i) => r.bodyHash === this.records[i].bodyHash);
  }

  /** The key (hex) that must sign message `n` of subfeed `subfeedHash` (spec/feeds.md §9.2). */
  keyFor(subfeedHash, n) {
    let key = this.feedId;
    for (const c of this.changes) {
      if ((c.heads.get(subfeedHash)?.count ?? 0) > n) break;
      key = c.key;
    }
    return key;
  }

  /** Keys that governed the subfeed before the key of message `n`: a valid signature by one of
   * them at `n` is a succession violation. */
  supersededBefore(subfeedHash, n) {
    const governing = this.keyFor(subfeedHash, n);
    const earlier = [this.feedId, ...this.changes.map((c) => c.key)];
    return earlier.slice(0, earlier.indexOf(governing)).filter((k) => k !== governing);
  }

  /** [position, hash] pairs the key changes pin for the subfeed. */
  pinned(subfeedHash) {
    return this.changes.filter((c) => c.heads.has(subfeedHash))
      .map((c) => [c.heads.get(subfeedHash).count - 1, c.heads.get(subfeedHash).hash]);
  }
}

/**
 * The longer of two chains of which one extends the other. Two chains that diverge mean a key
 * signed two different successions: VerificationError.
 */
export function mergeChains(current, candidate) {
  if (candidate.extends(current)) return candidate;
  if (current.extends(candidate)) return current;
  throw new VerificationError(`two different key successions of feed ${current.feedId}: a key signed two successions; `
    + 'refusing the messages that carry the new one');
}

/**
 * `chain` merged with every chain the parsed messages carry (their `succession` field, verified
 * from the feed's key; spec/feeds.md §9.3). Returns `chain` itself when nothing new is carried.
 */
export async function learnCarried(chain, messages) {
  const seen = new Set();
  for (const m of messages) {
    if (m.succession === null || m.succession === undefined) continue;
    const id = m.succession.join('\n');
    if (seen.has(id)) continue;
    seen.add(id);
    const known = chain.lines();
    if (m.succession.length <= known.length && m.succession.every((x, i) => x === known[i])) continue;
    chain = mergeChains(chain, await KeyChain.verify(chain.feedId, m.succession));
  }
  return chain;
}

/** The JSON text of a succession violation proof (spec/feeds.md §9.4), keys in the order the
 * Python implementation writes them. */
export function violationProof(feedId, subfeedHash, position, chain, lines) {
  return JSON.stringify({
    type: 'kachery-succession-violation', v: 1, feed: feedId, subfeed: subfeedHash, position,
    succession: chain.lines(), chain: lines.map((l) => (typeof l === 'string' ? l : decodeUtf8(l, 'wire line'))),
  });
}

/** Check a succession violation proof (spec/feeds.md §9.4) on its own; returns
 * {feedId, subfeedHash, position} or raises VerificationError. `parseWireLine` and
 * `signatureIsValid` come from feeds.js (passed in to keep the modules acyclic). */
export async function verifyViolationProof(proof, { parseWireLine, signatureIsValid }) {
  const d = parseJson(asBytes(proof, 'violation proof'), 'violation proof');
  if (d === null || typeof d !== 'object' || Array.isArray(d) || !sameKeys(d, VIOLATION_KEYS)
      || d.type !== 'kachery-succession-violation' || integerMember(d, 'v', 1, 1) !== 1) {
    throw new VerificationError(`not a succession violation proof: expected exactly the keys ${VIOLATION_KEYS.join(', ')}`);
  }
  if (typeof d.feed !== 'string' || !HEX64.test(d.feed) || typeof d.subfeed !== 'string' || !HEX40.test(d.subfeed)) {
    throw new VerificationError('malformed violation proof: feed or subfeed');
  }
  if (integerMember(d, 'position') === undefined) throw new VerificationError("malformed violation proof: 'position'");
  for (const k of ['succession', 'chain']) {
    if (!Array.isArray(d[k]) || d[k].length === 0 || !d[k].every((x) => typeof x === 'string')) {
      throw new VerificationError(`malformed violation proof: '${k}' is not a non-empty list of lines`);
    }
  }
  const chain = await KeyChain.verify(d.feed, d.succession);
  const msgs = [];
  for (const line of d.chain) msgs.push(await parseWireLine(line, d.feed, d.subfeed));
  for (let i = 1; i < msgs.length; i++) {
    if (msgs[i].number !== msgs[i - 1].number + 1 || msgs[i].prev !== msgs[i - 1].hash) {
      throw new VerificationError("a violation proof's chain is not contiguous");
    }
  }
  const last = msgs[msgs.length - 1];
  if (last.signature === null) throw new VerificationError("a violation proof's chain must end at a signed message");
  if (await signatureIsValid(chain.keyFor(d.subfeed, last.number), last.hash, last.signature)) {
    throw new VerificationError('the chain is signed by the key the succession names: no violation');
  }
  let byOld = false;
  for (const k of chain.supersededBefore(d.subfeed, last.number)) {
    if (await signatureIsValid(k, last.hash, last.signature)) byOld = true;
  }
  if (!byOld) throw new VerificationError('the chain is not signed by a key the succession replaced');
  return { feedId: d.feed, subfeedHash: d.subfeed, position: msgs[0].number };
}
