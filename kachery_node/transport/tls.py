"""TLS for every connection a node makes to a hub, and the rule against sending secrets in clear.

One place decides two things for the hub API client, the bucket clients (httpx and the direct
socket of ``direct_get.py``) and the relay's WebSocket:

* **Which certificates are trusted** (:func:`ssl_context`): the system's store, the CA bundle
  that httpx used before (certifi, so that nothing trusted before stops being trusted), and a
  lab's own CA when one is given with ``--ca-file`` or ``$KACHERY_CA_FILE`` (a PEM file of one
  or more certificates; trusted *in addition* to the others, so public services such as Google
  Cloud Storage keep working).
* **Whether a URL may carry a secret** (:func:`require_secure_url`): a bearer token, a signed
  request or upload, or a channel's cloud secret goes only over ``https://``/``wss://``, or over
  plain HTTP to this machine (a loopback address or ``localhost``). Anything else raises
  :class:`~kachery_node.errors.InsecureUrlError` before a connection is attempted, unless the
  person says they mean it (``--insecure-http`` or ``$KACHERY_INSECURE_HTTP=1``). The decision
  reads only the URL, never DNS: ``http://hub.lab.example`` is refused even if that name
  resolves to 127.0.0.1, since what it resolves to can change.

Example::

    require_secure_url(hub_url, "the hub API")      # InsecureUrlError for http://hub.lab:8080
    httpx.Client(verify=ssl_context())
"""

from __future__ import annotations

import ipaddress
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ..errors import ConfigError, InsecureUrlError
from .tls_env import CA_FILE_ENV, INSECURE_ENV

if TYPE_CHECKING:
    import ssl

SECURE_SCHEMES = ("https", "wss")
PLAIN_SCHEMES = ("http", "ws")

_contexts: dict[str | None, ssl.SSLContext] = {}
_lock = threading.Lock()


def ca_file() -> Path | None:
    """The extra CA bundle named by ``$KACHERY_CA_FILE`` (``--ca-file`` sets it), or None."""
    value = os.environ.get(CA_FILE_ENV, "").strip()
    return Path(value).expanduser() if value else None


def ssl_context(ca: Path | str | None = None) -> ssl.SSLContext:
    """The client SSL context: system store + certifi + ``ca`` (default :func:`ca_file`).

    Built once per CA file and shared (an SSLContext is thread-safe once configured). Raises
    :class:`~kachery_node.errors.ConfigError` if the CA file cannot be read or holds no
    certificate, naming the file and where it was set."""
    ca = ca if ca is not None else ca_file()
    key = str(ca) if ca is not None else None
    with _lock:
        ctx = _contexts.get(key)
        if ctx is None:
            ctx = _contexts[key] = _build_context(key)
        return ctx


def _build_context(ca: str | None) -> ssl.SSLContext:
    import ssl  # here, not at the top: `kachery --help` imports this module for its settings' names

    ctx = ssl.create_default_context()  # the system store, hostname checking, TLS >= 1.2
    try:
        import certifi  # httpx's own default: keep trusting what httpx trusted

        ctx.load_verify_locations(certifi.where())
    except (ImportError, OSError):  # pragma: no cover - certifi comes with httpx
        pass
    if ca is not None:
        try:
            ctx.load_verify_locations(cafile=ca)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot use {ca} as a CA file (--ca-file or ${CA_FILE_ENV}): {exc}; "
                              "it must be a readable PEM file of the CA certificate(s)") from exc
    return ctx


def insecure_allowed() -> bool:
    """Whether ``$KACHERY_INSECURE_HTTP`` (``--insecure-http`` sets it) allows plain HTTP."""
    return os.environ.get(INSECURE_ENV, "").strip().lower() in ("1", "true", "yes")


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback IP (127.0.0.0/8, ::1). Names other than localhost are not
    resolved: see the module docstring."""
    host = host.strip("[]").lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_secure_url(url: str, what: str, *, insecure: bool | None = None) -> None:
    """Raise :class:`~kachery_node.errors.InsecureUrlError` unless ``url`` may carry ``what``
    (a secret): https/wss anywhere, http/ws only to this machine, unless ``insecure`` (default:
    :func:`insecure_allowed`). Raises ConfigError for a URL that is not http(s)/ws(s) at all."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in SECURE_SCHEMES + PLAIN_SCHEMES or not parts.hostname:
        raise ConfigError(f"{url!r} is not an http(s) URL (e.g. https://hub.lab.example)")
    if scheme in SECURE_SCHEMES or is_loopback_host(parts.hostname):
        return
    if insecure if insecure is not None else insecure_allowed():
        return
    secure = ("https" if scheme == "http" else "wss") + url[len(scheme):]
    raise InsecureUrlError(
        f"refusing to send {what} over plain {scheme.upper()} to {parts.hostname}, which is not this "
        f"machine: anyone on the network path could read and reuse it. Use {secure} (serve the hub "
        f"with `kachery hub serve --tls-cert FILE --tls-key FILE`, or behind a TLS proxy; a lab's own "
        f"CA is trusted with --ca-file or ${CA_FILE_ENV}). If you really mean plain HTTP (a network "
        f"you trust end to end), pass --insecure-http or set {INSECURE_ENV}=1.", url=url)


def describe_tls_failure(exc: BaseException, url: str) -> str | None:
    """If ``exc`` (or what caused it) is a certificate or TLS handshake failure, a message saying
    what to do about it; else None. httpx and trio's SSLStream wrap the ``ssl`` error."""
    import ssl

    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ssl.SSLCertVerificationError):
            return (f"the certificate of {url} is not trusted ({cause.verify_message or cause}). If the "
                    f"hub uses your lab's own CA, give its certificate with --ca-file FILE or "
                    f"{CA_FILE_ENV}=FILE (now: {ca_file() or 'not set'}); check also that the URL's host "
                    "name is one the certificate names")
        if isinstance(cause, ssl.SSLError):
            return (f"TLS with {url} failed ({cause}); is it an https server (not plain http), "
                    "and is the URL's scheme right?")
        cause = cause.__cause__ or cause.__context__
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text:  # a wrapper that kept only the text
        return (f"the certificate of {url} is not trusted ({text}); give your lab's CA with "
                f"--ca-file FILE or {CA_FILE_ENV}=FILE")
    return None
