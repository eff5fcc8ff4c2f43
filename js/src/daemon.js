/**
 * Following a subfeed through a kachery daemon's Server-Sent Events stream
 * (GET <daemon>/api/feeds/stream?uri=&start=&token=, kachery_node/daemon/local_api_feeds.py), verifying
 * every message in the page.
 *
 * Each event's `data` must carry the signed wire line: either a JSON object with a `wire`
 * string (the daemon also sends the record's `number`, `timestamp_ms`, `payload`, `metadata`
 * for old clients; they are ignored here: everything yielded comes from the verified line) or a
 * JSON string that is the wire line. A daemon whose stream carries only unsigned records cannot
 * be verified: the follower refuses it with a clear error rather than showing unverified data.
 * Implemented over fetch() (no EventSource), so it runs in Node too.
 */
import { InvalidArgumentError, VerificationError } from './errors.js';
import { parseFeedUri, SubfeedVerifier } from './feeds.js';
import { parseManifest, parseSha1Uri } from './bucket.js';
import { sha1Hex } from './bytes.js';

/** Parse an SSE byte stream into {id, data} events (WHATWG "server-sent events" rules). */
export async function* sseEvents(body) {
  const decoder = new TextDecoder();
  let buf = '';
  let data = [];
  let id = null;
  for await (const chunk of body) {
    buf += decoder.decode(chunk, { stream: true });
    let m;
    while ((m = /\r\n|\r|\n/.exec(buf)) !== null) {
      const line = buf.slice(0, m.index);
      buf = buf.slice(m.index + m[0].length);
      if (line === '') {
        if (data.length) yield { id, data: data.join('\n') };
        data = [];
        continue;
      }
      if (line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? '' : line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'data') data.push(value);
      else if (field === 'id') id = value;
    }
  }
}

/** The daemon cannot serve a verifiable stream (it sends no wire lines): retrying won't help. */
export class UnverifiableStreamError extends VerificationError {
  constructor(message) {
    super(message);
    this.name = 'UnverifiableStreamError';
  }
}

/** The daemon refused the request (HTTP 4xx: wrong token, origin not allowed, limit). */
export class DaemonRefusedError extends InvalidArgumentError {
  constructor(status, message, kind) {
    super(`daemon refused the request (HTTP ${status}): ${message}`);
    this.name = 'DaemonRefusedError';
    this.status = status;
    this.kind = kind ?? null;
    this.reason = message;
  }
}

/** The wire line an event carries; UnverifiableStreamError if it carries none. */
export function wireLineOf(eventData) {
  let d;
  try {
    d = JSON.parse(eventData);
  } catch {
    throw new UnverifiableStreamError('stream event is not JSON');
  }
  if (typeof d === 'string') return d;
  if (d !== null && typeof d === 'object' && typeof d.wire === 'string') return d.wire;
  throw new UnverifiableStreamError(
    'the daemon stream carries no signed wire lines (only unsigned records), so nothing can be '
    + 'verified in the page: update the daemon');
}

async function refusal(resp) {
  const text = await resp.text();
  try {
    const d = JSON.parse(text);
    if (d && typeof d.error === 'string') return new DaemonRefusedError(resp.status, d.error, d.kind);
  } catch { /* not JSON: show the text */ }
  return new DaemonRefusedError(resp.status, text.slice(0, 500) || resp.statusText);
}

/** The number an event claims (unverified: only to say which message was rejected). */
function claimedNumber(ev, wire) {
  const m = /"n":(\d{1,16})[,}]/.exec(typeof wire === 'string' ? wire : '');
  if (m) return Number(m[1]);
  return ev.id !== null && /^\d{1,16}$/.test(ev.id) ? Number(ev.id) : null;
}

/**
 * Follow `uri` through the daemon at `daemonUrl`; yields verified messages (see
 * SubfeedVerifier: {number, timestampMs, payload, metadata, ...}) from `start` on.
 *
 * A message that fails verification is never yielded: it is reported to
 * `onRejected({number, reason, error, wire})` (`number` is what the event claims), the
 * connection is dropped and reopened after the last verified message (a later honest copy is
 * accepted), with a delay doubling up to `maxRetryMs` while rejections repeat. Without
 * `onRejected`, `onError(error)` is called instead; without either the VerificationError is
 * raised. A daemon refusing the request (4xx: wrong token, origin not in its allow-list) raises
 * DaemonRefusedError at once with the daemon's message, and a stream without wire lines raises
 * UnverifiableStreamError: neither heals by retrying. Other failures (daemon not running,
 * connection cut) are retried after `retryMs`. `onStatus(state, detail)` hears 'connecting',
 * 'live' and 'reconnecting' (detail: the error).
 *
 * A feed that changed keys (spec/feeds.md §9): each message is checked under the key of its
 * position, learnt from the records the messages carry; one signed by a key the succession
 * had replaced there is rejected as a SuccessionViolationError (a VerificationError with the
 * `position` and a violation `proof`). Starting at `start > 0`, pass the records carried
 * before `start` as `succession` (BucketReader.findSuccession finds them in a bucket).
 *
 * `follow: true` asks the daemon to follow the subfeed from its channels first (`channel`
 * narrows to one), for a remote subfeed the node does not follow yet.
 *
 * The token (the daemon's read-only browser token) goes in the query string by default
 * (`tokenIn: 'query'`): a GET without custom headers needs no CORS preflight, so a refusal's
 * message reaches the page; `tokenIn: 'header'` sends `Authorization: Bearer` instead.
 */
