"""Object stores' XML error answers (S3, and GCS's XML API): ``<Error><Code>…</Code>
<Message>…</Message>…</Error>``. Bucket clients keep the store's code in the HubRequestError they
raise (``SignatureDoesNotMatch``, ``AccessDenied``, ``NoSuchBucket``, …) instead of a bare status."""

from __future__ import annotations

import xml.etree.ElementTree as ET


def xml_error(body: bytes) -> tuple[str, str] | None:
    """(code, message) of an XML error body, or None if ``body`` is not one."""
    if not body.lstrip().startswith(b"<"):
        return None
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return None
    code = root.findtext("Code") if root.tag == "Error" else None
    return (code, root.findtext("Message") or code) if code else None
