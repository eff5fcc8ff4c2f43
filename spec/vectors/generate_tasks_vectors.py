"""Regenerate spec/vectors/tasks-v1.json (task hashes and canonical JSON, spec/tasks.md).

Run: .venv/bin/python spec/vectors/generate_tasks_vectors.py > spec/vectors/tasks-v1.json
Each case gives ``kwargs_json`` (JSON text: parse it, then canonicalize); ``canonical`` is the
canonical JSON of ``{"function_id", "kwargs"}`` and ``task_hash`` its hash. ``invalid`` cases
must be refused (their JSON text uses Python's NaN/Infinity extensions where needed: a checker
reads those two tokens as the non-finite numbers they name).
The tests check every case and invalid case against the implementation (tests/protocol) and
against kachery.js (js/test/vectors.test.js).
"""

from __future__ import annotations

import json

from kachery_node.protocol.task_messages import canonical_json, task_hash

CASES = [
    ("empty kwargs", "echo.1", "{}"),
    ("simple", "echo_immediate.2", '{"a": "hello world"}'),
    ("key order: byte/code point order differs from UTF-16 order for astral keys", "k.1",
     '{"\\uffffk": 1, "\\ud83d\\ude00k": 2, "b": 3, "B": 4, "a": 5, "é": 6, "": 7}'),
    ("nested objects sorted at every level", "nested.1",
     '{"z": {"y": {"b": [1, {"d": 1, "c": 2}], "a": null}}, "a": [true, false]}'),
    ("integral floats are integers", "num.1", '{"x": 1.0, "y": -2.0, "z": 0.0, "w": -0.0, "v": 100.0}'),
    ("floats: shortest round trip, ECMAScript exponents", "num.2",
     '{"a": 0.1, "b": 1e-7, "c": 1.5e-7, "g": 0.000001, "h": 1e-6, "i": 0.3333333333333333,'
     ' "j": -5e-324, "l": 2.5e-10, "m": 100.25, "n": 4503599627370495.5, "o": 1e15, "p": 1.5e15}'),
    ("integers", "num.3", '{"max": 9007199254740991, "min": -9007199254740991, "zero": 0, "n": -17}'),
    ("2^53-1 written as a float is the integer 2^53-1", "num.4",
     '{"x": 9007199254740991.0, "y": -9.007199254740991e15}'),
    ("strings: mandatory escapes only, non-ASCII raw", "str.1",
     '{"s": "quote \\" backslash \\\\ slash / tab \\t nl \\n cr \\r bs \\b ff \\f nul \\u0000 us \\u001f'
     ' del \\u007f ls \\u2028 é ✓ 😀 中文"}'),
    ("arrays of arrays (numpy arrays become these)", "arr.1", '{"m": [[1, 2.5], [3, -0.5]], "e": []}'),
    ("function ID with all allowed characters", "lab@v2.unit_metrics-3.X", '{"unit_ids": [1, 2, 3]}'),
]

INVALID = [
    ("NaN", "num.x", '{"x": NaN}'),
    ("Infinity", "num.x", '{"x": -Infinity}'),
    ("integer beyond 2^53-1", "num.x", '{"x": 9007199254740992}'),
    ("negative integer beyond -(2^53-1)", "num.x", '{"x": -9007199254740992}'),
    # A JavaScript reader holds 9007199254740992 and 9007199254740992.0 as the same double, so
    # the rule is on the value: any number whose magnitude is above 2^53-1 is refused.
    ("integral float beyond 2^53-1 (the same double as the integer 2^53)", "num.x",
     '{"x": 9007199254740992.0}'),
    ("float 1e21 (magnitude beyond 2^53-1)", "num.x", '{"x": 1e21}'),
    ("largest double (magnitude beyond 2^53-1)", "num.x", '{"x": [-1.7976931348623157e308]}'),
    ("lone surrogate in a string", "str.x", '{"s": "a\\ud800b"}'),
    ("lone surrogate in a key", "str.x", '{"\\udc00": 1}'),
    ("nested deeper than 100 levels", "deep.x", '{"x": ' + "[" * 100 + "]" * 100 + "}"),
    ("kwargs not an object", "num.x", "[1, 2]"),
    ("function ID with a space", "bad id", "{}"),
    ("function ID with an empty segment", "a..b", "{}"),
]


def main() -> None:
    cases = []
    for description, fid, text in CASES:
        kwargs = json.loads(text)
        cases.append({
            "description": description,
            "function_id": fid,
            "kwargs_json": text,
            "canonical": canonical_json({"function_id": fid, "kwargs": kwargs}).decode(),
            "task_hash": task_hash(fid, kwargs),
        })
    invalid = [{"description": d, "function_id": f, "kwargs_json": t} for d, f, t in INVALID]
    print(json.dumps({"version": "kachery-task-v1", "hash_prefix": "kachery-task-v1\n",
                      "cases": cases, "invalid": invalid}, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
