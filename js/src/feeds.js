/**
 * kachery feeds, format v1 (spec/feeds.md): wire lines, ranges, segments, fork proofs, subfeed
 * names and feed:// URIs. Everything here verifies; nothing writes messages.
 */
import { InvalidArgumentError, VerificationError } from './errors.js';
import {
  asBytes, bytesEqual, concat, decodeUtf8, fromHex, isWellFormed, sha1Hex, sha256, toHex, utf8,
} from './bytes.js';
import { integerMember, MAX_SAFE_INTEGER, parseJson } from './json.js';
import { verifyEd25519 } from './ed25519.js';
import {
  KeyChain, learnCarried, SuccessionViolationError, verifyViolationProof, violationProof,
} from './succession.js';

export const MAX_MESSAGE_BYTES = 1 << 20;
export const MAX_LINE_BYTES = MAX_MESSAGE_BYTES + 129;
/** "kachery-feed-message-v1" || 0x00 */
export const SIGNATURE_CONTEXT = concat(utf8('kachery-feed-message-v1'), new Uint8Array([0]));
const REQUIRED = ['feed', 'n', 'payload', 'prev', 'subfeed', 'ts', 'v'];
const OPTIONAL = ['meta', 'succession'];
const HEX64 = /^[0-9a-f]{64}$/;
const HEX40 = /^[0-9a-f]{40}$/;
const TAB = 0x09;
const LF = 0x0a;

/** Check a feed ID (64 hex, either case) and return it lowercased. */
export function normalizeFeedId(feedId) {
  if (typeof feedId !== 'string' || !/^[0-9a-fA-F]{64}$/.test(feedId)) {
    throw new InvalidArgumentError(`not a feed ID (64 hex characters): ${JSON.stringify(feedId)}`);
  }
  return feedId.toLowerCase();
}

/**
 * Parse one wire line (bytes, or a string whose UTF-8 form is the line) and check it belongs to
 * `feedId`/`subfeedHash` (spec/feeds.md §3, §5 step 1). Signatures and the chain are checked by
 * verifyRange. Returns {number, prev, hash, body, signature, timestampMs, payload, metadata,
 * succession} where prev/hash are 64-hex strings (prev null for n = 0), body/signature are
 * bytes and succession is the key succession records the message carries (spec/feeds.md §9.3:
 * an array of record lines, verified by verifyRange/SubfeedVerifier) or null.
 */
