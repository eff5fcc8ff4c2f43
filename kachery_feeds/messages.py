"""Signed subfeed messages, format v1: building, parsing and verifying (no I/O).

Theory of operation
-------------------
A message is a *body* — compact JSON serialized once by its writer — plus an optional Ed25519
signature. The body binds the message to its feed, subfeed and position and links it to the
previous message by hash::

    {"feed":"<64 hex>","meta":{...},"n":7,"payload":<JSON>,"prev":"<64 hex>"|null,
     "subfeed":"<40 hex>","ts":<ms>,"v":1}                          ("meta" is optional)

* ``hash(m) = SHA-256(body)``; ``prev`` is the hex hash of message ``n-1`` (null for ``n=0``).
* ``signature = Ed25519(feed key, SIGNATURE_CONTEXT || hash(m))``: the signature covers the exact
  body bytes through their hash. Verifiers never re-serialize anything.
* A signature on message ``n`` vouches for every earlier message through the ``prev`` chain, so
  a batch append signs only its last message, and any range handed to another store must end
  at a signed message.
* Wire form (one line): ``body || TAB || signature as 128 lowercase hex (or nothing)``. Bodies
  never contain a raw TAB or newline (JSON escapes control characters and we write no
  whitespace), so lines can be joined with ``\\n`` into a *segment*.

Rules: everything that decides whether a message is valid lives in this module; the store only
applies these checks against its local state (see :mod:`kachery_feeds.store`).
"""

from __future__ import annotations

import hashlib
import operator
import re
from typing import Any, NamedTuple

import nacl.bindings
import nacl.exceptions
import orjson

from .errors import VerificationError, short_repr
from .jsontext import MAX_SAFE_INTEGER, JsonTextError, check_exactly
from .payloads import MAX_MESSAGE_BYTES

FORMAT_VERSION = 1
#: Prefix of every signed input, so a feed signature can never be mistaken for another kind.
SIGNATURE_CONTEXT = b"kachery-feed-message-v1\x00"
_REQUIRED_KEYS = frozenset({"feed", "n", "payload", "prev", "subfeed", "ts", "v"})
#: "succession": the key succession records a message carries (spec/feeds.md §9.3).
_ALL_KEYS = _REQUIRED_KEYS | {"meta", "succession"}
_MAX_LINE = MAX_MESSAGE_BYTES + 1 + 128

try:  # PyNaCl's own cffi binding of libsodium, which nacl.bindings wraps (see sign_hash)
    from nacl._sodium import ffi as _ffi
    from nacl._sodium import lib as _sodium

    _crypto_sign = _sodium.crypto_sign
    _new_bytes, _buffer, _NULL = _ffi.new, _ffi.buffer, _ffi.NULL
except (ImportError, AttributeError):  # pragma: no cover - another PyNaCl layout: the wrapper
    _crypto_sign = None
_SIGNED_LENGTH = 64 + len(SIGNATURE_CONTEXT) + 32  # signature || context || body hash


class ParsedMessage(NamedTuple):
    """One message, parsed from its wire form. ``hash`` and ``previous_hash`` are raw 32 bytes."""

    number: int
    previous_hash: bytes | None
    hash: bytes
    body: bytes
    signature: bytes | None
    timestamp_ms: int
    payload: Any
    metadata: dict | None

    def to_wire(self) -> bytes:
        return to_wire(self.body, self.signature)


def build_body(
    feed_id: str,
    subfeed_hash: str,
    number: int,
    previous_hash: bytes | None,
    timestamp_ms: int,
    payload_json: bytes,
    metadata_json: bytes | None = None,
    succession_json: bytes | None = None,
) -> bytes:
    """Serialize a body from already-checked JSON fragments, keys in sorted order.

    The result is byte-for-byte what ``orjson.dumps(body, option=OPT_SORT_KEYS)`` would write
    (the tests check this); building it by concatenation keeps appends cheap.
    """
    prev = b"null" if previous_hash is None else b'"' + previous_hash.hex().encode() + b'"'
    meta = b"" if metadata_json is None else b'"meta":' + metadata_json + b","
    return b"".join(
        (
            b'{"feed":"', feed_id.encode(), b'",', meta,
            b'"n":', str(number).encode(),
            b',"payload":', payload_json,
            b',"prev":', prev,
            b',"subfeed":"', subfeed_hash.encode(),
            b'"', b"" if succession_json is None else b',"succession":' + succession_json,
            b',"ts":', str(timestamp_ms).encode(),
            b',"v":1}',
        )
    )  # fmt: skip


