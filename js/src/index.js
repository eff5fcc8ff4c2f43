/**
 * kachery.js: verify kachery data in browsers and in Node 20, from spec/ alone.
 *
 * Feeds (spec/feeds.md): parseWireLine, verifyRange, checkChain, decodeSegment, SubfeedVerifier,
 * verifyForkProof, subfeedHash, subfeedUri, parseFeedUri; key succession (§9): KeyChain,
 * parseRecord, SuccessionViolationError. Bucket (spec/bucket.md): BucketReader
 * (files, byte ranges, heads, task results, following a subfeed), parseHead, keys. Daemon:
 * followFromDaemon, readFileFromDaemon. Node messages and hub requests: openEnvelope, verifyHubRequest. Tasks
 * (spec/tasks.md): canonicalJson, taskHash, verifyTaskResult. Ed25519 with libsodium's rules:
 * verifyEd25519. JSON by spec/feeds.md §2.1: parseJson.
 */
export { VerificationError, InvalidArgumentError } from './errors.js';
export { parseJson, isIntegerMember, integerMember } from './json.js';
export { verifyEd25519 } from './ed25519.js';
export {
  MAX_MESSAGE_BYTES, SIGNATURE_CONTEXT, parseWireLine, signatureIsValid, checkChain, verifyRange,
  decodeSegment, SubfeedVerifier, verifyForkProof, subfeedHash, subfeedUri, parseFeedUri, normalizeFeedId,
} from './feeds.js';
export {
  KeyChain, parseRecord, mergeChains, SuccessionViolationError, SUCCESSION_CONTEXT, MAX_RECORDS,
} from './succession.js';
export { canonicalJson, taskHash, verifyTaskResult } from './tasks.js';
export { openEnvelope, verifyHubRequest } from './envelope.js';
export { BucketReader, parseHead, parseManifest, parseSha1Uri, keys, pathify, SEGMENT_SIZE, CHUNK_SIZE } from './bucket.js';
export {
  followFromDaemon, readFileFromDaemon, sseEvents, wireLineOf, DaemonRefusedError, UnverifiableStreamError,
} from './daemon.js';
export { toHex, fromHex, utf8, sha1Hex } from './bytes.js';
