/**
 * Ed25519 verification with exactly the checks of libsodium's crypto_sign_verify_detached,
 * as pinned by spec/feeds.md §3.1. The group arithmetic is @noble/ed25519 (vendored, see
 * js/README.md); every acceptance rule is here, not in the library:
 *
 * 1. S < L;  2. R not in the small-order list (low 255 bits);  3. A canonical (low 255 bits < p)
 * and not in the small-order list;  4. A decodes;  5. encode([S]B - [h]A) == R byte for byte
 * (cofactorless), with h = SHA-512(R || A || M) mod L.
 *
 * noble's own verify() is not used: its default is ZIP-215 (accepts small-order forgeries) and
 * both its modes use the cofactored equation.
 */
import { Point } from '../vendor/noble-ed25519.js';
import { bytesEqual, concat, sha512 } from './bytes.js';

const P = 2n ** 255n - 19n;
const L = 2n ** 252n + 27742317777372353535851937790883648493n;
const MASK255 = 2n ** 255n - 1n;

function le(bytes) {
  let n = 0n;
  for (let i = bytes.length - 1; i >= 0; i--) n = (n << 8n) | BigInt(bytes[i]);
  return n;
}

// libsodium's blacklist (ge25519_has_small_order), compared with the sign bit cleared.
const SMALL_ORDER = new Set([
  0n,
  1n,
  le(hexBytes('26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05')),
  le(hexBytes('c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a')),
  P - 1n,
  P,
  P + 1n,
]);

function hexBytes(h) {
  return Uint8Array.from(h.match(/../g), (x) => parseInt(x, 16));
}

/**
 * True iff `signature` (64 bytes) is a valid Ed25519 signature of `message` by `publicKey`
 * (32 bytes) under spec/feeds.md §3.1 (libsodium's rules).
 */
export async function verifyEd25519(publicKey, message, signature) {
  if (!(publicKey instanceof Uint8Array) || publicKey.length !== 32) return false;
  if (!(signature instanceof Uint8Array) || signature.length !== 64) return false;
  const rBytes = signature.subarray(0, 32);
  const s = le(signature.subarray(32, 64));
  if (s >= L) return false;
  if (SMALL_ORDER.has(le(rBytes) & MASK255)) return false;
  const a = le(publicKey) & MASK255;
  if (a >= P || SMALL_ORDER.has(a)) return false;
  let A;
  try {
    A = Point.fromBytes(publicKey, true);
  } catch {
    return false;
  }
  const h = le(await sha512(concat(rBytes, publicKey, message))) % L;
  const check = Point.BASE.multiply(s, false).add(A.negate().multiply(h, false));
  return bytesEqual(check.toBytes(), rBytes);
}