def build_bodies(
    feed_id: str,
    subfeed_hash: str,
    first: int,
    previous_hash: bytes | None,
    timestamp_ms: int,
    payload_jsons: list[bytes],
    metadata_jsons: list[bytes | None],
    succession_json: bytes | None = None,
) -> tuple[list[tuple[int, bytes]], bytes]:
    """The bodies of consecutive messages ``first, first + 1, ...`` (each linked to the one
    before, the first to ``previous_hash``), all with one timestamp; only the first carries
    ``succession_json``. Returns ``([(number, body)], hash of the last body)`` (the caller
    signs the last). Each body but a batch's first is a bytearray: sqlite3 binds a bytearray as
    it is, and looks up an adapter for a bytes parameter (~0.35 µs a row; the format costs
    ~0.15 µs more).

    Byte for byte what :func:`build_body` writes for each (the tests check this), with what is
    the same for every message of the batch built once: the append path's builder.
    """
    if not payload_jsons:
        raise ValueError("build_bodies needs at least one payload")
    if len(payload_jsons) != len(metadata_jsons):
        raise ValueError("build_bodies needs one metadata entry (or None) per payload")
    sha256 = hashlib.sha256
    if len(payload_jsons) == 1 and metadata_jsons[0] is None and succession_json is None:
        body = single_body(feed_id, subfeed_hash, first, previous_hash, timestamp_ms, payload_jsons[0])
        return [(first, body)], sha256(body).digest()
    head = b'{"feed":"' + feed_id.encode() + b'",'
    middle = b',"subfeed":"' + subfeed_hash.encode() + b'"'
    tail = b',"ts":' + str(timestamp_ms).encode() + b',"v":1}'
    end = middle + tail
    first_end = end if succession_json is None else middle + b',"succession":' + succession_json + tail
    prev = b"null" if previous_hash is None else b'"' + previous_hash.hex().encode() + b'"'
    # The first message (its link may be null, it may carry the succession records) ...
    mj = metadata_jsons[0]
    if mj is None:
        body = b'%s"n":%d,"payload":%s,"prev":%s%s' % (head, first, payload_jsons[0], prev, first_end)
    else:
        body = b'%s"meta":%s,"n":%d,"payload":%s,"prev":%s%s' % (
            head, mj, first, payload_jsons[0], prev, first_end)
    h = sha256(body)
    out: list[tuple[int, bytes]] = [(first, body)]
    if len(payload_jsons) == 1:
        return out, h.digest()
    # ... then the others, each linked to a hex hash, from one format of the parts they share.
    append = out.append
    n = first + 1
    head, end = head.replace(b"%", b"%%"), end.replace(b"%", b"%%")  # literal text in a format
    fmt = bytearray(head + b'"n":%d,"payload":%s,"prev":"%s"' + end)  # bodies as bytearrays
    if metadata_jsons.count(None) == len(metadata_jsons):  # no metadata: the usual batch
        for pj in payload_jsons[1:]:
            body = fmt % (n, pj, h.hexdigest().encode())
            h = sha256(body)
            append((n, body))
            n += 1
        return out, h.digest()
    meta_fmt = bytearray(head + b'"meta":%s,"n":%d,"payload":%s,"prev":"%s"' + end)
    for pj, mj in zip(payload_jsons[1:], metadata_jsons[1:], strict=True):
        if mj is None:
            body = fmt % (n, pj, h.hexdigest().encode())
        else:
            body = meta_fmt % (mj, n, pj, h.hexdigest().encode())
        h = sha256(body)
        append((n, body))
        n += 1
    return out, h.digest()


_SINGLE_BODY = bytearray(b'{"feed":"%s","n":%d,"payload":%s,"prev":%s,"subfeed":"%s","ts":%d,"v":1}')


def single_body(feed_id: str, subfeed_hash: str, number: int, previous_hash: bytes | None,
                timestamp_ms: int, payload_json: bytes) -> bytearray:
    """The body of one message without metadata or succession records, in one format: what
    :func:`build_bodies` writes for a batch of one (a bytearray, bound by sqlite3 as it is)."""
    return _SINGLE_BODY % (
        feed_id.encode(), number, payload_json,
        b"null" if previous_hash is None else b'"%s"' % previous_hash.hex().encode(),
        subfeed_hash.encode(), timestamp_ms)  # fmt: skip


def message_hash(body: bytes) -> bytes:
    return hashlib.sha256(body).digest()


def signing_input(body_hash: bytes) -> bytes:
    return SIGNATURE_CONTEXT + body_hash


