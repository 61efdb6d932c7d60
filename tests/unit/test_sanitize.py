"""nsnet.sanitize: hostile text from /proc must never reach the terminal raw, and the
escaped form must stay unambiguous (we decode every output back to its input)."""
from __future__ import annotations

import random
import re
import subprocess
import time
import unicodedata

import pytest

from nsnet import sanitize
from nsnet.sanitize import SafeText, join_cmdline, printable

# Categories the terminal may act on instead of drawing: none may survive printable().
DANGEROUS = {"Cc", "Cf", "Cs", "Zl", "Zp"}


def unescape(shown: str) -> str:
    """Invert the documented convention; fails loudly on anything it does not define."""
    out = []
    i = 0
    while i < len(shown):
        ch = shown[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        kind = shown[i + 1]
        if kind in "\\nrt":
            out.append({"\\": "\\", "n": "\n", "r": "\r", "t": "\t"}[kind])
            i += 2
        elif kind == "x":
            byte = int(shown[i + 2:i + 4], 16)
            # A byte >= 0x80 is one that was not valid UTF-8: surrogateescape form.
            out.append(chr(byte) if byte < 0x80 else chr(0xDC00 + byte))
            i += 4
        elif kind == "u":
            out.append(chr(int(shown[i + 2:i + 6], 16)))
            i += 6
        elif kind == "U":
            out.append(chr(int(shown[i + 2:i + 10], 16)))
            i += 10
        else:
            raise AssertionError(f"undefined escape \\{kind} in {shown!r}")
    return "".join(out)


def split_cmdline(shown: str) -> list[str]:
    """Invert join_cmdline's documented quoting, then printable()."""
    args: list[str] = []
    i = 0
    while i < len(shown):
        if shown[i] == '"':
            j = i + 1
            buf = []
            while shown[j] != '"':
                if shown.startswith('\\"', j):
                    buf.append('"')
                    j += 2
                elif shown[j] == "\\":
                    buf.append(shown[j:j + 2])  # some other escape: keep for unescape()
                    j += 2
                else:
                    buf.append(shown[j])
                    j += 1
            args.append(unescape("".join(buf)))
            i = j + 1
        else:
            j = shown.find(" ", i)
            j = len(shown) if j < 0 else j
            token = shown[i:j]
            assert '"' not in token and token, shown
            args.append(unescape(token))
            i = j
        if i < len(shown):
            assert shown[i] == " ", shown
            i += 1
            assert i < len(shown), "trailing separator"
    return args


def assert_terminal_safe(shown: str) -> None:
    bad = [c for c in shown if unicodedata.category(c) in DANGEROUS]
    assert not bad, f"raw {bad!r} in {shown!r}"


# ------------------------------------------------------------------- hostile strings

@pytest.mark.parametrize("raw, shown", [
    ("\x1b[2J\x1b[H", "\\x1b[2J\\x1b[H"),                  # clear screen, cursor home
    ("\x1b]0;pwned\x07", "\\x1b]0;pwned\\x07"),            # set window title (OSC ... BEL)
    ("\x1b]2;t\x1b\\", "\\x1b]2;t\\x1b\\\\"),               # OSC ... ST
    ("\x9b2J", "\\u009b2J"),                                 # 8-bit CSI (C1)
    ("\x9d0;t\x9c", "\\u009d0;t\\u009c"),                    # 8-bit OSC ... ST
    ("good\rEVIL", "good\\rEVIL"),                           # \r overwrites the line
    ("a\nfake row", "a\\nfake row"),                         # newline injection
    ("tab\there", "tab\\there"),
    ("bell\x07del\x7fnul\x00bs\x08", "bell\\x07del\\x7fnul\\x00bs\\x08"),
    ("\u202eexe.txt", "\\u202eexe.txt"),                     # RIGHT-TO-LEFT OVERRIDE
    ("a\u2066b\u2069c\u202ad\u202ce", "a\\u2066b\\u2069c\\u202ad\\u202ce"),  # isolates
    ("zero\u200bwidth\u200d\ufeff", "zero\\u200bwidth\\u200d\\ufeff"),
    ("line\u2028para\u2029", "line\\u2028para\\u2029"),
    ("tag\U000e0041", "tag\\U000e0041"),                     # invisible tag character
    ("back\\slash", "back\\\\slash"),
])
def test_hostile_strings_are_escaped(raw: str, shown: str) -> None:
    assert printable(raw) == shown
    assert_terminal_safe(printable(raw))


def test_invalid_utf8_bytes_shown_as_hex() -> None:
    raw = b"name\xff\xfe\xc3(\x80".decode("utf-8", "surrogateescape")
    assert printable(raw) == "name\\xff\\xfe\\xc3(\\x80"


def test_raw_byte_and_c1_character_differ() -> None:
    # Byte 0x85 that was not UTF-8 vs U+0085 (NEL) decoded from c2 85.
    raw_byte = b"\x85".decode("utf-8", "surrogateescape")
    c1_char = b"\xc2\x85".decode("utf-8")
    assert printable(raw_byte) == "\\x85"
    assert printable(c1_char) == "\\u0085"


@pytest.mark.parametrize("text", ["é", "中文", "naïve café", "🙂", "e\u0301", "Ελληνικά",
                                  "a\u00a0b", "\ue000", "/run/netns/ns-1", "-", ""])
def test_printable_text_stays(text: str) -> None:
    assert printable(text) == text


def test_ambiguous_pairs_print_differently() -> None:
    pairs = [("\\n", "\n"), ("\\x1b", "\x1b"), ("\\\\", "\\"), ("\\u202e", "\u202e"),
             ("\x85", "\udc85"), ("\\xff", "\udcff"), ("\\U000e0041", "\U000e0041")]
    for a, b in pairs:
        assert printable(a) != printable(b), (a, b)


# ---------------------------------------------------------------- unambiguity (fuzz)

# Characters chosen to collide if the convention were sloppy: escape letters, hex
# digits, the backslash, and one of each escaped kind.
_ALPHABET = list("\\xuUnrt0123456789abcdef\"' ") + [
    "\n", "\r", "\t", "\x00", "\x1b", "\x7f", "\x85", "\x9b", "\udc85", "\udcff", "\ud800",
    "\u202e", "\u2066", "\u200d", "\u2028", "\U000e0041", "é", "中", "\u00a0", "\u3000"]


def test_fuzz_round_trip_and_safety() -> None:
    rng = random.Random(20240601)
    seen: dict[str, str] = {}
    for _ in range(20000):
        text = "".join(rng.choice(_ALPHABET) for _ in range(rng.randint(0, 12)))
        shown = printable(text)
        assert_terminal_safe(shown)
        assert unescape(shown) == text
        assert seen.setdefault(shown, text) == text


def test_every_code_point_is_safe_and_reversible() -> None:
    # All of Unicode once, in chunks: any character we forgot to classify shows up here.
    for start in range(0, 0x110000, 0x1000):
        text = "".join(chr(cp) for cp in range(start, start + 0x1000))
        shown = printable(text)
        assert_terminal_safe(shown)
        assert unescape(shown) == text


def test_translate_cache_is_bounded() -> None:
    # A hostile cmdline of many distinct characters must not grow the cache forever.
    text = "\x1b" + "".join(chr(cp) for cp in range(0x4E00, 0x4E00 + 30000))
    assert printable(text).endswith(text[-10:])
    assert len(sanitize._TABLE) <= sanitize._Table._LIMIT


def test_safe_text_is_not_escaped_twice() -> None:
    once = printable("a\\b\n")
    assert isinstance(once, SafeText)
    assert printable(once) == once == "a\\\\b\\n"
    # A plain str with the same characters is new input and is escaped again.
    assert printable(str(once)) == "a\\\\\\\\b\\\\n"


def test_fast_path_is_fast() -> None:
    # Not a benchmark: a guard against losing the fast path (it runs on every row).
    names = [f"/usr/bin/worker-{i} --port {i}" for i in range(50000)]
    t0 = time.perf_counter()
    for n in names:
        printable(n)
    assert time.perf_counter() - t0 < 1.0


# ---------------------------------------------------------------------- join_cmdline

@pytest.mark.parametrize("argv, shown", [
    ([], ""),
    ([""], '""'),
    (["a b"], '"a b"'),
    (["a", "b"], "a b"),
    (["sh", "-c", 'echo "hi"; exit'], 'sh -c "echo \\"hi\\"; exit"'),
    (['say"hi'], '"say\\"hi"'),
    (["x\ny"], "x\\ny"),                      # newline escaped, no quotes needed
    (["a\u00a0b"], '"a\u00a0b"'),             # looks like a space: quoted
    (["a\u3000b", ""], '"a\u3000b" ""'),
    (["/pause"], "/pause"),
])
def test_join_cmdline(argv: list[str], shown: str) -> None:
    assert join_cmdline(argv) == shown
    assert split_cmdline(shown) == argv


def test_join_cmdline_fuzz_is_unambiguous() -> None:
    rng = random.Random(7)
    seen: dict[str, list[str]] = {}
    for _ in range(20000):
        argv = ["".join(rng.choice(_ALPHABET) for _ in range(rng.randint(0, 5)))
                for _ in range(rng.randint(0, 4))]
        shown = join_cmdline(argv)
        assert_terminal_safe(shown)
        assert split_cmdline(shown) == argv
        assert seen.setdefault(shown, argv) == argv


def test_real_process_with_hostile_argv() -> None:
    """A live process whose argv[0] sets the window title and holds invalid UTF-8."""
    argv0 = b"\x1b]0;pwned\x07\xff\xfe\x1b[2J"
    proc = subprocess.Popen([argv0, b"30"], executable="/bin/sleep")
    try:
        deadline = time.monotonic() + 5
        while True:
            with open(f"/proc/{proc.pid}/cmdline", "rb") as f:
                raw = f.read()
            if raw.startswith(argv0) or time.monotonic() > deadline:
                break
            time.sleep(0.01)  # between fork and exec the cmdline is still ours
        argv = [a.decode("utf-8", "surrogateescape") for a in raw.split(b"\0")[:-1]]
        shown = join_cmdline(argv)
        assert shown == "\\x1b]0;pwned\\x07\\xff\\xfe\\x1b[2J 30"
        assert_terminal_safe(shown)
        assert split_cmdline(shown) == argv
        # And the escaped text really is harmless bytes for a terminal.
        assert re.fullmatch(rb"[\x20-\x7e]*", shown.encode())
    finally:
        proc.kill()
        proc.wait()


def test_json_is_strict_utf8_and_finite():
    import json

    import pytest

    from nsnet.sanitize import json_text
    name = b"evil\xff\xfe-\xc3\xa9".decode("utf-8", "surrogateescape")   # as /proc gives it
    text = json_text({"comm": name, "emoji": "\U0001f600", "ok": [1, 2.5]})
    assert text.isascii()
    back = json.loads(text)
    assert back["comm"] == "evil\\xff\\xfe-é" and back["emoji"] == "\U0001f600"
    json.dumps(back).encode("utf-8")          # no lone surrogate left anywhere
    back["comm"].encode("utf-8")
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError):
            json_text({"since": bad})


