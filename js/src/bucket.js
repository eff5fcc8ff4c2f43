/**
 * Reading a channel's bucket over HTTP (spec/bucket.md), verifying everything: files by SHA-1
 * (byte ranges through the manifest's chunks), subfeeds by signature and chain (following by
 * polling the head), task results by the provider's signature.
 */
import { InvalidArgumentError, VerificationError } from './errors.js';
import { asBytes, decodeUtf8, sha1Hex } from './bytes.js';
import { integerMember, parseJson } from './json.js';
import { decodeSegment, normalizeFeedId, parseFeedUri, parseWireLine, SubfeedVerifier } from './feeds.js';
import { KeyChain } from './succession.js';
import { verifyTaskResult } from './tasks.js';

export const SEGMENT_SIZE = 1000;
export const CHUNK_SIZE = 20_000_000;
const HEX40 = /^[0-9a-f]{40}$/;
const HEX64 = /^[0-9a-f]{64}$/;

/** p(h) = h[0:2]/h[2:4]/h[4:6]/h */
export function pathify(h) {
  if (!/^[0-9a-f]{6,}$/.test(h)) throw new InvalidArgumentError(`not a lowercase hex hash: ${h}`);
  return `${h.slice(0, 2)}/${h.slice(2, 4)}/${h.slice(4, 6)}/${h}`;
}

export const keys = {
  file: (channel, sha1) => `${channel}/sha1/${pathify(sha1)}`,
  subfeed: (channel, feedId, sh) => `${channel}/feeds/${pathify(feedId)}/subfeeds/${pathify(sh)}`,
  head: (channel, feedId, sh) => `${keys.subfeed(channel, feedId, sh)}/head`,
  segment: (channel, feedId, sh, i) => `${keys.subfeed(channel, feedId, sh)}/segments/${i}`,
  taskResult: (channel, taskHash) => `${channel}/task_results/${pathify(taskHash)}`,
};

const HEAD_KEYS = ['count', 'segmentSize', 'tail', 'v'];

/** Parse a subfeed head (spec/bucket.md §3): {count, tail: [string wire lines]}. */
export function parseHead(data) {
  const d = parseJson(asBytes(data, 'head'), 'subfeed head');
  if (d === null || typeof d !== 'object' || Array.isArray(d)
      || Object.keys(d).sort().join() !== HEAD_KEYS.join()) {
    throw new VerificationError(`malformed subfeed head: expected exactly the keys ${HEAD_KEYS.join(', ')}`);
  }
  if (integerMember(d, 'v', 1, 1) !== 1 || integerMember(d, 'segmentSize', SEGMENT_SIZE, SEGMENT_SIZE) !== SEGMENT_SIZE) {
    throw new VerificationError('unsupported subfeed head (version or segment size)');
  }
  const count = integerMember(d, 'count');
  if (count === undefined) throw new VerificationError('malformed subfeed head: count');
  if (!Array.isArray(d.tail) || !d.tail.every((x) => typeof x === 'string')) throw new VerificationError('malformed subfeed head tail');
  if (d.tail.length !== count - Math.floor(count / SEGMENT_SIZE) * SEGMENT_SIZE) {
    throw new VerificationError('subfeed head tail length does not match its count');
  }
  return { count, tail: d.tail };
}

