/**
 * Reading JSON text by kachery's rules (spec/feeds.md §2.1): UTF-8 without BOM, RFC 8259
 * grammar, no duplicate keys, no lone surrogates, integer literals in [-2^63, 2^64-1] and not
 * -0, finite numbers, nesting at most 256 deep.
 *
 * JSON.parse cannot be used alone: it keeps the last of duplicate keys, accepts lone surrogate
 * escapes and -0, and loses whether a number was written as an integer. This is a single-pass
 * parser that checks every rule and builds the value. It also remembers which object members
 * were integer literals (isIntegerMember), since "integer" fields such as `n` are defined on
 * the text: `1.0` is not the integer 1.
 */
import { VerificationError } from './errors.js';
import { decodeUtf8 } from './bytes.js';

export const MAX_DEPTH = 256;
export const MAX_SAFE_INTEGER = Number.MAX_SAFE_INTEGER;
const INT_MIN = -(2n ** 63n);
const INT_MAX = 2n ** 64n - 1n;
const integerMembers = new WeakMap();

/** True if member `key` of `obj` (an object this module parsed) was an integer literal. */
export function isIntegerMember(obj, key) {
  const set = integerMembers.get(obj);
  return set !== undefined && set.has(key);
}

/** `obj[key]` if it was written as an integer literal in [min, max], else undefined. */
export function integerMember(obj, key, min = 0, max = MAX_SAFE_INTEGER) {
  const v = obj[key];
  if (typeof v !== 'number' || !isIntegerMember(obj, key) || v < min || v > max) return undefined;
  return v;
}

/** Parse UTF-8 bytes (or a string) by kachery's JSON rules; raises VerificationError. */
export function parseJson(data, what = 'JSON text') {
  const text = typeof data === 'string' ? data : decodeUtf8(data, what);
  const p = new Parser(text, what);
  p.ws();
  const value = p.value(1);
  p.ws();
  if (p.i !== text.length) p.fail('unexpected characters after the JSON value');
  return value;
}

const ESCAPES = { '"': '"', '\\': '\\', '/': '/', b: '\b', f: '\f', n: '\n', r: '\r', t: '\t' };

class Parser {
  constructor(text, what) {
    this.s = text;
    this.i = 0;
    this.what = what;
  }

  fail(msg) {
    throw new VerificationError(`${this.what}: ${msg} (at character ${this.i})`);
  }

  ws() {
    const s = this.s;
    let c = s.charCodeAt(this.i);
    while (c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d) c = s.charCodeAt(++this.i);
  }

  value(depth) {
    const c = this.s[this.i];
    if (c === '{') return this.object(depth);
    if (c === '[') return this.array(depth);
    if (c === '"') return this.string();
    if (c === 't') return this.literal('true', true);
    if (c === 'f') return this.literal('false', false);
    if (c === 'n') return this.literal('null', null);
    if (c === '-' || (c >= '0' && c <= '9')) return this.number().value;
    if (c === undefined) this.fail('unexpected end of text');
    this.fail(`unexpected character ${JSON.stringify(c)}`);
  }

  literal(word, value) {
    if (this.s.startsWith(word, this.i)) {
      this.i += word.length;
      return value;
    }
    this.fail('invalid literal');
  }

  object(depth) {
    if (depth > MAX_DEPTH) this.fail(`nested deeper than ${MAX_DEPTH}`);
    this.i++;
    const entries = [];
    const keys = new Set();
    let ints = null;
    this.ws();
    if (this.s[this.i] === '}') {
      this.i++;
      return {};
    }
    for (;;) {
      if (this.s[this.i] !== '"') this.fail('expected a string key');
      const key = this.string();
      if (keys.has(key)) this.fail(`duplicate key ${JSON.stringify(key)}`);
      keys.add(key);
      this.ws();
      if (this.s[this.i] !== ':') this.fail("expected ':'");
      this.i++;
      this.ws();
      const c = this.s[this.i];
      let v;
      if (c === '-' || (c >= '0' && c <= '9')) {
        const num = this.number();
        v = num.value;
        if (num.integer) (ints ??= new Set()).add(key);
      } else {
        v = this.value(depth + 1);
      }
      entries.push([key, v]);
      this.ws();
      const d = this.s[this.i++];
      if (d === ',') {
        this.ws();
        continue;
      }
      if (d === '}') break;
      this.i--;
      this.fail("expected ',' or '}'");
    }
    // fromEntries defines own properties, so a "__proto__" key is data, not a prototype.
    const obj = Object.fromEntries(entries);
    if (ints) integerMembers.set(obj, ints);
    return obj;
  }