def test_a_streamed_document_is_the_same_text_as_a_whole_one() -> None:
    """json_chunks writes a Stream item by item; the text is json_text's, byte for byte,
    hostile values included (a lone surrogate from a non-UTF-8 /proc byte, quotes, NUL)."""
    from nsnet.agent.serve import encode
    from nsnet.sanitize import Stream, json_chunks, json_text
    items = [{"name": f"s{i}", "addr": "caf\udce9\n\"x\"\0", "n": i, "f": 0.5}
             for i in range(1300)]
    whole = {"schema": "nsnet/1", "sockets": items, "empty": [], "nested": {"a": [1, 2]},
             "stats": {"x": 1}}
    streamed = {**whole, "sockets": Stream(iter(items)), "empty": Stream(iter(()))}
    text = "".join(json_chunks(streamed, batch=100))
    assert text == json_text(whole)
    assert "\\udc" not in text and "caf\\\\xe9" in text
    streamed = {**whole, "sockets": Stream(iter(items)), "empty": Stream(iter(()))}
    encoded = encode(streamed, piece_size=4096)
    assert len(encoded.pieces) >= 3     # never one piece of the whole answer
    assert b"".join(encoded.pieces) == (json_text(whole) + "\n").encode()
    assert encoded.length == len(b"".join(encoded.pieces))