export async function parseWireLine(line, feedId, subfeedHash) {
  const bytes = asBytes(line, 'wire line');
  if (bytes.length > MAX_LINE_BYTES) throw new VerificationError('message is larger than the 1 MiB limit');
  if (bytes.includes(LF)) throw new VerificationError('malformed message: contains a newline');
  const tab = bytes.lastIndexOf(TAB);
  if (tab <= 0) throw new VerificationError("malformed message: expected '<body>\\t<signature>'");
  const body = bytes.subarray(0, tab);
  const sigHex = decodeUtf8(bytes.subarray(tab + 1), 'signature');
  let signature = null;
  if (sigHex !== '') {
    signature = fromHex(sigHex, 64);
    if (signature === null) throw new VerificationError('malformed signature: expected 128 lowercase hex characters');
  }
  const d = parseJson(body, 'message body');
  if (d === null || typeof d !== 'object' || Array.isArray(d)) throw new VerificationError('message body is not a JSON object');
  for (const k of REQUIRED) if (!Object.hasOwn(d, k)) throw new VerificationError(`message body lacks '${k}'`);
  for (const k of Object.keys(d)) if (!REQUIRED.includes(k) && !OPTIONAL.includes(k)) throw new VerificationError(`message body has an unknown key '${k}'`);
  if (integerMember(d, 'v', 1, 1) !== 1) throw new VerificationError(`unsupported message format version ${JSON.stringify(d.v)}`);
  if (d.feed !== feedId) throw new VerificationError(`message belongs to feed ${JSON.stringify(d.feed)}, not ${feedId}`);
  if (d.subfeed !== subfeedHash) throw new VerificationError(`message belongs to subfeed ${JSON.stringify(d.subfeed)}, not ${subfeedHash}`);
  const number = integerMember(d, 'n');
  if (number === undefined) throw new VerificationError(`message number ${JSON.stringify(d.n)} is not an integer in [0, 2^53-1]`);
  const timestampMs = integerMember(d, 'ts');
  if (timestampMs === undefined) throw new VerificationError(`timestamp ${JSON.stringify(d.ts)} is not an integer in [0, 2^53-1]`);
  let prev = null;
  if (d.prev === null) {
    if (number !== 0) throw new VerificationError(`message ${number} has no previous hash`);
  } else {
    if (number === 0 || typeof d.prev !== 'string' || !HEX64.test(d.prev)) {
      throw new VerificationError(`message ${number} has an invalid previous hash`);
    }
    prev = d.prev;
  }
  const hasMeta = Object.hasOwn(d, 'meta');
  if (hasMeta && (d.meta === null || typeof d.meta !== 'object' || Array.isArray(d.meta))) {
    throw new VerificationError('message metadata is not a JSON object (absent when unused, never null)');
  }
  const hasSuccession = Object.hasOwn(d, 'succession');
  if (hasSuccession && (!Array.isArray(d.succession) || d.succession.length === 0
      || !d.succession.every((x) => typeof x === 'string'))) {
    throw new VerificationError("message field 'succession' is not a non-empty list of record lines");
  }
  return {
    number, prev, hash: toHex(await sha256(body)), body, signature, timestampMs,
    payload: d.payload, metadata: hasMeta ? d.meta : null, succession: hasSuccession ? d.succession : null,
  };
}

/** Verify one message's signature (spec/feeds.md §3, §3.1) under `publicKey` (64 hex: the feed
 * ID, or for a feed that changed keys the key of the message's position, §9.2). */
export async function signatureIsValid(publicKey, hashHex, signature) {
  return verifyEd25519(fromHex(publicKey, 32), concat(SIGNATURE_CONTEXT, fromHex(hashHex, 32)), signature);
}

/** A parsed message's wire line (its body and signature, byte for byte) as a string. */
function wireOf(m) {
  return decodeUtf8(m.body, 'message body') + '\t' + (m.signature === null ? '' : toHex(m.signature));
}

/**
 * Check parsed messages as a range on its own (spec/feeds.md §5 step 2): contiguous numbers,
 * linked hashes, last one signed, every present signature valid. `previousHash` (optional) is
 * the known hash of the message before the first, to continue a verified chain.
 *
 * `chain` (a verified KeyChain, optional) and `subfeedHash`: for a feed that changed keys
 * (spec/feeds.md §9.2) each signature is checked under the key of its position and the hashes
 * the records pin must hold; a valid signature by a key the succession replaced there raises
 * SuccessionViolationError (a VerificationError with `position` and a violation `proof`).
 */
