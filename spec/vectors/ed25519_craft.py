"""Plain Ed25519 group arithmetic (RFC 8032 §5.1) for crafting edge-case signatures.

Used only by the vector generators, to make signatures that one verifier accepts and another
refuses (small-order keys and R, mixed-order points, non-canonical S). Slow and variable-time:
never use it to sign anything real.
"""

from __future__ import annotations

import hashlib

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = (-121665 * pow(121666, P - 2, P)) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)

Point = tuple[int, int, int, int]  # extended coordinates (X, Y, Z, T)
IDENTITY: Point = (0, 1, 1, 0)


def add(p: Point, q: Point) -> Point:
    a = (p[1] - p[0]) * (q[1] - q[0]) % P
    b = (p[1] + p[0]) * (q[1] + q[0]) % P
    c = 2 * p[3] * q[3] * D % P
    d = 2 * p[2] * q[2] % P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def neg(p: Point) -> Point:
    return ((-p[0]) % P, p[1], p[2], (-p[3]) % P)


def mul(k: int, p: Point) -> Point:
    q = IDENTITY
    while k > 0:
        if k & 1:
            q = add(q, p)
        p = add(p, p)
        k >>= 1
    return q


def recover_x(y: int, sign: int) -> int | None:
    if y >= P:
        return None
    x2 = (y * y - 1) * pow(D * y * y + 1, P - 2, P) % P
    if x2 == 0:
        return None if sign else 0
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P != 0:
        x = x * SQRT_M1 % P
    if (x * x - x2) % P != 0:
        return None
    if (x & 1) != sign:
        x = P - x
    return x


def decode(s: bytes) -> Point:
    y = int.from_bytes(s, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    x = recover_x(y % P if y >= P else y, sign)
    if x is None:
        raise ValueError("not a point")
    return (x, y % P, 1, x * (y % P) % P)


def encode(p: Point) -> bytes:
    zinv = pow(p[2], P - 2, P)
    x, y = p[0] * zinv % P, p[1] * zinv % P
    return int.to_bytes(y | ((x & 1) << 255), 32, "little")


G_Y = 4 * pow(5, P - 2, P) % P
G: Point = (recover_x(G_Y, 0), G_Y, 1, recover_x(G_Y, 0) * G_Y % P)  # type: ignore[operator]
#: A point of order 8 (its encoding is in libsodium's small-order list).
T8 = decode(bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"))


def h_scalar(r: bytes, a: bytes, m: bytes) -> int:
    return int.from_bytes(hashlib.sha512(r + a + m).digest(), "little") % L


def secret_scalar(seed: bytes) -> tuple[int, bytes]:
    """(a, prefix) of RFC 8032 key generation."""
    h = hashlib.sha512(seed).digest()
    a = int.from_bytes(h[:32], "little")
    a &= (1 << 254) - 8
    a |= 1 << 254
    return a, h[32:]


def sign_with(a: int, a_bytes: bytes, m: bytes, r: int, r_point: Point) -> bytes:
    """A signature (R, S) with a chosen nonce point: S = r + h·a mod L."""
    rb = encode(r_point)
    s = (r + h_scalar(rb, a_bytes, m) * a) % L
    return rb + s.to_bytes(32, "little")