/** Parse sha1://<sha1>[/basename][?manifest=<sha1>] (spec/storage.md §2). */
export function parseSha1Uri(uri) {
  const m = /^sha1:\/\/([0-9a-f]{40})(\/[^?#]*)?(\?[^#]*)?(#.*)?$/.exec(uri);
  if (!m) throw new InvalidArgumentError(`not a sha1:// URI: ${uri}`);
  let manifest = null;
  for (const param of (m[3] ?? '').slice(1).split('&')) {
    if (param.startsWith('manifest=')) {
      manifest = param.slice('manifest='.length);
      if (!HEX40.test(manifest)) throw new InvalidArgumentError(`bad manifest in ${uri}`);
    }
  }
  return { sha1: m[1], manifest };
}

/** Parse and validate a manifest (spec/storage.md §3) that must describe file `sha1`. */
export function parseManifest(data, sha1) {
  const d = parseJson(asBytes(data, 'manifest'), 'manifest');
  const size = d && integerMember(d, 'size');
  if (size === undefined || d.sha1 !== sha1 || !Array.isArray(d.chunks)) throw new VerificationError(`manifest does not describe ${sha1}`);
  let pos = 0;
  for (const c of d.chunks) {
    const start = integerMember(c, 'start');
    const end = integerMember(c, 'end');
    if (start !== pos || end === undefined || end - start !== Math.min(CHUNK_SIZE, size - start) || !HEX40.test(c.sha1)) {
      throw new VerificationError('manifest chunks are not contiguous chunks of 20,000,000 bytes');
    }
    pos = end;
  }
  if (pos !== size || size <= CHUNK_SIZE) throw new VerificationError('manifest chunks do not cover the file');
  return { size, sha1, chunks: d.chunks };
}

/**
 * A channel's bucket at `readUrl` (channel info's bucket.read_url; embedded: <hub>/bucket).
 * `fetch` may be given (defaults to globalThis.fetch).
 */
export class BucketReader {
  constructor(readUrl, channel, { fetch: f = globalThis.fetch.bind(globalThis) } = {}) {
    this.readUrl = readUrl.replace(/\/+$/, '');
    this.channel = channel;
    this.fetch = f;
  }

  /** The object's bytes, or null if absent (404). */
  async get(key, { signal } = {}) {
    const url = `${this.readUrl}/${key.split('/').map(encodeURIComponent).join('/')}`;
    const resp = await this.fetch(url, { signal, cache: 'no-store' });
    if (resp.status === 404) return null;
    if (!resp.ok) throw new Error(`bucket GET ${key}: HTTP ${resp.status}`);
    return new Uint8Array(await resp.arrayBuffer());
  }

  async getVerifiedObject(sha1, expectedSize, signal) {
    const data = await this.get(keys.file(this.channel, sha1), { signal });
    if (data === null) throw new Error(`sha1://${sha1} is not in the bucket of ${this.channel}`);
    if ((expectedSize !== undefined && data.length !== expectedSize) || (await sha1Hex(data)) !== sha1) {
      throw new VerificationError(`bucket object ${sha1} does not hash to its name (corrupted or tampered)`);
    }
    return data;
  }

  /** A whole file, verified. `uri` is sha1://... (with ?manifest= for large files). */
  async readFile(uri, { signal } = {}) {
    const { sha1, manifest } = parseSha1Uri(uri);
    if (!manifest) return this.getVerifiedObject(sha1, undefined, signal);
    const m = parseManifest(await this.getVerifiedObject(manifest, undefined, signal), sha1);
    return this.readFileRange(uri, 0, m.size, { signal });
  }

  /** Bytes [start, end) of a file, verified: through the covering chunks when it has a
   * manifest, else by reading (and hashing) the whole file. */
  async readFileRange(uri, start, end, { signal } = {}) {
    const { sha1, manifest } = parseSha1Uri(uri);
    if (!(Number.isSafeInteger(start) && Number.isSafeInteger(end) && 0 <= start && start <= end)) {
      throw new InvalidArgumentError('need 0 <= start <= end');
    }
    if (!manifest) {
      const all = await this.getVerifiedObject(sha1, undefined, signal);
      if (end > all.length) throw new InvalidArgumentError(`range ends past the file's ${all.length} bytes`);
      return all.slice(start, end);
    }
    const m = parseManifest(await this.getVerifiedObject(manifest, undefined, signal), sha1);
    if (end > m.size) throw new InvalidArgumentError(`range ends past the file's ${m.size} bytes`);
    const out = new Uint8Array(end - start);
    for (const c of m.chunks) {
      if (c.end <= start || c.start >= end) continue;
      const data = await this.getVerifiedObject(c.sha1, c.end - c.start, signal);
      const from = Math.max(start, c.start);
      const to = Math.min(end, c.end);
      out.set(data.subarray(from - c.start, to - c.start), from - start);
    }
    return out;
  }

  /** The head of a subfeed, parsed, or null if nothing was published. */
  async readHead(feedId, subfeedHash, { signal } = {}) {
    const data = await this.get(keys.head(this.channel, feedId, subfeedHash), { signal });
    return data === null ? null : parseHead(data);
  }

  /** A cached task result, verified (spec/tasks.md §5), or null if absent. Check the
   * provider's provide-tasks role in the channel's membership yourself. */
  async readTaskResult(taskHash, functionId, { signal } = {}) {
    if (!HEX64.test(taskHash)) throw new InvalidArgumentError('task hash must be 64 lowercase hex');
    const data = await this.get(keys.taskResult(this.channel, taskHash), { signal });
    return data === null ? null : verifyTaskResult(data, { taskHash, functionId });
  }

  /**
   * Follow a subfeed by polling its head: yields verified messages from `start` on, in order,
   * forever (until `signal` aborts). Bad bucket data (tampered segment or head) raises
   * VerificationError, or, with `onError`, is reported there and retried after `pollMs`.
   *
   * A feed that changed keys (spec/feeds.md §9): the records the messages carry are verified
   * and each message is checked under the key of its position; one signed by a key the
   * succession had replaced there is a SuccessionViolationError (reported like any bad data,
   * never yielded). Starting at `start > 0`, the records carried before `start` are needed:
   * pass them as `succession`, or they are looked up in the bucket (findSuccession) the first
   * time a message fails under the keys known.
   */
  async *follow(uri, { start = 0, pollMs = 1000, signal, onError, succession = [] } = {}) {
    const { feedId, subfeedHash } = await parseFeedUri(uri);
    if (!subfeedHash) throw new InvalidArgumentError(`${uri} names a feed, not a subfeed`);
    const verifier = new SubfeedVerifier(feedId, subfeedHash, { start, succession });
    let lookedBack = start === 0 || succession.length > 0;
    while (!signal?.aborted) {
      let got = 0;
      try {
        for await (const batch of this.#catchUp(verifier, feedId, subfeedHash, signal)) {
          got += batch.length;
          yield* batch;
        }
      } catch (err) {
        if (!(err instanceof VerificationError)) throw err;
        if (!lookedBack && verifier.chain.records.length === 0) {
          // Maybe signed by a later key whose records were carried before `start`: look once.
          lookedBack = true;
          const found = await this.findSuccession(uri, start, { signal });
          if (found.length) {
            await verifier.learnSuccession(found);
            continue;
          }
        }
        if (!onError) throw err;
        onError(err);
      }
      if (!got) await sleep(pollMs, signal);
    }
  }

  /**
   * The key succession records (spec/feeds.md §9.3) carried by the last message before
   * position `before` of a subfeed that carries any, verified from the feed's key; [] if none
   * does. Reads the bucket backwards, one segment at a time (the messages are only scanned for
   * the records, which verify on their own).
   */
  async findSuccession(uri, before, { signal } = {}) {
    const { feedId, subfeedHash } = await parseFeedUri(uri);
    if (!subfeedHash) throw new InvalidArgumentError(`${uri} names a feed, not a subfeed`);
    const head = await this.readHead(feedId, subfeedHash, { signal });
    if (head === null) return [];
    const end = Math.min(before, head.count);
    const full = Math.floor(head.count / SEGMENT_SIZE);
    for (let i = Math.floor((end - 1) / SEGMENT_SIZE); i >= 0 && end > 0; i--) {
      let lines;
      if (i >= full) {
        lines = head.tail;
      } else {
        const seg = await this.get(keys.segment(this.channel, feedId, subfeedHash, i), { signal });
        if (seg === null) throw new VerificationError(`segment ${i} is missing although the head counts ${head.count}`);
        lines = decodeSegment(seg);
      }
      for (let j = Math.min(lines.length, end - i * SEGMENT_SIZE) - 1; j >= 0; j--) {
        const line = lines[j];
        const text = typeof line === 'string' ? line : decodeUtf8(line, 'wire line');
        if (!text.includes('"succession"')) continue; // cheap filter; parsing decides
        const m = await parseWireLine(line, feedId, subfeedHash);
        if (m.succession !== null) return (await KeyChain.verify(feedId, m.succession)).lines();
      }
    }
    return [];
  }

  async *#catchUp(verifier, feedId, subfeedHash, signal) {
    verifier.pending = []; // unverified leftovers of an earlier poll are read again
    const head = await this.readHead(feedId, subfeedHash, { signal });
    if (head === null || head.count <= verifier.next) return;
    const full = Math.floor(head.count / SEGMENT_SIZE);
    // Lines already released or pending are not added again.
    const have = (base) => Math.max(0, verifier.next + verifier.pending.length - base);
    for (let i = Math.floor(verifier.next / SEGMENT_SIZE); i < full; i++) {
      const seg = await this.get(keys.segment(this.channel, feedId, subfeedHash, i), { signal });
      if (seg === null) throw new VerificationError(`segment ${i} is missing although the head counts ${head.count}`);
      const lines = decodeSegment(seg);
      if (lines.length !== SEGMENT_SIZE) throw new VerificationError(`segment ${i} does not hold ${SEGMENT_SIZE} messages`);
      yield* addVerifiedPrefix(verifier, lines.slice(have(i * SEGMENT_SIZE)));
    }
    yield* addVerifiedPrefix(verifier, head.tail.slice(have(full * SEGMENT_SIZE)));
    if (verifier.pending.length) throw new VerificationError("the bucket's messages do not end at a signed message");
  }
}

/**
 * Add `lines` to `verifier`, yielding the verified batches; if the lines fail as a whole, the
 * messages before the bad one are still released (added one at a time) and the error is raised
 * after them, so one tampered message does not hide the good ones before it.
 */
async function* addVerifiedPrefix(verifier, lines) {
  let batch;
  try {
    batch = await verifier.add(lines);
  } catch (err) {
    if (!(err instanceof VerificationError)) throw err;
    for (const line of lines) {
      const one = await verifier.add([line]); // raises at the first message that fails
      if (one.length) yield one;
    }
    throw err; // not reached unless the batch failed only as a whole
  }
  if (batch.length) yield batch;
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => {
      clearTimeout(t);
      resolve();
    }, { once: true });
  });
}

export { decodeUtf8, normalizeFeedId };