export async function checkChain(messages, feedId, previousHash = undefined, { chain = null, subfeedHash: sh = null } = {}) {
  if (messages.length === 0) return;
  if (previousHash !== undefined && messages[0].prev !== previousHash) {
    throw new VerificationError(`message ${messages[0].number} does not link to the verified chain`);
  }
  for (let i = 1; i < messages.length; i++) {
    const m = messages[i];
    const p = messages[i - 1];
    if (m.number !== p.number + 1) throw new VerificationError(`message ${m.number} follows message ${p.number}: gap`);
    if (m.prev !== p.hash) throw new VerificationError(`message ${m.number} does not link to message ${p.number}`);
  }
  const last = messages[messages.length - 1];
  if (last.signature === null) {
    throw new VerificationError(`range ends at message ${last.number}, which is not signed`);
  }
  if (chain === null || chain.records.length === 0) {
    for (const m of messages) {
      if (m.signature !== null && !(await signatureIsValid(feedId, m.hash, m.signature))) {
        throw new VerificationError(`bad signature on message ${m.number}`);
      }
    }
    return;
  }
  const first = messages[0].number;
  for (const [position, pinnedHash] of chain.pinned(sh)) {
    const i = position - first;
    const got = i >= 0 && i < messages.length ? messages[i].hash
      : i + 1 >= 0 && i + 1 < messages.length ? messages[i + 1].prev : null;
    if (got !== null && got !== pinnedHash) {
      throw new VerificationError(`message ${position} contradicts the key succession of feed ${feedId}, which pins another message there`);
    }
  }
  for (const m of messages) {
    if (m.signature === null || await signatureIsValid(chain.keyFor(sh, m.number), m.hash, m.signature)) continue;
    for (const old of chain.supersededBefore(sh, m.number)) {
      if (await signatureIsValid(old, m.hash, m.signature)) {
        throw new SuccessionViolationError(
          `message ${m.number} is signed by a key that the feed's key succession replaced before it `
          + `(record ${chain.records.length} or earlier): the old key signed after handing the feed over `
          + '(a compromised or restored old key); refused', {
            position: m.number, proof: violationProof(feedId, sh, m.number, chain, [wireOf(m)]),
          });
      }
    }
    throw new VerificationError(`bad signature on message ${m.number}`);
  }
}

/**
 * Parse and verify a range of wire lines of one subfeed; returns the parsed messages. The key
 * succession records the messages carry (spec/feeds.md §9.3) are verified, merged with
 * `succession` (record lines known before, optional) and the range is checked against them.
 */
export async function verifyRange(lines, feedId, subfeedHash, { succession = [] } = {}) {
  const msgs = [];
  for (const line of lines) msgs.push(await parseWireLine(line, feedId, subfeedHash));
  const chain = await learnCarried(await KeyChain.verify(feedId, succession), msgs);
  await checkChain(msgs, feedId, undefined, { chain, subfeedHash });
  return msgs;
}

/** Split a segment (bytes) into wire lines; a segment not ending with LF is torn. */
export function decodeSegment(data) {
  const bytes = asBytes(data, 'segment');
  if (bytes.length === 0) return [];
  if (bytes[bytes.length - 1] !== LF) throw new VerificationError('segment does not end with a newline (truncated?)');
  const lines = [];
  let start = 0;
  for (let i = 0; i < bytes.length; i++) {
    if (bytes[i] === LF) {
      lines.push(bytes.subarray(start, i));
      start = i + 1;
    }
  }
  return lines;
}

/**
 * Follows one subfeed: lines arrive in pieces (a stream, bucket segments, a head's tail) and
 * are released only once a signature covers them, linked to everything released before.
 * add() is atomic: if any check fails nothing changes and a VerificationError is raised.
 *
 * Key succession (spec/feeds.md §9): the records carried by the messages it checks are
 * verified and kept (`chain`), and every signature is checked under the key of its position.
 * A follower starting at `start > 0` has not seen the messages that carried the records
 * before it: pass them as `succession` (record lines, e.g. from an earlier session), else a
 * message signed by a later key is refused as a bad signature (the error says so).
 */
export class SubfeedVerifier {
  constructor(feedId, subfeedHash, { start = 0, maxPending = 200_000, succession = [] } = {}) {
    this.feedId = normalizeFeedId(feedId);
    this.subfeedHash = subfeedHash;
    this.start = start;
    this.next = start; // number of the next message to release
    this.lastHash = undefined; // hash of message next-1 once known
    this.pending = []; // parsed, unsigned, not yet covered by a signature
    this.maxPending = maxPending;
    this.chain = new KeyChain(this.feedId); // verified succession records known so far
    this.initialSuccession = succession; // verified by the first add()
  }

  /** Learn (verify and merge) key succession records known from elsewhere, e.g. found before
   * `start` (spec/feeds.md §9.3). Raises VerificationError and changes nothing if they are
   * invalid or diverge from the records already known. */
  async learnSuccession(lines) {
    this.chain = await learnCarried(this.chain, [{ succession: lines }]);
  }

