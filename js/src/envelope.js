/** Signed node messages (spec/node-protocol.md, Envelopes) and hub requests (spec/hub.md §2). */
import { VerificationError } from './errors.js';
import { asBytes, concat, decodeUtf8, fromHex, sha256, utf8 } from './bytes.js';
import { integerMember, parseJson } from './json.js';
import { verifyEd25519 } from './ed25519.js';

export const ENVELOPE_CONTEXT = concat(utf8('kachery-pubsub-v1'), new Uint8Array([0]));
export const MAX_ENVELOPE_BODY = 256 * 1024;
export const MAX_SKEW_MS = 60_000;
const NONCE = /^[A-Za-z0-9_-]{8,64}$/;
const HUB_NONCE = /^[A-Za-z0-9_-]{16,64}$/;

function isObject(v) {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

/**
 * Open an envelope that arrived on `channel`/`band`: split at the last two TABs, check the
 * signature, the binding to channel and band, and freshness (|now - time_ms| <= 60 s).
 * Replays ((sender, nonce) seen within 120 s) are the caller's to track. Returns {sender, body}.
 */
export async function openEnvelope(line, { channel, band, nowMs = Date.now() }) {
  const bytes = asBytes(line, 'envelope');
  if (bytes.length > MAX_ENVELOPE_BODY + 194) throw new VerificationError('envelope is too large');
  const t2 = bytes.lastIndexOf(0x09);
  const t1 = t2 > 0 ? bytes.lastIndexOf(0x09, t2 - 1) : -1;
  if (t1 < 0) throw new VerificationError("malformed envelope: expected '<body>\\t<node id>\\t<signature>'");
  const raw = bytes.subarray(0, t1);
  if (raw.length > MAX_ENVELOPE_BODY) throw new VerificationError('envelope body is over 256 KiB');
  const sender = decodeUtf8(bytes.subarray(t1 + 1, t2), 'sender');
  const senderKey = fromHex(sender, 32);
  const sig = fromHex(decodeUtf8(bytes.subarray(t2 + 1), 'signature'), 64);
  if (senderKey === null || sig === null) throw new VerificationError('malformed sender or signature');
  const body = parseJson(raw, 'envelope body');
  if (!isObject(body) || typeof body.type !== 'string') throw new VerificationError("envelope body must be an object with a 'type'");
  if (!(await verifyEd25519(senderKey, concat(ENVELOPE_CONTEXT, await sha256(raw)), sig))) {
    throw new VerificationError(`bad signature on an envelope claiming to be from ${sender.slice(0, 12)}…`);
  }
  if (body.channel !== channel || body.band !== band) {
    throw new VerificationError(`envelope for ${body.channel}/${body.band} arrived on ${channel}/${band}`);
  }
  const t = integerMember(body, 'time_ms');
  if (t === undefined || Math.abs(nowMs - t) > MAX_SKEW_MS) throw new VerificationError('stale envelope (time_ms missing or off by more than 60 s)');
  if (typeof body.nonce !== 'string' || !NONCE.test(body.nonce)) throw new VerificationError('envelope has no valid nonce');
  return { sender, body };
}

const HUB_HEADERS = { node: ['kachery-node-id', 'kachery-node-signature'], user: ['kachery-user-id', 'kachery-user-signature'] };

/**
 * Verify a signed hub request (spec/hub.md §2) as the hub does: shape, signature of `kind`
 * ("node" | "user"), hub ID, time window. `headers` is an object or a Headers. Returns
 * {signer, body}. Nonce replay is the caller's to track.
 */
export async function verifyHubRequest(kind, bodyBytes, headers, { hubId, nowMs = Date.now() }) {
  const raw = asBytes(bodyBytes, 'request body');
  if (raw.length > 256 * 1024) throw new VerificationError('request body over 256 KiB');
  const body = parseJson(raw, 'request body');
  if (!isObject(body)) throw new VerificationError('request body must be a JSON object');
  for (const k of ['type', 'hub', 'nonce']) if (typeof body[k] !== 'string') throw new VerificationError(`request body needs '${k}'`);
  if (integerMember(body, 'time_ms') === undefined) throw new VerificationError("request body needs 'time_ms' (integer)");
  if (!HUB_NONCE.test(body.nonce)) throw new VerificationError('nonce must be 16-64 characters of [A-Za-z0-9_-]');
  const get = (name) => {
    if (typeof headers.get === 'function') return headers.get(name);
    for (const [k, v] of Object.entries(headers)) if (k.toLowerCase() === name) return v;
    return null;
  };
  const [idName, sigName] = HUB_HEADERS[kind];
  const signer = (get(idName) ?? '').trim().toLowerCase();
  const sig = fromHex((get(sigName) ?? '').trim().toLowerCase(), 64);
  const key = fromHex(signer, 32);
  if (key === null || sig === null) throw new VerificationError(`missing or malformed ${kind} signature headers`);
  const signed = concat(utf8(`kachery-hub-request-v1 ${kind}\n`), await sha256(raw));
  if (!(await verifyEd25519(key, signed, sig))) throw new VerificationError(`${kind} signature does not verify`);
  if (body.hub !== hubId) throw new VerificationError('request was signed for another hub');
  if (Math.abs(body.time_ms - nowMs) > MAX_SKEW_MS) throw new VerificationError('stale request');
  return { signer, body };
}