def sign_hash(secret_key: bytes, body_hash: bytes) -> bytes:
    """Sign a body hash with a 64-byte libsodium secret key; returns the 64-byte signature."""
    if _crypto_sign is not None and len(secret_key) == 64 and len(body_hash) == 32:
        # libsodium's crypto_sign, called as nacl.bindings.crypto_sign calls it, without its two
        # output allocations and the copy of the signed message (~1.2 us of a ~17 us signature:
        # every durable single append signs)
        out = _new_bytes("unsigned char[]", _SIGNED_LENGTH)
        if _crypto_sign(out, _NULL, SIGNATURE_CONTEXT + body_hash, _SIGNED_LENGTH - 64, secret_key) == 0:
            return _buffer(out, 64)[:]
    return nacl.bindings.crypto_sign(signing_input(body_hash), secret_key)[:64]


def signature_is_valid(public_key: bytes, body_hash: bytes, signature: bytes) -> bool:
    try:
        nacl.bindings.crypto_sign_open(signature + signing_input(body_hash), public_key)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError):
        return False
    return True


def to_wire(body: bytes, signature: bytes | None) -> bytes:
    return b"%s\t%s" % (body, signature.hex().encode()) if signature else body + b"\t"


def encode_segment(lines: list[bytes]) -> bytes:
    """Join wire-form messages into one segment (each line followed by a newline)."""
    return b"\n".join([*lines, b""]) if lines else b""  # one copy of each line