  /** Add wire lines in order; returns the newly verified messages (maybe none). */
  async add(lines) {
    if (this.initialSuccession.length) {
      await this.learnSuccession(this.initialSuccession);
      this.initialSuccession = [];
    }
    const parsed = [];
    for (const line of lines) parsed.push(await parseWireLine(line, this.feedId, this.subfeedHash));
    let queue = this.pending.concat(parsed);
    // Lines we already released (re-pushes, overlapping segments) are skipped.
    let skip = 0;
    while (skip < queue.length && queue[skip].number < this.next) skip++;
    queue = queue.slice(skip);
    if (queue.length && queue[0].number > this.next) {
      throw new VerificationError(`messages start at ${queue[0].number}, expected ${this.next}: gap`);
    }
    let lastSigned = -1;
    for (let i = queue.length - 1; i >= 0; i--) {
      if (queue[i].signature !== null) {
        lastSigned = i;
        break;
      }
    }
    const ready = queue.slice(0, lastSigned + 1);
    const rest = queue.slice(lastSigned + 1);
    if (rest.length > this.maxPending) throw new VerificationError(`more than ${this.maxPending} unsigned messages in a row`);
    const chain = await learnCarried(this.chain, ready);
    if (ready.length) {
      try {
        await checkChain(ready, this.feedId, this.lastHash, { chain, subfeedHash: this.subfeedHash });
      } catch (err) {
        if (this.start > 0 && chain.records.length === 0 && /^bad signature/.test(err.message)) {
          err.message += ` (or the feed changed keys before message ${this.start}: a follower starting there `
            + 'needs the key succession records carried before it, spec/feeds.md §9.3)';
        }
        throw err;
      }
    }
    if (rest.length) {
      // Not yet covered by a signature, but must at least continue the chain.
      const linkTo = ready.length ? ready[ready.length - 1] : null;
      if (linkTo && (rest[0].number !== linkTo.number + 1 || rest[0].prev !== linkTo.hash)) {
        throw new VerificationError(`message ${rest[0].number} does not continue the chain`);
      }
    }
    if (ready.length) {
      this.next = ready[ready.length - 1].number + 1;
      this.lastHash = ready[ready.length - 1].hash;
      this.chain = chain;
    }
    this.pending = rest;
    return ready;
  }
}

// ----------------------------------------------------------------------------- names and URIs
const MAX_NAME_DEPTH = 201; // arrays and objects, the outermost counting as 1

function compareCodePoints(a, b) {
  // Code point order (Python's str order): UTF-16 order differs only where a surrogate meets
  // a character in U+E000..U+FFFF.
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    let x = a.charCodeAt(i);
    let y = b.charCodeAt(i);
    if (x === y) continue;
    if (x >= 0xd800 && x <= 0xdfff) x += 0x10000;
    if (y >= 0xd800 && y <= 0xdfff) y += 0x10000;
    return x - y;
  }
  return a.length - b.length;
}

function pyString(s) {
  if (!isWellFormed(s)) throw new InvalidArgumentError('a subfeed name must not contain lone surrogates');
  let out = '"';
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === 0x22) out += '\\"';
    else if (c === 0x5c) out += '\\\\';
    else if (c === 0x08) out += '\\b';
    else if (c === 0x09) out += '\\t';
    else if (c === 0x0a) out += '\\n';
    else if (c === 0x0c) out += '\\f';
    else if (c === 0x0d) out += '\\r';
    else if (c < 0x20 || c >= 0x7f) out += '\\u' + c.toString(16).padStart(4, '0');
    else out += s[i];
  }
  return out + '"';
}