  array(depth) {
    if (depth > MAX_DEPTH) this.fail(`nested deeper than ${MAX_DEPTH}`);
    this.i++;
    const out = [];
    this.ws();
    if (this.s[this.i] === ']') {
      this.i++;
      return out;
    }
    for (;;) {
      out.push(this.value(depth + 1));
      this.ws();
      const d = this.s[this.i++];
      if (d === ',') {
        this.ws();
        continue;
      }
      if (d === ']') return out;
      this.i--;
      this.fail("expected ',' or ']'");
    }
  }

  string() {
    const s = this.s;
    let i = ++this.i;
    let out = '';
    let start = i;
    for (;;) {
      const c = s.charCodeAt(i);
      if (c === 0x22) {
        out += s.slice(start, i);
        this.i = i + 1;
        return out;
      }
      if (Number.isNaN(c)) {
        this.i = i;
        this.fail('unterminated string');
      }
      if (c < 0x20) {
        this.i = i;
        this.fail('raw control character in a string');
      }
      if (c !== 0x5c) {
        i++;
        continue;
      }
      out += s.slice(start, i);
      const e = s[i + 1];
      if (e === 'u') {
        const cu = this.hex4(i + 2);
        i += 6;
        if (cu >= 0xd800 && cu <= 0xdbff) {
          if (s[i] !== '\\' || s[i + 1] !== 'u') {
            this.i = i;
            this.fail('lone high surrogate escape');
          }
          const lo = this.hex4(i + 2);
          if (lo < 0xdc00 || lo > 0xdfff) {
            this.i = i;
            this.fail('high surrogate escape not followed by a low one');
          }
          out += String.fromCharCode(cu, lo);
          i += 6;
        } else if (cu >= 0xdc00 && cu <= 0xdfff) {
          this.i = i;
          this.fail('lone low surrogate escape');
        } else {
          out += String.fromCharCode(cu);
        }
      } else if (e !== undefined && Object.hasOwn(ESCAPES, e)) {
        out += ESCAPES[e];
        i += 2;
      } else {
        this.i = i;
        this.fail('invalid escape');
      }
      start = i;
    }
  }

  hex4(at) {
    const h = this.s.slice(at, at + 4);
    if (!/^[0-9a-fA-F]{4}$/.test(h)) {
      this.i = at;
      this.fail('invalid \\u escape');
    }
    return parseInt(h, 16);
  }

  number() {
    const s = this.s;
    const start = this.i;
    let i = start;
    if (s[i] === '-') i++;
    if (s[i] === '0') i++;
    else if (s[i] >= '1' && s[i] <= '9') while (s[i] >= '0' && s[i] <= '9') i++;
    else {
      this.i = i;
      this.fail('invalid number');
    }
    let integer = true;
    if (s[i] === '.') {
      integer = false;
      i++;
      if (!(s[i] >= '0' && s[i] <= '9')) {
        this.i = i;
        this.fail('invalid number');
      }
      while (s[i] >= '0' && s[i] <= '9') i++;
    }
    if (s[i] === 'e' || s[i] === 'E') {
      integer = false;
      i++;
      if (s[i] === '+' || s[i] === '-') i++;
      if (!(s[i] >= '0' && s[i] <= '9')) {
        this.i = i;
        this.fail('invalid number');
      }
      while (s[i] >= '0' && s[i] <= '9') i++;
    }
    const text = s.slice(start, i);
    this.i = i;
    if (integer) {
      if (text === '-0') this.fail('the integer -0 is not allowed');
      if (text.length > 15) {
        const big = BigInt(text);
        if (big < INT_MIN || big > INT_MAX) this.fail(`integer ${text} is outside [-2^63, 2^64-1]`);
      }
    }
    const value = Number(text);
    if (!Number.isFinite(value)) this.fail(`number ${text} is infinite as a double`);
    return { value, integer };
  }
}