def decode_segment(data: bytes) -> list[bytes]:
    """Split a segment into wire-form messages; raises VerificationError on a torn segment."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise VerificationError(f"a segment must be bytes, not {type(data).__name__}")
    data = bytes(data)
    if not data:
        return []
    if not data.endswith(b"\n"):
        raise VerificationError("segment does not end with a newline (truncated?)")
    return data[:-1].split(b"\n")


def _hex_bytes(value: object, nbytes: int) -> bytes | None:
    """``value`` as bytes if it is exactly ``nbytes`` bytes in lowercase hex, else None.

    The round trip through ``bytes.hex()`` rejects upper case and whitespace, which
    ``bytes.fromhex`` alone would accept (10x cheaper than a character-set check).
    """
    if type(value) is not str or len(value) != 2 * nbytes:
        return None
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        return None
    return raw if raw.hex() == value else None


#: What :func:`parse_wire` returns: a plain tuple (the first five fields of a ParsedMessage).
#: Plain tuples of bytes and ints are untracked by Python's cyclic GC, which matters when an
#: import holds 100k of them.
WireMessage = tuple  # (number, previous_hash, hash, body, signature)


def _parse_fields(line: bytes, feed_id: str, subfeed_hash: str
                  ) -> tuple[int, object, bytes, bytes | None, dict]:
    """Every check of one line but its previous hash: ``(number, prev as decoded, body,
    signature, decoded body)``. The previous hash is left to the caller, which either checks its
    hex (:func:`_parse`) or compares it with the hash of the message before (:func:`parse_range`)."""
    if type(line) is not bytes:
        if isinstance(line, bytearray | memoryview):
            line = bytes(line)
        else:
            raise VerificationError(f"a wire message must be bytes, not {type(line).__name__}")
    if len(line) > _MAX_LINE:
        raise VerificationError(f"message is larger than the {MAX_MESSAGE_BYTES}-byte limit")
    body, tab, sig_hex = line.rpartition(b"\t")
    if not tab or not body:
        raise VerificationError("malformed message: expected '<body>\\t<signature>'")
    if b"\n" in line:
        raise VerificationError("malformed message: contains a newline")
    if sig_hex:
        signature = _hex_bytes(sig_hex.decode("ascii", "replace"), 64)
        if signature is None:
            raise VerificationError("malformed signature: expected 128 lowercase hex characters")
    else:
        signature = None
    # kachery_feeds.jsontext.loads, inlined (this is the import hot path): a body that orjson
    # writes back byte for byte obeys every rule of spec/feeds.md §2.1; any other is re-read
    # exactly.
    try:
        d = orjson.loads(body)
        try:
            canonical = orjson.dumps(d) == body
        except orjson.JSONEncodeError:
            canonical = False
        if not canonical:
            check_exactly(body)
    except (orjson.JSONDecodeError, JsonTextError) as exc:
        raise VerificationError(f"message body is not valid JSON: {exc}") from None
    if type(d) is not dict:
        raise VerificationError("message body is not a JSON object")
    keys = d.keys()
    if not (_REQUIRED_KEYS <= keys <= _ALL_KEYS):
        raise VerificationError(
            f"message body has fields {sorted(keys)}; expected {sorted(_REQUIRED_KEYS)} and 'meta'"
        )
    if d["v"] != FORMAT_VERSION or type(d["v"]) is not int:
        raise VerificationError(f"unsupported message format version {short_repr(d['v'])}")
    if d["feed"] != feed_id:
        raise VerificationError(f"message belongs to feed {short_repr(d['feed'])}, not {feed_id}")
    if d["subfeed"] != subfeed_hash:
        raise VerificationError(f"message belongs to subfeed {short_repr(d['subfeed'])}, not {subfeed_hash}")
    number = d["n"]
    if type(number) is not int or not 0 <= number <= MAX_SAFE_INTEGER:
        raise VerificationError(f"message number {short_repr(number)} is not an integer in [0, 2^53-1]")
    ts = d["ts"]
    if type(ts) is not int or not 0 <= ts <= MAX_SAFE_INTEGER:
        raise VerificationError(f"timestamp {short_repr(ts)} is not an integer in [0, 2^53-1]")
    if "meta" in d and type(d["meta"]) is not dict:
        raise VerificationError("message metadata is not a JSON object (absent when unused, never null)")
    if "succession" in d and (type(d["succession"]) is not list or not d["succession"]
                              or not all(type(x) is str for x in d["succession"])):
        raise VerificationError("message field 'succession' is not a non-empty list of record lines")
    return number, d["prev"], body, signature, d


def _previous_hash(number: int, prev: object) -> bytes | None:
    """The checked previous hash of message ``number`` (raw bytes; None for message 0)."""
    if prev is None:
        if number != 0:
            raise VerificationError(f"message {number} has no previous hash")
        return None
    previous_hash = _hex_bytes(prev, 32) if number > 0 else None
    if previous_hash is None:
        raise VerificationError(f"message {number} has an invalid previous hash {short_repr(prev)}")
    return previous_hash


def _parse(line: bytes, feed_id: str, subfeed_hash: str) -> tuple[tuple, dict]:
    number, prev, body, signature, d = _parse_fields(line, feed_id, subfeed_hash)
    previous_hash = _previous_hash(number, prev)
    return (number, previous_hash, message_hash(body), body, signature), d


class ParsedRange(NamedTuple):
    """A verified range as :func:`parse_range` returns it, shaped for the store's insert."""

    first: int  # the first message's number
    previous_hash: bytes | None  # what the first message links to (None: it is message 0)
    # (number, wire line) for an unsigned message: its body and the tab after it (``line[:-1]``
    # is the body: the store cuts it while it inserts, one row at a time, so that no body is
    # copied here: 50k new bodies held at once cost ~0.5 us a message in fresh memory); (number, body,
    # signature) for a signed one. Ready to insert (the store binds an unsigned row's NULL in
    # the statement: a None parameter costs sqlite3 an adapter lookup, ~0.3 us a row).
    rows: list[tuple[int, bytes] | tuple[int, bytes, bytes]]
    last_hash: bytes  # the last message's hash: the subfeed's new head


_NOT_TAB = re.compile(rb"[^\t]")


class CarriesSuccession(Exception):
    """Raised by :func:`parse_range` with ``plain=True`` when a message of the range carries key
    succession records (spec/feeds.md §9.3): its signatures are then checked against the key
    chain instead (the store's slower path). Not a verdict on the range."""