/** Python's json.dumps(name, sort_keys=True, separators=(',', ':')) for allowed names. */
function pyJson(v, depth) {
  if (v !== null && typeof v === 'object' && depth >= MAX_NAME_DEPTH) {
    throw new InvalidArgumentError(`subfeed name nests deeper than ${MAX_NAME_DEPTH} levels`);
  }
  if (v === null) return 'null';
  if (v === true) return 'true';
  if (v === false) return 'false';
  if (typeof v === 'number') {
    if (!Number.isSafeInteger(v)) {
      throw new InvalidArgumentError(`subfeed names may hold only integers within ±(2^53-1), not ${v}`);
    }
    return Object.is(v, -0) ? '0' : String(v);
  }
  if (typeof v === 'string') return pyString(v);
  if (Array.isArray(v)) return '[' + v.map((x) => pyJson(x, depth + 1)).join(',') + ']';
  const proto = Object.getPrototypeOf(v);
  if (proto === Object.prototype || proto === null) {
    const keys = Object.keys(v).sort(compareCodePoints);
    return '{' + keys.map((k) => pyString(k) + ':' + pyJson(v[k], depth + 1)).join(',') + '}';
  }
  throw new InvalidArgumentError(`${typeof v} is not allowed in a subfeed name`);
}

/** The 40-hex hash of subfeed `name` (a string, or a JSON object or array): spec/feeds.md §1. */
export async function subfeedHash(name) {
  if (typeof name === 'string') {
    if (!isWellFormed(name)) throw new InvalidArgumentError('a subfeed name must not contain lone surrogates');
    if (name.startsWith('~')) {
      const h = name.slice(1);
      if (!/^[0-9a-fA-F]{40}$/.test(h)) throw new InvalidArgumentError(`subfeed names starting with '~' must be '~<40 hex>'`);
      return h.toLowerCase();
    }
    if (name === '') throw new InvalidArgumentError('a subfeed name cannot be empty');
    return sha1Hex(utf8(name));
  }
  if (name !== null && typeof name === 'object') return sha1Hex(utf8(pyJson(name, 0)));
  throw new InvalidArgumentError('a subfeed name must be a string or a JSON object or array');
}

const UNRESERVED = /[A-Za-z0-9_.~-]/;

/** The URI of subfeed `name` of feed `feedId` (string names percent-encoded, others by hash). */
export async function subfeedUri(feedId, name) {
  feedId = normalizeFeedId(feedId);
  if (typeof name === 'string' && !name.startsWith('~')) {
    await subfeedHash(name);
    let out = '';
    for (const b of utf8(name)) {
      const ch = String.fromCharCode(b);
      out += b < 0x80 && UNRESERVED.test(ch) ? ch : '%' + b.toString(16).toUpperCase().padStart(2, '0');
    }
    return `feed://${feedId}/${out}`;
  }
  return `feed://${feedId}/~${await subfeedHash(name)}`;
}

