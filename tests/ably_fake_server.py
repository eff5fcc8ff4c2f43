# ruff: noqa: E501
"""A small server speaking the part of Ably's protocol that kachery uses, for the Ably tests.

Not Ably: no history, presence, resume or recovery. What it does, like Ably:

* REST ``POST /keys/<keyName>/requestToken`` (its own port): checks the token request's ``mac``
  (HMAC-SHA256 with the key's secret over ``keyName ttl capability clientId timestamp nonce``,
  newline-terminated, as Ably documents), its ``timestamp`` (±60 s) and ``nonce`` (once), then
  issues a token with that capability, client ID and expiry; refusals are Ably error objects
  (``40101`` bad MAC, ``40104`` stale or replayed, ``40400`` unknown key).
* Realtime WebSocket, JSON or binary protocol (``?format=msgpack``: every protocol message is a
  MessagePack binary frame, and binary ``data`` travels as bytes; over JSON, binary data is
  base64 with ``encoding: "base64"``, converted as Ably does when a message goes from one kind of
  connection to the other), ``?accessToken=``: CONNECTED(4) for a valid token, else
  ERROR(9) ``40140``/``40142``; ATTACH(10) → ATTACHED(11), or ERROR ``40160`` on a channel the
  token has no capability for; MESSAGE(15) → ACK(1) and fan-out to attached connections with the
  ``subscribe`` capability (publishers hear themselves, as on Ably), or NACK(2) ``40160`` without
  ``publish``; the message's ``clientId`` is the token's (``40012`` if it claims another);
  AUTH(17) replaces the token in-band (answered with CONNECTED; channels the new capability does
  not cover are DETACHED); at expiry, DISCONNECTED(6) ``40142`` and close; HEARTBEAT(0) every 5 s.
* REST ``POST /keys/<keyName>/revokeTokens`` (HTTP Basic auth with the API key, as Ably requires;
  ``40101`` otherwise): ``{"targets": ["clientId:<id>", ...], "issuedBefore"?: ms}`` revokes the
  client's tokens issued before that time (default now): its live connections get DISCONNECTED
  ``40141`` "Token revoked" and are closed, and those tokens are refused from then on (connect,
  AUTH). Only ``clientId:`` targets; others fail in the batch result, as on Ably without them.
  While a file ``<state dir>/revoke-outage`` exists, it answers ``503`` (Ably's ``50003``): tests
  use it to show that the hub retries, also after a restart.

Run: ``python tests/ably_fake_server.py <state dir> <api key>``; it writes ``<state dir>/ports.json``
(``{"rest": N, "realtime": M}``) once listening and logs every refusal to stderr.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import msgpack  # the ably SDK's own dependency (its binary protocol)
import websockets
from websockets.asyncio.server import serve

HEARTBEAT, ACK, NACK, CONNECTED, DISCONNECTED, CLOSE, CLOSED, ERROR = 0, 1, 2, 4, 6, 7, 8, 9
ATTACH, ATTACHED, DETACH, DETACHED, MESSAGE, AUTH = 10, 11, 12, 13, 15, 17


def log(*args: object) -> None:
    print("ably-fake:", *args, file=sys.stderr, flush=True)


def error(code: int, status: int, message: str) -> dict:
    return {"code": code, "statusCode": status, "message": message}


class State:
    def __init__(self, api_key: str, state_dir: Path) -> None:
        self.state_dir = state_dir
        key_name, secret = api_key.split(":")
        self.keys = {key_name: secret}
        self.tokens: dict[str, dict] = {}
        self.nonces: set[tuple[str, str]] = set()
        self.lock = threading.Lock()
        self.connections: set[Connection] = set()
        self.revoked: dict[str, int] = {}  # client ID -> tokens issued before this (ms) are revoked
        self.loop: asyncio.AbstractEventLoop | None = None

    def is_revoked(self, token: dict) -> bool:
        return token["issued"] < self.revoked.get(token.get("clientId") or "", 0)

    def revoke_tokens(self, key_name: str, authorization: str, req: dict) -> tuple[int, dict]:
        if (self.state_dir / "revoke-outage").exists():
            log("refused revokeTokens: outage")
            return 503, {"error": error(50003, 503, "Timed out (test outage)")}
        secret = self.keys.get(key_name)
        if secret is None:
            return 404, {"error": error(40400, 404, "no such key")}
        expected = "Basic " + base64.b64encode(f"{key_name}:{secret}".encode()).decode()
        if not hmac.compare_digest(authorization.encode(), expected.encode()):
            log("refused revokeTokens: bad credentials")
            return 401, {"error": error(40101, 401, "Invalid credentials")}
        now = int(time.time() * 1000)
        before = int(req.get("issuedBefore") or now)
        if before > now + 1000:
            return 400, {"error": error(40003, 400, "issuedBefore is in the future")}
        results, failures = [], 0
        for target in req["targets"]:
            kind, _, value = str(target).partition(":")
            if kind != "clientId" or not value:
                failures += 1
                results.append({"target": target, "error": error(40000, 400, "unsupported target")})
                continue
            with self.lock:
                self.revoked[value] = max(self.revoked.get(value, 0), before)
            results.append({"target": target, "issuedBefore": before, "appliesAt": now})
            log("revoked tokens of", value)
        assert self.loop is not None
        asyncio.run_coroutine_threadsafe(self.disconnect_revoked(), self.loop).result(timeout=5)
        return 201, {"successCount": len(results) - failures, "failureCount": failures, "results": results}

    async def disconnect_revoked(self) -> None:
        for conn in list(self.connections):
            if self.is_revoked(conn.token):
                log("disconnecting revoked", conn.token.get("clientId"))
                await conn.send({"action": DISCONNECTED, "error": error(40141, 401, "Token revoked")})
                await conn.ws.close()

    def request_token(self, key_name: str, req: dict) -> tuple[int, dict]:
        secret = self.keys.get(key_name)
        if secret is None or req.get("keyName") != key_name:
            return 404, {"error": error(40400, 404, "no such key")}
        text = "".join(f"{req.get(f, '') if req.get(f) is not None else ''}\n"
                       for f in ("keyName", "ttl", "capability", "clientId", "timestamp", "nonce"))
        mac = base64.b64encode(hmac.new(secret.encode(), text.encode(), hashlib.sha256).digest()).decode()
        if not hmac.compare_digest(mac, str(req.get("mac", ""))):
            log("refused token request: bad mac")
            return 401, {"error": error(40101, 401, "Invalid mac")}
        now = int(time.time() * 1000)
        if abs(now - int(req.get("timestamp") or 0)) > 60_000:
            return 401, {"error": error(40104, 401, "Timestamp not current")}
        with self.lock:
            if (key_name, req["nonce"]) in self.nonces:
                return 401, {"error": error(40104, 401, "Nonce value replayed")}
            self.nonces.add((key_name, req["nonce"]))
            token = secrets.token_urlsafe(24)
            details = {"token": token, "keyName": key_name, "issued": now, "expires": now + int(req["ttl"]),
                       "capability": req["capability"], "clientId": req.get("clientId")}
            self.tokens[token] = details
        return 201, details


def encode(msg: dict, binary: bool) -> str | bytes:
    return msgpack.packb(msg, use_bin_type=True) if binary else json.dumps(msg)


def decode(raw: str | bytes) -> dict:
    return msgpack.unpackb(raw, raw=False) if isinstance(raw, bytes) else json.loads(raw)


class Connection:
    def __init__(self, state: State, ws, token: dict, binary: bool = False) -> None:
        self.state, self.ws, self.token = state, ws, token
        self.binary = binary  # the MessagePack protocol (format=msgpack)
        self.attached: set[str] = set()
        self.id = secrets.token_hex(6)

    @property
    def capability(self) -> dict[str, list[str]]:
        return json.loads(self.token["capability"])

    def may(self, channel: str, op: str) -> bool:
        ops = self.capability.get(channel, []) + self.capability.get("*", [])
        return op in ops or "*" in ops

    async def send(self, msg: dict) -> None:
        try:
            await self.ws.send(encode(msg, self.binary))
        except websockets.ConnectionClosed:
            pass

    def deliverable(self, message: dict) -> dict:
        """A message as this connection's protocol carries it (binary data: bytes over
        MessagePack, base64 over JSON)."""
        data, encoding = message.get("data"), message.get("encoding") or ""
        if self.binary and encoding.endswith("base64") and isinstance(data, str):
            rest = encoding[: -len("base64")].rstrip("/")
            message = {**message, "data": base64.b64decode(data)}
            message.pop("encoding")
            return {**message, "encoding": rest} if rest else message
        if not self.binary and isinstance(data, bytes | bytearray):
            return {**message, "data": base64.b64encode(data).decode(),
                    "encoding": "/".join(e for e in (encoding, "base64") if e)}
        return message


    def connected_message(self) -> dict:
        return {"action": CONNECTED, "connectionId": self.id, "connectionKey": self.id,
                "connectionDetails": {"clientId": self.token.get("clientId"), "connectionKey": self.id,
                                      "maxMessageSize": 65536, "maxIdleInterval": 15000,
                                      "connectionStateTtl": 120000}}


async def realtime(ws, state: State) -> None:
    query = parse_qs(urlparse(ws.request.path).query)
    binary = (query.get("format") or ["json"])[0] == "msgpack"
    token = state.tokens.get((query.get("accessToken") or query.get("access_token") or [""])[0])
    if token is None or token["expires"] < time.time() * 1000 or state.is_revoked(token):
        code = 40140 if token is None else 40141 if state.is_revoked(token) else 40142
        log("refused connection:", code)
        await ws.send(encode({"action": ERROR, "error": error(code, 401, "Token invalid, expired or revoked")},
                             binary))
        await ws.close()
        return
    conn = Connection(state, ws, token, binary)
    state.connections.add(conn)
    await conn.send(conn.connected_message())

    async def expiry_and_heartbeats() -> None:
        while True:
            left = conn.token["expires"] / 1000 - time.time()
            if left <= 0:
                log("token expired for", conn.token.get("clientId"))
                await conn.send({"action": DISCONNECTED, "error": error(40142, 401, "Token expired")})
                await ws.close()
                return
            await asyncio.sleep(min(left, 5.0))
            await conn.send({"action": HEARTBEAT})

    watchdog = asyncio.create_task(expiry_and_heartbeats())
    try:
        async for raw in ws:
            await handle(conn, decode(raw))
    except websockets.ConnectionClosed:
        pass
    finally:
        watchdog.cancel()
        state.connections.discard(conn)


async def handle(conn: Connection, msg: dict) -> None:
    action, channel = msg.get("action"), msg.get("channel")
    if action == HEARTBEAT:
        return
    if action == ATTACH:
        if not conn.capability.get(channel) and not conn.capability.get("*"):
            log("refused attach to", channel)
            await conn.send({"action": ERROR, "channel": channel,
                             "error": error(40160, 401, f"Channel denied access based on given capability ({channel})")})
            return
        conn.attached.add(channel)
        await conn.send({"action": ATTACHED, "channel": channel, "flags": 0})
    elif action == DETACH:
        conn.attached.discard(channel)
        await conn.send({"action": DETACHED, "channel": channel})
    elif action == MESSAGE:
        serial = msg.get("msgSerial")
        client_id = conn.token.get("clientId")
        messages = msg.get("messages") or []
        if not conn.may(channel, "publish"):
            log("refused publish on", channel)
            await conn.send({"action": NACK, "msgSerial": serial, "count": 1,
                             "error": error(40160, 401, f"Unable to perform channel operation (publish on {channel})")})
            return
        if any(m.get("clientId") not in (None, client_id) for m in messages):
            await conn.send({"action": NACK, "msgSerial": serial, "count": 1,
                             "error": error(40012, 400, "Mismatched clientId")})
            return
        now = int(time.time() * 1000)
        out = {"action": MESSAGE, "channel": channel, "id": f"{conn.id}:{serial}", "connectionId": conn.id,
               "timestamp": now,
               "messages": [{**m, "clientId": client_id, "connectionId": conn.id, "timestamp": now,
                             "id": f"{conn.id}:{serial}:{i}"} for i, m in enumerate(messages)]}
        await conn.send({"action": ACK, "msgSerial": serial, "count": 1})
        for other in list(conn.state.connections):
            if channel in other.attached and other.may(channel, "subscribe"):
                await other.send({**out, "messages": [other.deliverable(m) for m in out["messages"]]})
    elif action == AUTH:
        new = conn.state.tokens.get(((msg.get("auth") or {}).get("accessToken")) or "")
        if (new is None or new["clientId"] != conn.token.get("clientId") or new["expires"] < time.time() * 1000
                or conn.state.is_revoked(new)):
            await conn.send({"action": ERROR, "error": error(40140, 401, "Invalid token in AUTH")})
            return
        conn.token = new
        for ch in sorted(conn.attached):
            if not conn.capability.get(ch):
                conn.attached.discard(ch)
                await conn.send({"action": DETACHED, "channel": ch,
                                 "error": error(40160, 401, "capability withdrawn")})
        await conn.send(conn.connected_message())
    elif action == CLOSE:
        await conn.send({"action": CLOSED})
        await conn.ws.close()


def rest_server(state: State) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            parts = self.path.split("?")[0].strip("/").split("/")
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if len(parts) != 3 or parts[0] != "keys" or parts[2] not in ("requestToken", "revokeTokens"):
                status, answer = 404, {"error": error(40400, 404, "not found")}
            else:
                try:
                    if parts[2] == "requestToken":
                        status, answer = state.request_token(parts[1], json.loads(body))
                    else:
                        status, answer = state.revoke_tokens(parts[1], self.headers.get("Authorization", ""),
                                                             json.loads(body))
                except (ValueError, KeyError, TypeError):
                    status, answer = 400, {"error": error(40000, 400, f"malformed {parts[2]} request")}
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return ThreadingHTTPServer(("127.0.0.1", 0), Handler)


async def main(state_dir: Path, api_key: str) -> None:
    state = State(api_key, state_dir)
    state.loop = asyncio.get_running_loop()
    rest = rest_server(state)
    threading.Thread(target=rest.serve_forever, daemon=True).start()
    async with serve(lambda ws: realtime(ws, state), "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        tmp = state_dir / "ports.json.tmp"
        tmp.write_text(json.dumps({"rest": rest.server_address[1], "realtime": port}))
        tmp.replace(state_dir / "ports.json")
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2]))
