/** Bytes, hex, UTF-8 and hashes (WebCrypto, available in browsers and in Node 20). */
import { VerificationError } from './errors.js';

const subtle = globalThis.crypto.subtle;
const encoder = new TextEncoder();
// fatal: invalid UTF-8 (including encoded surrogates) throws; ignoreBOM: a BOM is kept as
// U+FEFF so the JSON reader refuses it instead of it being silently dropped.
const strictDecoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

export const HEX_RE = /^[0-9a-f]*$/;

export function utf8(text) {
  return encoder.encode(text);
}

/** Decode UTF-8 strictly; raises VerificationError on invalid bytes. */
export function decodeUtf8(bytes, what = 'text') {
  try {
    return strictDecoder.decode(bytes);
  } catch {
    throw new VerificationError(`${what} is not valid UTF-8`);
  }
}

/** True if `s` has no lone surrogate (so it has a UTF-8 form). */
export function isWellFormed(s) {
  if (typeof s.isWellFormed === 'function') return s.isWellFormed();
  return !/[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/.test(s);
}

/** A string as UTF-8 bytes; refuses lone surrogates (TextEncoder would replace them). */
export function wellFormedUtf8(s, what = 'string') {
  if (!isWellFormed(s)) throw new VerificationError(`${what} contains a lone surrogate`);
  return encoder.encode(s);
}

export function toHex(bytes) {
  let out = '';
  for (let i = 0; i < bytes.length; i++) out += bytes[i].toString(16).padStart(2, '0');
  return out;
}

/** Lowercase hex of exactly `nbytes` bytes to bytes, or null. */
export function fromHex(hex, nbytes) {
  if (typeof hex !== 'string' || hex.length !== 2 * nbytes || !HEX_RE.test(hex)) return null;
  const out = new Uint8Array(nbytes);
  for (let i = 0; i < nbytes; i++) out[i] = parseInt(hex.substr(2 * i, 2), 16);
  return out;
}

export function concat(...parts) {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

export function bytesEqual(a, b) {
  if (a.length !== b.length) return false;
  let d = 0;
  for (let i = 0; i < a.length; i++) d |= a[i] ^ b[i];
  return d === 0;
}

export function asBytes(x, what = 'data') {
  if (x instanceof Uint8Array) return x;
  if (x instanceof ArrayBuffer) return new Uint8Array(x);
  if (ArrayBuffer.isView(x)) return new Uint8Array(x.buffer, x.byteOffset, x.byteLength);
  if (typeof x === 'string') return wellFormedUtf8(x, what);
  throw new TypeError(`${what} must be bytes or a string`);
}

export async function sha256(bytes) {
  return new Uint8Array(await subtle.digest('SHA-256', bytes));
}

export async function sha512(bytes) {
  return new Uint8Array(await subtle.digest('SHA-512', bytes));
}

export async function sha1Hex(bytes) {
  return toHex(new Uint8Array(await subtle.digest('SHA-1', bytes)));
}
