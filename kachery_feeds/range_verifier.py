"""Verifying most of a large import's range in a helper process, on another core, while the store
inserts it.

Why: a verified import costs ~2.6 µs a message of parsing and checking in Python (SHA-256, the
payload's JSON round trip, the inline checks of :func:`~kachery_feeds.messages.parse_range`)
above ~1.9 µs of SQLite insert. Threads cannot share that work: sqlite3 takes the GIL back after
every row it steps, so a parsing thread and an inserting one run by turns (bench/README.md,
"Why three rows still miss"). A second process can. For a range of at least
:data:`HELPER_MIN_LINES` messages, on a machine with two usable cores or more, the store
(:meth:`Store._import_range <kachery_feeds.Store>`):

1. sends the first part of the range, up to a signed message, to the helper, which runs every
   check of ``parse_range(..., plain=True)`` on it (in pieces of :data:`CHUNK_LINES`, parsing
   one while the next arrives, each linked to the one before);
2. meanwhile verifies the rest itself with ``parse_range``, builds the first part's rows with
   :func:`~kachery_feeds.messages.range_rows` (the rows ``parse_range`` would make of it) and
   inserts everything inside its write transaction;
3. commits only once the helper has answered that the first part verified, ending with the
   hash the rest links to. Any other answer, no answer within the
   deadline or a helper that died rolls the transaction back and the whole range goes the
   ordinary way, in this process, which also names any fault. Nothing unverified is ever
   committed; no error comes from the helper.

The helper is ``python -m kachery_feeds.range_verifier``, one per process (:func:`shared`, used
by one import at a time; any other import meanwhile verifies in its own process), started on
first use: starting costs ~0.1 s of the helper's time (Python and the package's imports), spent
while the store verifies its own part. It holds no state between requests, ends after
:data:`HELPER_IDLE_SECONDS` without one (the next large import starts another), when its input
closes (so it never outlives the process that started it) and at that process's exit. A forked
child does not use its parent's. ``KACHERY_IMPORT_HELPER=0`` in the environment turns it off.

The pipe protocol (private to one process and its helper, same version on both ends):

* request: a ``<HHI`` little-endian header (length of the feed ID, of the subfeed hash, number
  of parts), the feed ID and subfeed hash (ASCII), then each part: ``<II`` (its number of
  lines, its total bytes), one ``<I`` length per line, the lines back to back;
* answer: one status byte, 0 when every part verified and each links to the one before (then
  32 bytes: the last message's hash) or 1 when not (then 32 zero bytes).
"""

from __future__ import annotations

import atexit
import os
import select
import struct
import sys
import threading
import time
from array import array
from itertools import accumulate
from typing import TYPE_CHECKING, BinaryIO

from .messages import parse_range, signed_positions

if TYPE_CHECKING:
    import subprocess

# Below this many messages a range is verified in the store's own process: the pipe's copies and
# the wait cost more than the parsing they would save.
HELPER_MIN_LINES = 4000
# The part of a range sent to the helper (cut back to the signed message at or before it): the
# store, which also inserts the whole range, verifies the rest in that time (measured:
# bench/feeds/run.py's import row).
HELPER_SHARE = 0.8
# Lines of one part of a request: the helper starts parsing once the first part is in.
CHUNK_LINES = 8192
# How long the store waits for an answer before it gives the helper up (it is ended and the
# range verified in-process): far more than parsing takes (~3 µs a message), so that only a
# helper that hangs or is starved for seconds hits it.
ANSWER_SECONDS_BASE = 30.0
ANSWER_SECONDS_PER_LINE = 50e-6
# An idle helper ends itself after this long (its ~20 MB are not kept for a rare large import).
HELPER_IDLE_SECONDS = 60.0
# Linux: a larger pipe takes a range in fewer system calls (the default is 64 KiB).
PIPE_BYTES = 1 << 20
# The first parts of a request are written joined, each in one piece; the rest by writev from
# the lines themselves (see RangeVerifier._send). Two parts are ~50 ms of the helper's parsing:
# about as long as the store's own parsing, after which the store inserts.
JOINED_PARTS = 2

_HEADER = struct.Struct("<HHI")
_PART = struct.Struct("<II")
_ANSWER_BYTES = 33
_MAX_PART_LINES = 1 << 24  # far above a part's ~8192; bounds what a bad header makes it allocate
_F_SETPIPE_SZ = 1031
# Lines written per writev (0: no writev here, every part is joined). 16 is POSIX's least
# IOV_MAX, for a system that does not say (no such name, or sysconf's -1).
try:
    _iov_max = os.sysconf("SC_IOV_MAX")
