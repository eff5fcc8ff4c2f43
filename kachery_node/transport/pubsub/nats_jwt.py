"""NATS decentralized auth, hub side: nkeys and the JWTs that nats-server checks.

Theory of operation. A nats-server in *operator mode* trusts one operator key; the operator
signs account JWTs; an account's key signs user JWTs. A client connects with a user JWT plus a
signature of the server's nonce made with the user's private nkey; the server checks the chain
(operator → account → user), the expiry, and then enforces the user's publish/subscribe
permissions itself. So the hub, holding only the channel's *account* seed, can mint per-node,
short-lived users whose permissions are exactly the node's bands: the server, not the client,
refuses the rest.

Rules:

* The account seed never leaves the hub; a node receives a fresh user JWT and a fresh user seed
  made for this one credential (like a ``nsc`` creds file), valid until the JWT's ``exp``.
* JWT encoding follows nats-io/jwt v2: header ``{"typ":"JWT","alg":"ed25519-nkey"}``, base64url
  without padding, signature = Ed25519 over ``header "." claims`` by the issuer.

The same functions make operator and account JWTs for tests and for labs setting up a server
(``operator_jwt``, ``account_jwt``); a production operator would use ``nsc``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
from typing import Any

import nkeys
import orjson

_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
_NO_LIMITS = {"subs": -1, "data": -1, "payload": -1}
_ACCOUNT_LIMITS = {**_NO_LIMITS, "imports": -1, "exports": -1, "wildcards": True, "conn": -1,
                   "leaf": -1}

PREFIXES = {"operator": nkeys.PREFIX_BYTE_OPERATOR, "account": nkeys.PREFIX_BYTE_ACCOUNT,
            "user": nkeys.PREFIX_BYTE_USER}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def new_seed(kind: str) -> str:
    """A new nkey seed (``SO…``, ``SA…``, ``SU…``) for an operator, account or user."""
    return nkeys.encode_seed(os.urandom(32), PREFIXES[kind]).decode()


def public_key(seed: str) -> str:
    """The public nkey (``O…``, ``A…``, ``U…``) of ``seed``."""
    return nkeys.from_seed(bytearray(seed.encode())).public_key.decode()


def sign_nonce(seed: str, nonce: str) -> bytes:
    """What a client sends as ``sig`` in CONNECT: base64 of the Ed25519 signature of the nonce."""
    kp = nkeys.from_seed(bytearray(seed.encode()))
    return base64.b64encode(kp.sign(nonce.encode()))


def encode_jwt(issuer_seed: str, subject: str, name: str, nats: dict[str, Any], *,
               expires_s: int | None = None, now_s: int | None = None) -> str:
    """A NATS JWT with ``nats`` claims about ``subject``, signed by ``issuer_seed``."""
    kp = nkeys.from_seed(bytearray(issuer_seed.encode()))
    claims: dict[str, Any] = {"iat": int(now_s if now_s is not None else time.time()),
                              "iss": kp.public_key.decode(), "name": name, "sub": subject,
                              "nats": nats}
    if expires_s is not None:
        claims["exp"] = int(expires_s)
    # jti: the claims' hash (nats-io/jwt uses SHA-512/256 of the claims, base32).
    claims["jti"] = base64.b32encode(hashlib.sha256(orjson.dumps(claims)).digest()).decode().rstrip("=")
    signing_input = _b64(orjson.dumps(_HEADER)) + "." + _b64(orjson.dumps(claims))
    return signing_input + "." + _b64(kp.sign(signing_input.encode()))


def decode_jwt_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT (no verification: for inspection and tests)."""
    part = token.split(".")[1]
    return orjson.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def operator_jwt(operator_seed: str, name: str = "kachery") -> str:
    """A self-signed operator JWT (the server's trust root)."""
    return encode_jwt(operator_seed, public_key(operator_seed), name,
                      {"type": "operator", "version": 2})


def account_jwt(operator_seed: str, account_public: str, name: str = "kachery") -> str:
    """An account JWT without limits, signed by the operator."""
    return encode_jwt(operator_seed, account_public, name,
                      {"type": "account", "version": 2, "limits": _ACCOUNT_LIMITS,
                       "default_permissions": {"pub": {}, "sub": {}}})


def user_jwt(account_seed: str, user_public: str, name: str, *, publish: list[str],
             subscribe: list[str], expires_s: int, now_s: int | None = None) -> str:
    """A user JWT allowing exactly ``publish``/``subscribe`` subjects until ``expires_s``.

    An empty list becomes a deny-all (``deny: [">"]``): a JWT without ``allow`` would allow all.
    """
    def perm(subjects: list[str]) -> dict[str, list[str]]:
        return {"allow": sorted(subjects)} if subjects else {"deny": [">"]}

    return encode_jwt(account_seed, user_public, name,
                      {"type": "user", "version": 2, **_NO_LIMITS,
                       "pub": perm(publish), "sub": perm(subscribe)},
                      expires_s=expires_s, now_s=now_s)