/** Parse a feed:// URI: {feedId, subfeedName (or null), subfeedHash (or null)}. */
export async function parseFeedUri(uri) {
  if (typeof uri !== 'string' || !uri.startsWith('feed://')) {
    throw new InvalidArgumentError(`not a feed URI: ${JSON.stringify(uri)}`);
  }
  let rest = uri.slice('feed://'.length);
  const cut = rest.search(/[?#]/);
  if (cut >= 0) rest = rest.slice(0, cut);
  const slash = rest.indexOf('/');
  const feedId = normalizeFeedId(slash < 0 ? rest : rest.slice(0, slash));
  const namePart = slash < 0 ? '' : rest.slice(slash + 1);
  if (namePart === '') return { feedId, subfeedName: null, subfeedHash: null };
  if (!isWellFormed(namePart)) throw new InvalidArgumentError('feed URI contains a lone surrogate');
  const bytes = [];
  for (let i = 0; i < namePart.length; i++) {
    if (namePart[i] === '%') {
      const h = namePart.slice(i + 1, i + 3);
      if (!/^[0-9A-Fa-f]{2}$/.test(h)) throw new InvalidArgumentError(`'%' not followed by two hex digits in ${uri}`);
      bytes.push(parseInt(h, 16));
      i += 2;
    } else {
      const cp = namePart.codePointAt(i);
      const ch = String.fromCodePoint(cp);
      bytes.push(...utf8(ch));
      i += ch.length - 1;
    }
  }
  let name;
  try {
    name = decodeUtf8(Uint8Array.from(bytes));
  } catch {
    throw new InvalidArgumentError(`subfeed name in ${uri} is not UTF-8 once percent-decoded`);
  }
  return { feedId, subfeedName: name, subfeedHash: await subfeedHash(name) };
}

// ----------------------------------------------------------------------------- fork proofs
const PROOF_KEYS = ['a', 'b', 'feed', 'position', 'subfeed', 'type', 'v'];
const PROOF_KEYS_WITH_SUCCESSION = [...PROOF_KEYS, 'succession'].sort();

function exactKeys(obj, keys) {
  const k = Object.keys(obj).sort();
  return k.length === keys.length && k.every((x, i) => x === keys[i]);
}

function determined(chain) {
  const m = new Map();
  for (const x of chain) {
    if (x.prev !== null) m.set(x.number - 1, x.prev);
    m.set(x.number, x.hash);
  }
  return m;
}

/**
 * Check a fork proof (spec/feeds.md §6; with `succession` for a feed that changed keys, its
 * chains checked under the key of each position, §9.2) or a succession violation proof (§9.4);
 * returns {feedId, subfeedHash, position}.
 */
export async function verifyForkProof(proof) {
  const d = parseJson(asBytes(proof, 'fork proof'), 'fork proof');
  if (d !== null && typeof d === 'object' && !Array.isArray(d) && d.type === 'kachery-succession-violation') {
    return verifyViolationProof(proof, { parseWireLine, signatureIsValid });
  }
  if (d === null || typeof d !== 'object' || Array.isArray(d)
      || !(exactKeys(d, PROOF_KEYS) || exactKeys(d, PROOF_KEYS_WITH_SUCCESSION))) {
    throw new VerificationError(`malformed fork proof: expected exactly the keys ${PROOF_KEYS.join(', ')}`);
  }
  if (d.type !== 'kachery-fork-proof' || integerMember(d, 'v', 1, 1) !== 1) throw new VerificationError('not a kachery fork proof (v1)');
  if (typeof d.feed !== 'string' || !HEX64.test(d.feed)) throw new VerificationError("malformed fork proof: 'feed'");
  if (typeof d.subfeed !== 'string' || !HEX40.test(d.subfeed)) throw new VerificationError("malformed fork proof: 'subfeed'");
  if (integerMember(d, 'position') === undefined) throw new VerificationError("malformed fork proof: 'position'");
  let keys = null;
  if (Object.hasOwn(d, 'succession')) {
    if (!Array.isArray(d.succession) || d.succession.length === 0 || !d.succession.every((x) => typeof x === 'string')) {
      throw new VerificationError("malformed fork proof: 'succession' is not a non-empty list of records");
    }
    keys = await KeyChain.verify(d.feed, d.succession);
  }
  const chains = [];
  for (const k of ['a', 'b']) {
    if (!Array.isArray(d[k]) || !d[k].every((x) => typeof x === 'string')) throw new VerificationError(`malformed fork proof: '${k}'`);
    if (d[k].length === 0) throw new VerificationError('a fork proof chain is empty');
    const msgs = [];
    for (const line of d[k]) msgs.push(await parseWireLine(line, d.feed, d.subfeed));
    try {
      await checkChain(msgs, d.feed, undefined, { chain: keys, subfeedHash: d.subfeed });
    } catch (err) {
      if (err instanceof SuccessionViolationError) {
        throw new VerificationError('a fork proof chain is signed by a key its succession replaced (a succession violation, not a fork)');
      }
      throw err;
    }
    chains.push(msgs);
  }
  const ha = determined(chains[0]);
  const hb = determined(chains[1]);
  let position = null;
  for (const [p, h] of ha) if (hb.has(p) && hb.get(p) !== h && (position === null || p < position)) position = p;
  if (position === null) throw new VerificationError('the two chains do not conflict: this is not a fork');
  return { feedId: d.feed, subfeedHash: d.subfeed, position };
}

export { bytesEqual, MAX_SAFE_INTEGER };