except (ValueError, OSError):
    _iov_max = -1
_IOV_MAX = (min(_iov_max, 1024) if _iov_max > 0 else 16) if hasattr(os, "writev") else 0


def helper_wanted() -> bool:
    """Whether a helper may be used here: two usable cores or more, not turned off."""
    if os.environ.get("KACHERY_IMPORT_HELPER", "1") == "0":
        return False
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return cores >= 2


def plan(lines: list[bytes]) -> list[int]:
    """How a range is shared: the helper takes ``lines[:cuts[-1]]`` in parts ending at
    ``cuts[0], cuts[1], ...`` (each part ends with a signed message, as parse_range requires, and
    has about :data:`CHUNK_LINES` lines, so that the helper parses one while the next is on its
    way); the store verifies the rest. About :data:`HELPER_SHARE` of the range goes to the
    helper. Empty when there is no cut worth making. Every line must be non-empty bytes."""
    want = int(len(lines) * HELPER_SHARE)
    cuts: list[int] = []
    start = 0  # where the last part starts
    for i in signed_positions(lines):
        end = i + 1  # a part may end after this signed message
        if end > want:
            break
        if cuts and cuts[-1] - start < CHUNK_LINES:
            cuts[-1] = end  # the last part is still short: it goes on to here
        else:
            start = cuts[-1] if cuts else 0
            cuts.append(end)
    return cuts if cuts and cuts[-1] >= HELPER_MIN_LINES // 2 else []


class PendingCheck:
    """A request sent to the helper; :meth:`verified` waits for its answer (once)."""

    def __init__(self, verifier: RangeVerifier, expected_last_hash: bytes, deadline: float) -> None:
        self._verifier = verifier
        self._expected = expected_last_hash
        self._deadline = deadline
        self._answer: bool | None = None

    def verified(self) -> bool:
        """True only when the helper answered that the part passed every check and ends with the
        expected hash. Waits until the deadline at most; False for any other outcome."""
        if self._answer is None:
            answer = self._verifier._answer(self._deadline)
            self._answer = answer is not None and answer[0] == 0 and answer[1:] == self._expected
        return self._answer

    def abandon(self) -> None:
        """No answer is wanted (the import failed or was interrupted before asking): end the
        helper unless its answer was read (a new one starts on the next use)."""
        if self._answer is None:
            self._answer = False
            self._verifier._drop()


