#!/usr/bin/env python3
"""Would a faster JSON encoder pay? The sockets view's cost split: building its documents,
encoding them with the standard library's C encoder (what nsnet uses: ASCII, `, ` and `: `),
and -- when it can be imported -- with orjson (PyPI), the same documents.

    .venv/bin/python bench/bench_json.py                  # on the node that is up (synthnode.py)
    .venv/bin/python bench/bench_json.py --orjson-path /tmp/venv/lib/python3.11/site-packages

One snapshot (`auto`), then each step timed 5 times (best of 5, wall): the documents of every
socket (views.socket_doc, in the view's order), `json.dumps` of them as nsnet writes them,
`orjson.dumps` of them, and orjson's output made ASCII as JSON must be for nsnet (non-ASCII
escaped as \\uXXXX by a regular expression: orjson has no ensure_ascii; skipped when the
bytes are ASCII already). Prints the times and
the share of the whole `nsnet sockets --json` work each is. Run as root.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

NON_ASCII = re.compile(r"[^\x00-\x7f]")


def ascii_escape(text: str) -> str:
    def one(m: re.Match) -> str:
        code = ord(m.group())
        if code < 0x10000:
            return f"\\u{code:04x}"
        code -= 0x10000
        return f"\\u{0xd800 | code >> 10:04x}\\u{0xdc00 | code & 0x3ff:04x}"
    return NON_ASCII.sub(one, text)


def best(f, n: int = 5) -> tuple[float, object]:
    times, result = [], None
    for _ in range(n):
        t0 = time.perf_counter()
        result = f()
        times.append(time.perf_counter() - t0)
    return min(times), result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--orjson-path", help="a site-packages holding orjson (kept optional)")
    a = ap.parse_args()
    if a.orjson_path:
        sys.path.insert(0, a.orjson_path)
    from nsnet import views
    from nsnet.options import SnapshotOptions
    from nsnet.snapshot import take_snapshot

    t_snap, snap = best(lambda: take_snapshot(SnapshotOptions(source="auto")), 1)
    t_docs, docs = best(lambda: [views.socket_doc(s, snap) for s in views.filtered_sockets(snap)])
    t_json, text = best(lambda: json.dumps(docs))
    print(f"{len(docs)} sockets: snapshot {t_snap:.3f} s; their documents {t_docs:.3f} s; "
          f"json.dumps (C, ASCII) {t_json:.3f} s, {len(text) / 1e6:.1f} MB")
    try:
        import orjson
    except ImportError:
        print("orjson: not importable (--orjson-path)")
        return 0
    t_or, raw = best(lambda: orjson.dumps(docs))
    # a fast path: output already ASCII (most nodes' names are) needs no escaping pass
    t_ascii, _ = best(lambda: raw if raw.isascii() else ascii_escape(raw.decode()))
    t_escape, _ = best(lambda: ascii_escape(raw.decode()))
    same = json.loads(raw) == json.loads(text)
    whole = t_snap + t_docs + t_json
    print(f"orjson {t_or:.3f} s (+{t_ascii:.3f} s to check it is ASCII; escaping it would "
          f"cost {t_escape:.3f} s): saves "
          f"{t_json - t_or - t_ascii:.3f} s of {whole:.3f} s "
          f"({(t_json - t_or - t_ascii) / whole:.0%}); the same JSON values: {same}; the same "
          f"text: {raw.decode() == text} (orjson writes no spaces after , and :)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
