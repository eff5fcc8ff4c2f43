"""Writing to someone else's feed: signed submissions that the owner appends with attribution.

Only a feed's owner key can extend a feed. To let the members of a lab contribute to the lab's
curation log, the owner runs a task backend that *accepts submissions* for that subfeed, and
members *submit* messages as a built-in action task (spec/tasks.md §9)::

    # on the feed owner's node
    log = kn.load_subfeed("feed://<feedId>/curation")        # writeable here
    kn.run_task_backend(channels=["lab"], functions=[kn.accept_submissions(log, allowed="members")])

    # on any member's node
    kn.submit_message("feed://<feedId>/curation", {"action": "label", "unit": 7, "label": "noise"},
                      channel="lab")                             # -> message number

A submission is ``{"subfeed_uri", "payload", "submitter", "time_ms", "nonce"}``, serialized once
and signed by the submitter's node key (``SUBMISSION_CONTEXT || SHA-256(text)``). The owner
checks the signature, that the submitter is the node that sent the task request (whose
membership the daemon verified), that it is allowed, and that the submission is fresh and new;
then it appends ``payload`` with metadata ``{"submitted_by", "submission", "signature"}``.
Anyone replaying the subfeed can re-verify every submission with :func:`verify_submission`.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

import kachery_feeds as kf

from ..config import default_storage_dir
from ..errors import KacheryError
from ..identity import load_node_key, verify_signature
from .tasks import NoProviderError, TaskFunction, current_task, request_task, taskfunction

SUBMISSION_CONTEXT = b"kachery-feed-submission-v1\x00"
FUNCTION_PREFIX = "kachery.submit_message"
MAX_AGE_MS = 10 * 60 * 1000


class SubmissionError(KacheryError):
    """A submission is malformed, badly signed, stale, repeated, or its submitter is not allowed."""


def submission_function_id(subfeed_uri: str) -> str:
    """The task function that accepts submissions for a subfeed:
    ``kachery.submit_message.<feedId>.<subfeedHash>`` (so requests reach the owner's backend)."""
    parsed = kf.parse_feed_uri(subfeed_uri)
    if parsed.subfeed_hash is None:
        raise kf.InvalidUriError(f"{subfeed_uri!r} names a feed, not a subfeed")
    return f"{FUNCTION_PREFIX}.{parsed.feed_id}.{parsed.subfeed_hash}"


def _signing_input(text: str) -> bytes:
    return SUBMISSION_CONTEXT + hashlib.sha256(text.encode()).digest()


def submit_message(subfeed_uri: str, payload: Any, *, channel: str | None = None,
                   timeout: float = 30.0, storage_dir: str | os.PathLike | None = None) -> int:
    """Ask the owner of ``subfeed_uri`` (through its task backend on the channel) to append
    ``payload``, signed by this node; returns the new message's number.

    Raises :class:`~kachery_node.TaskError` with the owner's reason if it refuses, and
    :class:`~kachery_node.NoProviderError` if no backend accepts submissions for it."""
    function_id = submission_function_id(subfeed_uri)  # InvalidUriError for a bad or feed-only URI
    storage = Path(storage_dir) if storage_dir else default_storage_dir()
    key = load_node_key(storage)
    uri = kf.parse_feed_uri(subfeed_uri)
    canonical_uri = f"feed://{uri.feed_id}/~{uri.subfeed_hash}"
    text = orjson.dumps({
        "subfeed_uri": canonical_uri,
        "payload": payload,
        "submitter": key.public_hex,
        "time_ms": int(time.time() * 1000),
        "nonce": secrets.token_hex(12),
    }, option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY).decode()
    signature = key.sign(_signing_input(text)).hex()
    try:
        handle = request_task(function_id,
                              {"submission": text, "signature": signature},
                              function_type="action", channel=channel, timeout=timeout,
                              storage_dir=storage)
        return handle.wait()["message_number"]
    except NoProviderError as exc:
        if "request-tasks role" in str(exc):
            raise  # this node may not ask at all: the message says how to fix that
        # Submissions are appended by the owner's task backend: no offer means the owner's node
        # is offline or not accepting, which the generic "no provider offers function
        # kachery.submit_message.<hashes>" does not tell a person.
        raise NoProviderError(
            f"the owner of {subfeed_uri} is not accepting submissions now: its node is offline, or "
            f"no task backend there runs kn.accept_submissions for this subfeed ({exc})") from exc


@dataclass(frozen=True)
class Submission:
    """A verified submission."""

    subfeed_uri: str
    payload: Any
    submitter: str
    time_ms: int
    nonce: str
    text: str
    signature: str


def parse_submission(text: Any, signature: Any) -> Submission:
    """Check a submission's shape and signature (not who may submit)."""
    if not isinstance(text, str) or not isinstance(signature, str) or len(signature) != 128:
        raise SubmissionError("a submission is a JSON text and a 128-hex signature")
    try:
        body = orjson.loads(text)
        sig = bytes.fromhex(signature)
    except (orjson.JSONDecodeError, ValueError) as exc:
        raise SubmissionError(f"malformed submission: {exc}") from exc
    fields = ("subfeed_uri", "payload", "submitter", "time_ms", "nonce")
    if not isinstance(body, dict) or any(f not in body for f in fields):
        raise SubmissionError(f"a submission needs {', '.join(fields)}")
    submitter = body["submitter"]
    if not isinstance(submitter, str) or len(submitter) != 64:
        raise SubmissionError("malformed submitter")
    if not verify_signature(submitter, _signing_input(text), sig):
        raise SubmissionError(f"bad signature on a submission claiming to be from {submitter[:12]}…")
    if type(body["time_ms"]) is not int or not isinstance(body["nonce"], str):
        raise SubmissionError("malformed time_ms or nonce")
    return Submission(body["subfeed_uri"], body["payload"], submitter, body["time_ms"], body["nonce"],
                      text, signature)


def verify_submission(record: kf.MessageRecord) -> Submission:
    """Re-verify a message appended by :func:`accept_submissions`: the signature, and that the
    payload is the one that was signed. Raises SubmissionError otherwise."""
    meta = record.metadata or {}
    sub = parse_submission(meta.get("submission"), meta.get("signature"))
    if meta.get("submitted_by") != sub.submitter:
        raise SubmissionError("submitted_by does not match the signed submitter")
    if sub.payload != record.payload:
        raise SubmissionError(f"message {record.number} differs from what {sub.submitter[:12]}… submitted")
    return sub


Allowed = str | Collection[str] | Callable[[str, Any], bool]


def accept_submissions(subfeed: kf.Subfeed, *, allowed: Allowed = "members") -> TaskFunction:
    """A task function (an action) for the owner's backend: append submitted messages to
    ``subfeed`` (which must be writeable here) with attribution.

    ``allowed``: ``"members"`` (any node that may request tasks on the channel: the daemon
    checked that against the signed membership), a collection of node IDs, or a callable
    ``(node_id, payload) -> bool``."""
    if not subfeed.is_writeable:
        raise kf.NotWriteableError(f"{subfeed.uri} is not writeable on this node: only its owner "
                                   "can accept submissions")
    uri = f"feed://{subfeed.feed_id}/~{subfeed.subfeed_hash}"
    if isinstance(allowed, str) and allowed != "members":
        raise ValueError("allowed must be 'members', a collection of node IDs or a callable")

    appending = threading.Lock()  # the backend runs tasks in several threads

    def is_allowed(node_id: str, payload: Any) -> bool:
        if allowed == "members":
            return True
        if callable(allowed):
            return bool(allowed(node_id, payload))
        return node_id in allowed

    @taskfunction(submission_function_id(uri), type="action")
    def accept(*, submission: str, signature: str) -> dict[str, Any]:
        sub = parse_submission(submission, signature)
        task = current_task()
        if task is not None and task.requester != sub.submitter:
            raise SubmissionError(f"node {task.requester[:12]}… relayed a submission signed by "
                                  f"{sub.submitter[:12]}…; submit from your own node")
        if sub.subfeed_uri != uri:
            raise SubmissionError(f"this submission is for {sub.subfeed_uri}, not {uri}")
        if abs(time.time() * 1000 - sub.time_ms) > MAX_AGE_MS:
            raise SubmissionError("stale submission (time_ms is more than 10 minutes off)")
        if not is_allowed(sub.submitter, sub.payload):
            raise SubmissionError(f"node {sub.submitter[:12]}… may not submit to {uri}")
        with appending:
            for record in subfeed.get_records():  # a repeated submission is refused, not appended twice
                if (record.metadata or {}).get("signature") == signature:
                    raise SubmissionError(f"this submission was appended before as message {record.number}")
            number = subfeed.append_message(sub.payload, metadata={
                "submitted_by": sub.submitter, "submission": sub.text, "signature": sub.signature})
        return {"message_number": number, "subfeed_uri": uri}

    return accept