class RangeVerifier:
    """A helper process (started on first use), used by one import at a time."""

    def __init__(self, idle_seconds: float = HELPER_IDLE_SECONDS) -> None:
        self.idle_seconds = idle_seconds
        self.answers = 0  # answers read so far (each a request the helper verified or refused)
        self._lock = threading.Lock()  # held from a request until its answer is read or dropped
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid = os.getpid()  # the process whose helper it is (a forked child starts its own)
        self._closed = False
        self._sender: threading.Thread | None = None  # writing the request in flight
        self._sent = False  # whether it wrote all of it

    def check(self, lines: list[bytes], cuts: list[int], feed_id: str, subfeed_hash: str,
              expected_last_hash: bytes) -> PendingCheck | None:
        """Start sending ``lines[:cuts[-1]]`` to the helper in the parts ``cuts`` ends (see
        :func:`plan`; a thread of this process writes them while the caller goes on); None if
        the helper is busy with another import, closed or cannot be started (the caller verifies
        in-process)."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            if self._closed:
                raise OSError("closed")
            deadline = time.monotonic() + ANSWER_SECONDS_BASE + ANSWER_SECONDS_PER_LINE * cuts[-1]
            if self._pid != os.getpid():
                raise OSError("the helper is the parent process's")
            proc = self._proc if self._proc is not None and self._proc.poll() is None else self._start()
            ids = feed_id.encode("ascii") + subfeed_hash.encode("ascii")
            # Each part: its head (line count, bytes, lengths), then its lines, joined for the
            # first JOINED_PARTS, else as they are (see _send).
            pieces: list[bytes | list[bytes]] = [
                _HEADER.pack(len(feed_id), len(subfeed_hash), len(cuts)) + ids]
            start = 0
            for number, end in enumerate(cuts):
                part = lines[start:end]
                lengths = array("I", map(len, part))
                pieces.append(_PART.pack(end - start, sum(lengths)) + lengths.tobytes())
                pieces.append(b"".join(part) if number < JOINED_PARTS or not _IOV_MAX else part)
                start = end
        except (OSError, ValueError, UnicodeEncodeError, struct.error, OverflowError, TypeError):
            self._drop()
            return None
        except BaseException:
            self._drop()
            raise
        assert proc.stdin is not None
        self._sender = threading.Thread(target=self._send, name="kachery-import-helper-send",
                                        args=(proc.stdin.fileno(), pieces),
                                        daemon=True)
        self._sent = False
        self._sender.start()
        return PendingCheck(self, expected_last_hash, deadline)

    @property
    def pid(self) -> int | None:
        """The helper's process ID while one was started and not ended by this object (it may
        have ended itself since, when idle)."""
        proc = self._proc
        return proc.pid if proc is not None else None

    def close(self) -> None:
        """End the helper for good (waits for a request in flight to be answered or dropped)."""
        with self._lock:
            self._closed = True
            if self._pid == os.getpid():
                self._end()

    # ---------------------------------------------------------------- internals
    def _start(self) -> subprocess.Popen[bytes]:
        import subprocess  # here: ~4 ms that `import kachery_feeds` need not pay

        self._end()
        proc = subprocess.Popen(
            # -P: the script's directory is not the helper's sys.path[0] (a module of the
            # person's own there, named like one the helper imports, would be loaded instead).
            [sys.executable, "-P", "-m", "kachery_feeds.range_verifier", repr(self.idle_seconds)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            close_fds=True, start_new_session=True,  # a terminal's Ctrl-C is for the store's process
        )
        assert proc.stdin is not None and proc.stdout is not None
        for stream in (proc.stdin, proc.stdout):
            try:
                import fcntl

                fcntl.fcntl(stream.fileno(), _F_SETPIPE_SZ, PIPE_BYTES)
            except (ImportError, OSError):
                pass  # not Linux, or over the system's limit: the default size works too
        self._proc = proc
        return proc

    def _send(self, fd: int, pieces: list[bytes | list[bytes]]) -> None:
        """The sending thread: the request's pieces, written as the helper reads them, the GIL
        released during each blocking write. The thread takes the GIL between writes, and while
        the store parses its own part it gets it only when the store's thread lets it go (up to
        the interpreter's switch interval, 5 ms). So the first parts, which the helper needs
        then, are each one joined piece (a few writes). The other parts are lists of lines,
        written :data:`_IOV_MAX` at a time with writev from where they are: by then the store
        inserts, and sqlite3 lets the GIL go at every row. No copy of them is made in this
        process (a joined copy of a large range's part cost ~0.3 µs a message, most of it
        fresh memory, and as many bytes as the part). A helper that takes no input is ended at
        the answer's deadline, which ends the write."""
        try:
            for piece in pieces:
                if type(piece) is list:
                    _write_lines(fd, piece)
                else:
                    _write_all(fd, piece)
            self._sent = True
        except OSError:
            pass  # the helper died or was ended: no answer will come, the store sees to it

    def _answer(self, deadline: float) -> bytes | None:
        """Read the answer of the request in flight; None (and the helper ended) if none came."""
        try:
            proc = self._proc
            sender, self._sender = self._sender, None
            if sender is not None:
                sender.join(max(0.0, deadline - time.monotonic()))
                if sender.is_alive() or not self._sent:
                    self._sender = sender
                    self._end()
                    return None
            if proc is None or proc.stdout is None:
                return None
            got = b""
            fd = proc.stdout.fileno()
            while len(got) < _ANSWER_BYTES:
                if not _wait(fd, select.POLLIN, deadline):
                    self._end()
                    return None
                more = os.read(fd, _ANSWER_BYTES - len(got))
                if not more:  # the helper died
                    self._end()
                    return None
                got += more
            self.answers += 1
            return got
        except OSError:
            self._end()
            return None
        finally:
            self._lock.release()

    def _drop(self) -> None:
        """Give up the request in flight: the helper is ended, the lock released."""
        self._end()
        self._lock.release()

    def _end(self) -> None:
        """End the helper, then the sending thread (whose writes fail once the helper is gone),
        then close the pipes (not before: the thread writes to the descriptor)."""
        proc, self._proc = self._proc, None
        sender, self._sender = self._sender, None
        if proc is None:
            return
        # It holds nothing worth waiting for (an idle one would end at its input's end; a busy
        # one only after its parse).
        proc.kill()
        proc.wait()
        if sender is not None:
            sender.join()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass


_shared: RangeVerifier | None = None
_shared_lock = threading.Lock()


def shared() -> RangeVerifier:
    """This process's helper (its process started on first use, ended at exit; a new one after
    :meth:`RangeVerifier.close`)."""
    global _shared
    with _shared_lock:
        if _shared is None or _shared._pid != os.getpid() or _shared._closed:
            _shared = RangeVerifier()  # in a forked child: a new one, the parent's left alone
        return _shared


