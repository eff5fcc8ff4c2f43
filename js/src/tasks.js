/** Tasks (spec/tasks.md): canonical JSON, task hashes and signed task results. */
import { InvalidArgumentError, VerificationError } from './errors.js';
import { asBytes, concat, fromHex, isWellFormed, sha256, toHex, utf8 } from './bytes.js';
import { integerMember, parseJson } from './json.js';
import { verifyEd25519 } from './ed25519.js';

export const TASK_HASH_PREFIX = 'kachery-task-v1\n';
export const RESULT_CONTEXT = concat(utf8('kachery-task-result-v1'), new Uint8Array([0]));
const FUNCTION_ID = /^[A-Za-z0-9@_-]+(\.[A-Za-z0-9@_-]+)*$/;
const HEX64 = /^[0-9a-f]{64}$/;

function write(v, depth) {
  if (depth > 100) throw new InvalidArgumentError('arguments nest deeper than 100 levels');
  if (v === null) return 'null';
  if (v === true) return 'true';
  if (v === false) return 'false';
  if (typeof v === 'number') {
    if (!Number.isFinite(v)) throw new InvalidArgumentError(`${v} is not allowed in canonical JSON`);
    if (Math.abs(v) > Number.MAX_SAFE_INTEGER) {
      throw new InvalidArgumentError(`number ${v} is beyond ±(2^53-1): pass it as a string`);
    }
    return Object.is(v, -0) ? '0' : String(v);
  }
  if (typeof v === 'string') {
    if (!isWellFormed(v)) throw new InvalidArgumentError('strings must not contain lone surrogates');
    return JSON.stringify(v);
  }
  if (Array.isArray(v)) return '[' + v.map((x) => write(x, depth + 1)).join(',') + ']';
  if (typeof v === 'object') {
    const keys = Object.keys(v).sort(); // UTF-16 code unit order
    return '{' + keys.map((k) => write(k, depth + 1) + ':' + write(v[k], depth + 1)).join(',') + '}';
  }
  throw new InvalidArgumentError(`${typeof v} is not a JSON value`);
}

/** The canonical JSON text of `value` (spec/tasks.md §2). */
export function canonicalJson(value) {
  return write(value, 0);
}

/** hex(SHA-256("kachery-task-v1\n" || canonical_json({function_id, kwargs}))). */
export async function taskHash(functionId, kwargs) {
  if (typeof functionId !== 'string' || functionId.length > 400 || !FUNCTION_ID.test(functionId)) {
    throw new InvalidArgumentError(`invalid task function ID ${JSON.stringify(functionId)}`);
  }
  if (kwargs === null || typeof kwargs !== 'object' || Array.isArray(kwargs)) {
    throw new InvalidArgumentError('task arguments must be a JSON object of keyword arguments');
  }
  const text = canonicalJson({ function_id: functionId, kwargs });
  return toHex(await sha256(utf8(TASK_HASH_PREFIX + text)));
}

const OBJECT_KEYS = ['body', 'signature'];
const BODY_KEYS = ['function_id', 'provider', 'result', 'task_hash', 'time_ms'];

function exactKeys(obj, keys) {
  const k = Object.keys(obj).sort();
  return k.length === keys.length && k.every((x, i) => x === keys[i]);
}

/**
 * Verify a task result object (spec/tasks.md §5): its JSON text (bytes or string, as stored
 * in the bucket) or the parsed object (as carried in a taskStatus). Returns
 * {taskHash, functionId, result, provider, timeMs}. Whether the provider holds provide-tasks in
 * the channel's membership is the caller's check.
 */
export async function verifyTaskResult(obj, { taskHash: expectedHash, functionId }) {
  if (typeof obj === 'string' || obj instanceof Uint8Array) obj = parseJson(asBytes(obj, 'result object'), 'result object');
  if (obj === null || typeof obj !== 'object' || Array.isArray(obj) || !exactKeys(obj, OBJECT_KEYS)
      || typeof obj.body !== 'string' || typeof obj.signature !== 'string') {
    throw new VerificationError("malformed result object (expected exactly {'body', 'signature'})");
  }
  const signature = fromHex(obj.signature, 64);
  if (signature === null) throw new VerificationError('result signature is not 128 lowercase hex');
  if (!isWellFormed(obj.body)) throw new VerificationError('result body contains a lone surrogate');
  const raw = utf8(obj.body);
  const body = parseJson(raw, 'result body');
  if (body === null || typeof body !== 'object' || Array.isArray(body) || !exactKeys(body, BODY_KEYS)) {
    throw new VerificationError(`result body must have exactly the keys ${BODY_KEYS.join(', ')}`);
  }
  if (typeof body.provider !== 'string' || !HEX64.test(body.provider)) throw new VerificationError('result body names no valid provider');
  const timeMs = integerMember(body, 'time_ms');
  if (timeMs === undefined) throw new VerificationError('result time_ms is not an integer in [0, 2^53-1]');
  const ok = await verifyEd25519(fromHex(body.provider, 32), concat(RESULT_CONTEXT, await sha256(raw)), signature);
  if (!ok) throw new VerificationError(`bad signature on a result claiming to be from ${body.provider.slice(0, 12)}…`);
  if (body.task_hash !== expectedHash || body.function_id !== functionId) {
    throw new VerificationError('the result answers another task');
  }
  return { taskHash: body.task_hash, functionId: body.function_id, result: body.result, provider: body.provider, timeMs };
}
