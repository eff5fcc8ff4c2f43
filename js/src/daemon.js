/**
 * Following a subfeed through a kachery daemon's Server-Sent Events stream
 * (GET <daemon>/api/feeds/stream?uri=&start=&token=, kachery_node/daemon/local_api.py), verifying
 * every message in the page.
 *
 * Each event's `data` must carry the signed wire line: either a JSON object with a `wire`
 * string (other fields, such as the record's `number` or `payload`, are ignored: everything
 * shown comes from the verified line) or a JSON string that is the wire line. A daemon whose
 * stream carries only unsigned records cannot be verified: the follower refuses it with a clear
 * error rather than showing unverified data. Implemented over fetch() (no EventSource), so it
 * runs in Node too and can send the token in a header.
 */
import { InvalidArgumentError, VerificationError } from './errors.js';
import { parseFeedUri, SubfeedVerifier } from './feeds.js';

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

/** The wire line an event carries, or a VerificationError saying why there is none. */
export function wireLineOf(eventData) {
  let d;
  try {
    d = JSON.parse(eventData);
  } catch {
    throw new VerificationError('stream event is not JSON');
  }
  if (typeof d === 'string') return d;
  if (d !== null && typeof d === 'object' && typeof d.wire === 'string') return d.wire;
  throw new VerificationError(
    'the daemon stream carries no signed wire lines (only unsigned records), so nothing can be '
    + 'verified in the page: update the daemon');
}

/**
 * Follow `uri` through the daemon at `daemonUrl`; yields verified messages (see
 * SubfeedVerifier) from `start` on. Reconnects (after `retryMs`) when the stream ends, resuming
 * after the last verified message. Verification errors are raised (or passed to `onError`,
 * then the stream is reopened from the last verified message). A 4xx answer (wrong token,
 * origin not allowed) raises InvalidArgumentError at once; other failures are retried.
 */
export async function* followFromDaemon(daemonUrl, uri, { token, start = 0, signal, retryMs = 1000, onError, fetch: f } = {}) {
  const fetchFn = f ?? globalThis.fetch.bind(globalThis);
  const { feedId, subfeedHash } = await parseFeedUri(uri);
  if (!subfeedHash) throw new InvalidArgumentError(`${uri} names a feed, not a subfeed`);
  const verifier = new SubfeedVerifier(feedId, subfeedHash, { start });
  while (!signal?.aborted) {
    verifier.pending = [];
    const q = new URLSearchParams({ uri, start: String(verifier.next) });
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    try {
      const resp = await fetchFn(`${daemonUrl.replace(/\/+$/, '')}/api/feeds/stream?${q}`, { headers, signal });
      if (resp.status >= 400 && resp.status < 500) {
        // A wrong token or origin does not heal by retrying: say so at once.
        throw new InvalidArgumentError(`daemon refused the stream: HTTP ${resp.status} ${await resp.text()}`);
      }
      if (!resp.ok) throw new Error(`daemon stream: HTTP ${resp.status}`);
      for await (const ev of sseEvents(resp.body)) {
        const batch = await verifier.add([wireLineOf(ev.data)]);
        yield* batch;
      }
    } catch (err) {
      if (signal?.aborted) return;
      if (err instanceof VerificationError) {
        if (!onError) throw err;
        onError(err);
      } else if (err instanceof InvalidArgumentError) {
        throw err;
      }
    }
    await new Promise((r) => setTimeout(r, retryMs));
  }
}
