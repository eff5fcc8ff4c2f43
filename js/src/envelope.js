/** Signed node messages (spec/node-protocol.md, Envelopes) and hub requests (spec/hub.md §2). */
import { VerificationError } from './errors.js';
import { asBytes, concat, fromHex, sha256, toHex, utf8 } from './bytes.js';
import { integerMember, parseJson } from './json.js';
import { verifyEd25519 } from './ed25519.js';

export const ENVELOPE_VERSION = 2;
export const ENVELOPE_CONTEXT = concat(utf8('kachery-pubsub-v2'), new Uint8Array([0]));

/** What a node message's signature binds: "kachery-pubsub-v2" 0x00 channel 0x00 band 0x00. */
function envelopeContext(channel, band) {
  return concat(ENVELOPE_CONTEXT, utf8(channel), new Uint8Array([0]), utf8(band), new Uint8Array([0]));
}
export const MAX_ENVELOPE_BODY = 256 * 1024; // the signed part: body, LF and attachment
export const MAX_SKEW_MS = 60_000;
const HEADER = 1 + 32 + 64;
const NONCE = /^[A-Za-z0-9_-]{8,64}$/;
const HUB_NONCE = /^[A-Za-z0-9_-]{16,64}$/;

function isObject(v) {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

/**
 * Open a node message (v2, bytes) that arrived on `channel`/`band`:
 * `0x02 | sender key (32) | signature (64) | body JSON [LF attachment]`. Checks the version, the
 * signature (over the body and the attachment together, bound to `channel` and `band`: a message
 * signed for another channel or band does not verify), and freshness (|now - time_ms| <= 60 s). Replays ((sender, nonce) seen within 120 s) are the
 * caller's to track. Returns {sender, body, attachment} (attachment: Uint8Array, or null).
 * A version 1 message (a text line) is refused with an error that says so.
 */
export async function openEnvelope(message, { channel, band, nowMs = Date.now() }) {
  if (typeof message === 'string') {
    throw new VerificationError('a node message is bytes (v2); a string is a version 1 text line, no longer accepted');
  }
  const bytes = asBytes(message, 'node message');
  if (bytes[0] !== ENVELOPE_VERSION) {
    if (bytes[0] === 0x7b) throw new VerificationError('a version 1 node message (a JSON text line): node messages are v2 (binary)');
    throw new VerificationError(`unknown node message version ${bytes.length ? bytes[0] : 'none'} (expected 2)`);
  }
  if (bytes.length <= HEADER) throw new VerificationError('malformed node message: shorter than its header');
  const signed = bytes.subarray(HEADER);
  if (signed.length > MAX_ENVELOPE_BODY) throw new VerificationError('node message is over 256 KiB');
  const senderKey = bytes.subarray(1, 33);
  const sender = toHex(senderKey);
  if (typeof channel !== 'string' || typeof band !== 'string' || channel.includes('\0') || band.includes('\0')) {
    throw new TypeError('channel and band are names without NUL');
  }
  const signedFor = concat(envelopeContext(channel, band), await sha256(signed));
  if (!(await verifyEd25519(senderKey, signedFor, bytes.subarray(33, HEADER)))) {
    throw new VerificationError(`bad signature on a node message claiming to be from ${sender.slice(0, 12)}… (forged, tampered with, or signed for another channel or band)`);
  }
  const lf = signed.indexOf(0x0a);
  const raw = lf < 0 ? signed : signed.subarray(0, lf);
  const attachment = lf < 0 ? null : signed.slice(lf + 1);
  if (attachment !== null && attachment.length === 0) throw new VerificationError('malformed node message: a LF after the body but no attachment');
  const body = parseJson(raw, 'node message body');
  if (!isObject(body) || typeof body.type !== 'string') throw new VerificationError("node message body must be an object with a 'type'");
  const t = integerMember(body, 'time_ms');
  if (t === undefined || Math.abs(nowMs - t) > MAX_SKEW_MS) throw new VerificationError('stale node message (time_ms missing or off by more than 60 s)');
  if (typeof body.nonce !== 'string' || !NONCE.test(body.nonce)) throw new VerificationError('node message has no valid nonce');
  return { sender, body, attachment };
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