@atexit.register
def _close_shared() -> None:
    """At exit, end whichever helper is this process's then (registered once, not per helper)."""
    if _shared is not None:
        _shared.close()


def _write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` (a blocking write may write part of it)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _write_lines(fd: int, lines: list[bytes]) -> None:
    """Write ``lines`` back to back: :data:`_IOV_MAX` of them per ``writev``, which the kernel
    copies from where they are (a blocking write on a pipe writes all of it unless a signal
    cuts it short: then the rest of that batch is written joined)."""
    for i in range(0, len(lines), _IOV_MAX):
        batch = lines[i:i + _IOV_MAX]
        done = os.writev(fd, batch)
        if done < sum(map(len, batch)):
            _write_all(fd, b"".join(batch)[done:])


def _wait(fd: int, event: int, deadline: float) -> bool:
    poller = select.poll()
    poller.register(fd, event | select.POLLERR | select.POLLHUP)
    left = deadline - time.monotonic()
    return left > 0 and bool(poller.poll(left * 1000))


# ---------------------------------------------------------------- the helper's side
def serve(inp: BinaryIO, out: BinaryIO, idle_seconds: float = HELPER_IDLE_SECONDS) -> None:
    """The helper's loop: answer requests until the input ends (or none comes for
    ``idle_seconds``)."""
    while True:
        # (Nothing is left in ``inp``'s buffer here: the store sends a request only once it
        # has the answer to the one before, so the select on the descriptor sees all there is.)
        if not select.select([inp], [], [], idle_seconds)[0]:
            return  # idle: the next large import starts another
        header = _read_exactly(inp, _HEADER.size)
        if header is None:
            return
        id_len, sh_len, parts = _HEADER.unpack(header)
        ids = _read_exactly(inp, id_len + sh_len)
        if ids is None:
            return
        checker = _PartsChecker(ids[:id_len], ids[id_len:])
        for _ in range(parts):
            part_header = _read_exactly(inp, _PART.size)
            if part_header is None:
                return
            count, total = _PART.unpack(part_header)
            if count > _MAX_PART_LINES:
                return  # not what a store sends: end (the store then verifies in-process)
            lengths = _read_exactly(inp, 4 * count)
            if lengths is None:
                return
            sizes = array("I")
            sizes.frombytes(lengths)
            ends = list(accumulate(sizes))
            if (ends[-1] if ends else 0) != total:
                return  # the lengths do not add up: not what a store sends
            data = _read_exactly(inp, total)
            if data is None:
                return
            checker.check([data[start:end] for start, end in zip([0, *ends], ends, strict=False)])
        out.write(checker.answer())
        out.flush()


class _PartsChecker:
    """The helper's verdict on one request's parts: each verified by parse_range, each linked
    to the one before (the numbers run on, the first links to the last's hash)."""

    def __init__(self, feed_id: bytes, subfeed_hash: bytes) -> None:
        self.failed = False
        self.next_number: int | None = None
        self.last_hash = b""
        try:
            self.feed_id, self.subfeed_hash = feed_id.decode("ascii"), subfeed_hash.decode("ascii")
            self.key = bytes.fromhex(self.feed_id)
        except ValueError:
            self.failed = True

    def check(self, lines: list[bytes]) -> None:
        if self.failed:
            return  # the rest is read (the pipe stays in step with the store) but not parsed
        try:
            parsed = parse_range(lines, self.feed_id, self.subfeed_hash, self.key, plain=True)
        except Exception:  # any fault, a succession: not this helper's to name
            self.failed = True
            return
        if self.next_number is not None and (parsed.first != self.next_number
                                             or parsed.previous_hash != self.last_hash):
            self.failed = True
            return
        self.next_number = parsed.first + len(parsed.rows)
        self.last_hash = parsed.last_hash

    def answer(self) -> bytes:
        """0 and the last hash when every part verified; 1 and zeros otherwise."""
        if self.failed or self.next_number is None:
            return b"\1" + bytes(32)
        return b"\0" + self.last_hash


def _read_exactly(inp: BinaryIO, n: int) -> bytes | None:
    """``n`` bytes, or None at the input's end (a buffered reader's ``read`` reads until it has
    them or the input ends)."""
    data = inp.read(n)
    return data if len(data) == n else None


if __name__ == "__main__":
    serve(sys.stdin.buffer, sys.stdout.buffer,
          float(sys.argv[1]) if len(sys.argv) > 1 else HELPER_IDLE_SECONDS)