export async function* followFromDaemon(daemonUrl, uri, {
  token, start = 0, signal, retryMs = 1000, maxRetryMs = 30_000, onRejected, onError, onStatus,
  tokenIn = 'query', follow = false, channel = null, fetch: f, succession = [],
} = {}) {
  const fetchFn = f ?? globalThis.fetch.bind(globalThis);
  const { feedId, subfeedHash } = await parseFeedUri(uri);
  if (!subfeedHash) throw new InvalidArgumentError(`${uri} names a feed, not a subfeed`);
  if (tokenIn !== 'query' && tokenIn !== 'header') throw new InvalidArgumentError("tokenIn is 'query' or 'header'");
  const verifier = new SubfeedVerifier(feedId, subfeedHash, { start, succession });
  const base = daemonUrl.replace(/\/+$/, '');
  let delay = retryMs;
  while (!signal?.aborted) {
    verifier.pending = [];
    const q = new URLSearchParams({ uri, start: String(verifier.next) });
    const headers = {};
    if (follow) q.set('follow', '1'); // the daemon follows a remote subfeed (its web-safe limits apply)
    if (channel) q.set('channel', channel);
    if (token && tokenIn === 'query') q.set('token', token);
    if (token && tokenIn === 'header') headers.Authorization = `Bearer ${token}`;
    const conn = new AbortController();
    const stop = () => conn.abort();
    signal?.addEventListener('abort', stop, { once: true });
    onStatus?.('connecting');
    try {
      const resp = await fetchFn(`${base}/api/feeds/stream?${q}`, { headers, signal: conn.signal });
      if (resp.status >= 400 && resp.status < 500) throw await refusal(resp);
      if (!resp.ok) throw new Error(`daemon stream: HTTP ${resp.status}`);
      onStatus?.('live');
      for await (const ev of sseEvents(resp.body)) {
        const wire = wireLineOf(ev.data);
        let batch;
        try {
          batch = await verifier.add([wire]);
        } catch (err) {
          if (!(err instanceof VerificationError)) throw err;
          const rejection = { number: claimedNumber(ev, wire), reason: err.message, error: err, wire };
          if (onRejected) onRejected(rejection);
          else if (onError) onError(err);
          else throw err;
          delay = Math.min(delay * 2, maxRetryMs);
          break; // reopen after the last verified message
        }
        if (batch.length) delay = retryMs;
        yield* batch;
      }
    } catch (err) {
      if (signal?.aborted) return;
      if (err instanceof DaemonRefusedError || err instanceof UnverifiableStreamError) throw err;
      if (err instanceof VerificationError) throw err; // raised above when nobody listens
      onStatus?.('reconnecting', err);
    } finally {
      signal?.removeEventListener('abort', stop);
      conn.abort();
    }
    if (signal?.aborted) return;
    await new Promise((r) => {
      const t = setTimeout(r, delay);
      signal?.addEventListener('abort', () => { clearTimeout(t); r(); }, { once: true });
    });
  }
}

/**
 * Bytes [start, end) of a `sha1://` file (whole file if `end` is omitted) read through the
 * daemon's `GET /api/files/read` with its browser token, verified in the page as
 * BucketReader.readFileRange does: a file without a manifest is read whole and hashed; with a
 * manifest (`?manifest=`), the manifest is read and hashed, then only the chunks covering the
 * range, each hashed. The daemon fetches a file it does not store within its limit for pages
 * (`[daemon] browser_max_fetch_bytes`): a bigger one raises DaemonRefusedError (413) with the
 * daemon's message. Returns a Uint8Array.
 */
export async function readFileFromDaemon(daemonUrl, uri, { token, start = 0, end, channel, signal, fetch: f } = {}) {
  const fetchFn = f ?? globalThis.fetch.bind(globalThis);
  const { sha1, manifest } = parseSha1Uri(uri);
  const base = daemonUrl.replace(/\/+$/, '');
  const read = async (u, from, to) => {
    const q = new URLSearchParams({ uri: u });
    if (from !== undefined) q.set('start', String(from));
    if (to !== undefined) q.set('end', String(to));
    if (channel) q.set('channel', channel);
    if (token) q.set('token', token);
    const resp = await fetchFn(`${base}/api/files/read?${q}`, { signal, cache: 'no-store' });
    if (resp.status >= 400 && resp.status < 500) throw await refusal(resp);
    if (!resp.ok) throw new Error(`daemon file read: HTTP ${resp.status}`);
    return new Uint8Array(await resp.arrayBuffer());
  };
  const verified = async (data, expected, what) => {
    if ((await sha1Hex(data)) !== expected) throw new VerificationError(`${what} ${expected} from the daemon does not hash to its name`);
    return data;
  };
  if (!(Number.isSafeInteger(start) && start >= 0 && (end === undefined || (Number.isSafeInteger(end) && end >= start)))) {
    throw new InvalidArgumentError('need 0 <= start <= end');
  }
  if (!manifest) {
    const all = await verified(await read(uri), sha1, 'file');
    return all.slice(start, end ?? all.length);
  }
  const m = parseManifest(await verified(await read(`sha1://${manifest}`), manifest, 'manifest'), sha1);
  const stop = Math.min(end ?? m.size, m.size);
  const out = new Uint8Array(Math.max(0, stop - start));
  for (const c of m.chunks) {
    if (c.end <= start || c.start >= stop) continue;
    const data = await verified(await read(uri, c.start, c.end), c.sha1, 'chunk');
    const from = Math.max(start, c.start);
    const to = Math.min(stop, c.end);
    out.set(data.subarray(from - c.start, to - c.start), from - start);
  }
  return out;
}