def parse_range(lines: list[bytes], feed_id: str, subfeed_hash: str, public_key: bytes, *,
                plain: bool = False) -> ParsedRange:
    """Parse and verify a contiguous range of wire messages in one pass: every check of
    :func:`parse_wire` on each line and of :func:`check_chain` on the range.

    The import path's parser. Each body is hashed once, to hex, and the links are checked by
    comparing each ``prev`` string with the hex hash of the message before it: no hex is decoded
    but the first message's link and the signed messages' hashes, and the rows come out as the
    store inserts them (plain tuples, untracked by the cyclic GC). A message of the usual shape
    (bytes, the seven required fields, compact JSON as orjson writes it, the number and link
    expected) is checked inline; any other goes through every check of :func:`parse_wire` one
    by one, which names what is wrong. ``plain=True``: raise :class:`CarriesSuccession`, before
    any signature is checked, if a message carries key succession records. Raises
    :class:`~kachery_feeds.VerificationError`; a range with several faults may report a
    different one first than parsing every line and then checking the chain would.
    """
    if not lines:
        raise ValueError("parse_range needs at least one message")
    sha256 = hashlib.sha256
    loads, dumps = orjson.loads, orjson.dumps
    rows: list[tuple[int, bytes] | tuple[int, bytes, bytes]] = []
    append = rows.append
    signed: list[tuple[int, bytes, bytes]] = []
    number, prev, body, signature, d = _parse_fields(lines[0], feed_id, subfeed_hash)
    carries = "succession" in d
    first, previous_hash = number, _previous_hash(number, prev)
    h = sha256(body)
    prev_n, prev_hex = number, h.hexdigest().encode()
    append((number, body + b"\t") if signature is None else (number, body, signature))
    if signature is not None:
        signed.append((number, h.digest(), signature))
    # The usual body, byte for byte as orjson writes it (feed and subfeed as JSON strings, so
    # that any ID is matched exactly as its canonical encoding):
    #   {"feed":<feed>,"n":<n>,"payload":<P>,"prev":"<prev hex>","subfeed":<subfeed>,"ts":<ts>,"v":1}
    head = b'{"feed":' + dumps(feed_id).replace(b"%", b"%%") + b',"n":%d,"payload":'
    link_of = b',"prev":"%s","subfeed":' + dumps(subfeed_hash).replace(b"%", b"%%") + b',"ts":'
    link_len = len(link_of % prev_hex)  # a hex hash is always 64 characters
    tail = b',"v":1}'
    max_line = _MAX_LINE
    # numbers past 2^53 - 1 are refused; the inline check needs no test of its own below it
    max_n = MAX_SAFE_INTEGER if first + len(lines) - 1 > MAX_SAFE_INTEGER else None
    checked_ts = None  # the last timestamp checked inline (a batch's messages share theirs)
    for line in lines[1:]:
        # The usual message, checked inline without decoding the fields every message repeats:
        # the body must be exactly the bytes above with this number, the link to the message
        # before, a timestamp of 1 to 15 digits (< 2^53, no leading zero) and a payload P that
        # orjson reads as one JSON value and writes back byte for byte. Such a body is the
        # compact JSON object of the seven required fields (no "meta", no "succession") that
        # orjson writes back byte for byte, with every field as parse_wire requires it: the
        # inline check accepts a subset of what the full one does, and no other body. (The link
        # is found from the end, where only the timestamp's digits and the tail follow it; a
        # link found anywhere but right after the payload leaves no payload that parses.)
        number = prev_n + 1
        try:
            if type(line) is not bytes or len(line) > max_line or (max_n and number > max_n):
                raise ValueError
            if line[-1] == 9:  # ends with the tab: unsigned (what rpartition gives, cheaper)
                body, sig_hex = line[:-1], b""
            else:
                body, _tab, sig_hex = line.rpartition(b"\t")
            start = head % number
            colon = body.rfind(b":", 0, -7) + 1  # the timestamp's (its digits hold none)
            ts = body[colon:-7]
            at = colon - link_len
            if not (body.startswith(link_of % prev_hex, at) and body.startswith(start)
                    and body.endswith(tail) and (ts == checked_ts or (
                        ts.isdigit() and ts[0] != 48 and len(ts) < 16))):
                raise ValueError
            checked_ts = ts
            payload = body[len(start):at]  # empty (which does not parse) if at is before it
            if dumps(loads(payload)) != payload:
                raise ValueError
            if sig_hex:
                signature = _hex_bytes(sig_hex.decode("ascii", "replace"), 64)
                if signature is None:
                    raise ValueError
            else:
                signature = None
        except Exception:  # anything unusual: every check one by one, which names the fault
            number, prev, body, signature, d = _parse_fields(line, feed_id, subfeed_hash)
            line = body + b"\t"  # what an unsigned row holds (see ParsedRange.rows)
            carries = carries or "succession" in d
            if prev != prev_hex.decode():
                _previous_hash(number, prev)  # malformed: say so, as parse_wire would
                if number == prev_n + 1:
                    raise VerificationError(f"message {number} does not link to message {prev_n}") from None
            if number != prev_n + 1:
                raise VerificationError(f"message {number} follows message {prev_n}: gap") from None
        h = sha256(body)
        prev_n, prev_hex = number, h.hexdigest().encode()
        if signature is None:
            append((number, line))  # the line, body and tab (see ParsedRange.rows)
        else:
            append((number, body, signature))
            signed.append((number, h.digest(), signature))
    if signature is None:
        raise VerificationError(
            f"range ends at message {prev_n}, which is not signed; "
            "a transferred range must end at a signed message"
        )
    if plain and carries:
        raise CarriesSuccession
    for n, message_hash_, sig in signed:
        if not signature_is_valid(public_key, message_hash_, sig):
            raise VerificationError(f"bad signature on message {n}")
    return ParsedRange(first, previous_hash, rows, signed[-1][1])


def range_rows(lines: list[bytes], feed_id: str, subfeed_hash: str
               ) -> tuple[int, bytes | None, list[tuple[int, bytes] | tuple[int, bytes, bytes]]]:
    """``(first, previous hash, rows)`` of a range of ``bytes`` lines as :func:`parse_range`
    returns them when it accepts the range, checking only the first message (every check of
    :func:`parse_wire` but the chain's) and nothing after it: the rows of a range whose verdict
    comes from elsewhere (:mod:`kachery_feeds.range_verifier`), to be used only once that verdict
    is in.

    Whichever way :func:`parse_range` checks a line it accepts, its row is the line cut at its
    last tab: an unsigned one (the line ends with the tab) is ``(number, line)``, a signed one
    ``(number, body, signature)``, the signature decoded from its (checked, lowercase) hex; the
    numbers run on from the first. The unsigned rows are built by C iterators (no Python code
    per message)."""
    number, prev, body, signature, _d = _parse_fields(lines[0], feed_id, subfeed_hash)
    previous_hash = _previous_hash(number, prev)
    rows: list = list(zip(range(number, number + len(lines)), lines, strict=True))
    rows[0] = (number, body + b"\t") if signature is None else (number, body, signature)
    for i in signed_positions(lines, 1):
        body, _tab, sig_hex = lines[i].rpartition(b"\t")
        rows[i] = (number + i, body, bytes.fromhex(sig_hex.decode("ascii")))
    return number, previous_hash, rows


def signed_positions(lines: list[bytes], start: int = 0) -> list[int]:
    """The positions from ``start`` on of the lines that do not end with the tab (in a valid
    range: the signed messages), found by one search over the lines' last bytes (a batch signs
    one message in a thousand). Every line must be non-empty."""
    ends = bytes(map(operator.itemgetter(-1), lines))
    return [found.start() for found in _NOT_TAB.finditer(ends, start)]


def parse_wire(line: bytes, feed_id: str, subfeed_hash: str) -> WireMessage:
    """Like :func:`parse_message` (same checks), but returns only
    ``(number, previous_hash, hash, body, signature)`` as a plain tuple: the import path needs
    neither payload nor metadata, and not keeping them is most of its speed."""
    return _parse(line, feed_id, subfeed_hash)[0]


def parse_message(line: bytes, feed_id: str, subfeed_hash: str) -> ParsedMessage:
    """Parse one wire-form message and check that it belongs to ``feed_id``/``subfeed_hash``.

    Checks format and binding only; signatures and the chain are checked by :func:`check_chain`.
    """
    (number, previous_hash, h, body, signature), d = _parse(line, feed_id, subfeed_hash)
    return ParsedMessage(
        number, previous_hash, h, body, signature, d["ts"], d["payload"], d.get("meta")
    )


def check_links(messages: list[ParsedMessage] | list[WireMessage]) -> None:
    """The signature-free part of :func:`check_chain` on a non-empty range: contiguous numbers,
    linked hashes, a signed last message (also used by the key-succession check)."""
    prev_n, _, prev_h, _, _ = messages[0][:5]
    for m in messages[1:]:
        n = m[0]
        if n != prev_n + 1:
            raise VerificationError(f"message {n} follows message {prev_n}: gap")
        if m[1] != prev_h:
            raise VerificationError(f"message {n} does not link to message {prev_n}")
        prev_n, prev_h = n, m[2]
    if messages[-1][4] is None:
        raise VerificationError(
            f"range ends at message {messages[-1][0]}, which is not signed; "
            "a transferred range must end at a signed message"
        )


def check_chain(messages: list[ParsedMessage] | list[WireMessage], public_key: bytes) -> None:
    """Check a parsed range on its own: contiguous numbers, linked hashes, valid signatures,
    and a signed last message (which vouches for the others through the chain).

    Takes :class:`ParsedMessage` or :func:`parse_wire` tuples (fields by position)."""
    if not messages:
        return
    check_links(messages)
    for m in messages:
        if m[4] is not None and not signature_is_valid(public_key, m[2], m[4]):
            raise VerificationError(f"bad signature on message {m[0]}")
