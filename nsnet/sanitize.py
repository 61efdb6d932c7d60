"""Terminal-safe text: everything nsnet prints that came from /proc goes through here.

Process names, command lines and unix socket paths are chosen by whoever started the
process, so they may carry escape sequences that clear the screen, set the window
title, hide text behind ``\\r`` or reorder it with bidi overrides. We never print
them raw; instead every dangerous character becomes a visible escape.

Escaping convention (what a user sees, and what ``tests/unit/test_sanitize.py`` decodes back):

=====================  =============================================  ==================
input                  meaning                                        shown as
=====================  =============================================  ==================
``\\``                  backslash                                      ``\\\\``
``\\n`` ``\\r`` ``\\t``   newline, carriage return, tab                  ``\\n`` ``\\r`` ``\\t``
U+0000-U+001F, U+007F  other C0 controls and DEL (ESC is ``\\x1b``)    ``\\xNN``
U+DC80-U+DCFF          a byte that was not valid UTF-8 (Python's      ``\\xNN`` (NN >= 80)
                       ``surrogateescape`` decoding)
U+0080-U+009F          C1 controls (e.g. U+009B, the 8-bit CSI)       ``\\u00NN``
format characters      category Cf: bidi embeddings/overrides         ``\\uNNNN`` or
                       U+202A-U+202E and isolates U+2066-U+2069,      ``\\UNNNNNNNN``
                       LRM/RLM, zero-width (non-)joiners, BOM,        (beyond the BMP)
                       soft hyphen, tag characters
U+2028, U+2029         line / paragraph separators                    ``\\u2028``, ``\\u2029``
other surrogates       not produced by decoding /proc, but possible   ``\\uNNNN``
=====================  =============================================  ==================

So ``\\xNN`` always stands for one *byte* (a C0 control is both a byte and a code
point; a byte >= 0x80 only appears this way when it was not valid UTF-8), while
``\\uNNNN`` stands for a *code point* that was decoded fine but must not reach the
terminal. That keeps U+0085 (valid UTF-8 ``c2 85``) apart from the raw byte ``0x85``.
Because the backslash itself is escaped, the output is unambiguous: two different
inputs never print the same (``tests/unit/test_sanitize.py`` decodes every output back).
Everything else, including printable non-ASCII (``é``, ``中``, emoji), combining marks,
private-use characters and unusual spaces, is kept as is.
"""
from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Iterator

__all__ = ["SafeText", "printable", "join_cmdline"]


class SafeText(str):
    """A string that is already terminal-safe (returned by :func:`printable`).

    ``printable`` returns a SafeText unchanged, so a value that was sanitised once
    (say a command line from :func:`join_cmdline`) can be handed to the table renderer,
    which sanitises every cell, without its backslashes being doubled a second time.
    """

    __slots__ = ()


_NAMED = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}

# Categories that can move the cursor, change the terminal's state, or reorder or
# hide text; everything else is left for the terminal to draw.
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def _escape(cp: int) -> str | None:
    """The visible escape for code point ``cp``, or None when it may be printed."""
    ch = chr(cp)
    named = _NAMED.get(ch)
    if named is not None:
        return named
    if cp < 0x20 or cp == 0x7F:
        return f"\\x{cp:02x}"
    if 0xDC80 <= cp <= 0xDCFF:
        return f"\\x{cp - 0xDC00:02x}"
    if unicodedata.category(ch) not in _ESCAPED_CATEGORIES:
        return None
    if cp <= 0xFFFF:
        return f"\\u{cp:04x}"
    return f"\\U{cp:08x}"


class _Table(dict):
    """A ``str.translate`` table filled lazily, so it covers all of Unicode.

    Precomputing every code point would cost ~1 s at import; instead each new code
    point is classified once on first sight. The cache is bounded because a hostile
    command line could be made of thousands of distinct characters.
    """

    _LIMIT = 8192

    def __missing__(self, cp: int) -> str | int:
        escaped = _escape(cp)
        # translate() treats None as "delete", so a kept character maps to itself.
        value: str | int = cp if escaped is None else escaped
        if len(self) < self._LIMIT:
            self[cp] = value
        return value


def _build_table() -> _Table:
    table = _Table()
    # The characters seen most often are classified up front, so the cache limit can
    # never push them out.
    for cp in [*range(0x00, 0xA0), 0x5C, *range(0xDC80, 0xDD00),
               *range(0x2000, 0x2070), 0xFEFF, 0x00AD, 0x061C]:
        table.__missing__(cp)
    return table


_TABLE = _build_table()


def printable(text: str) -> SafeText:
    """Return ``text`` with every control, format and undecodable character escaped.

    See the module docstring for the convention. Idempotent on :class:`SafeText`.
    """
    if isinstance(text, SafeText):
        return text
    # Fast path for the usual process name or path: isprintable() is False for every
    # character we escape (Cc, Cf, Cs, Zl, Zp are all "Other"/"Separator"), so only the
    # backslash needs an extra check.
    if text.isprintable() and "\\" not in text:
        return SafeText(text)
    return SafeText(text.translate(_TABLE))


# For str patterns \s is exactly str.isspace(): Unicode spaces included.
_QUOTE_TRIGGER = re.compile(r'[\s"]')


def _needs_quotes(arg: str) -> bool:
    return not arg or _QUOTE_TRIGGER.search(arg) is not None


def join_cmdline(argv: Iterable[str]) -> SafeText:
    """Show an argv as one unambiguous, terminal-safe line.

    Each argument is passed through :func:`printable`, then arguments are joined with
    single spaces. An argument is shown in double quotes when it is empty or contains
    a double quote or any whitespace (a space, but also e.g. U+00A0 or U+3000, which
    would otherwise look like an argument boundary); inside the quotes ``"`` is shown
    as ``\\"``. Control characters such as newline are already escapes (``\\n``) by
    then, so they never force quotes. ``printable`` never produces ``\\"``, and a
    literal backslash is ``\\\\``, so the line splits back into exactly one argv:
    ``["a b"]`` prints ``"a b"``, ``["a", "b"]`` prints ``a b``, ``[""]`` prints ``""``
    and ``[]`` prints an empty string. This is not shell syntax; do not paste it into
    a shell.
    """
    parts: list[str] = []
    for arg in argv:
        safe: str = printable(arg)
        if _needs_quotes(safe):
            safe = '"' + safe.replace('"', '\\"') + '"'
        parts.append(safe)
    return SafeText(" ".join(parts))


# ------------------------------------------------------------------------------ JSON

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _unsurrogate(value: object) -> object:
    if isinstance(value, str):
        return _LONE_SURROGATE.sub(lambda m: f"\\x{ord(m.group()) - 0xDC00:02x}"
                                   if 0xDC80 <= ord(m.group()) <= 0xDCFF
                                   else f"\\u{ord(m.group()):04x}", value)
    if isinstance(value, dict):
        return {_unsurrogate(k): _unsurrogate(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_unsurrogate(v) for v in value]
    return value


def json_text(doc: object) -> str:
    """``doc`` as one line of strictly valid JSON, pure ASCII: no NaN or infinity (ValueError:
    a bug, never printed), and no lone surrogate -- a byte of /proc that was not UTF-8 (kept
    by surrogateescape) becomes the text ``\\xNN``, as on a terminal, which any JSON parser
    accepts (a lone ``\\udcNN`` escape is rejected by strict ones)."""
    text = json.dumps(doc, ensure_ascii=True, allow_nan=False)
    if "\\ud" in text:      # rare: only then walk the document (a pair of an emoji also says \ud)
        text = json.dumps(_unsurrogate(doc), ensure_ascii=True, allow_nan=False)
    return text


class Stream:
    """A list of a document that is encoded item by item as it is produced, never held
    whole (json_chunks): the sockets of a busy node's snapshot are ~100k small documents,
    and a dict of them all, its JSON text and its bytes cost ~10x the answer's size."""
    __slots__ = ("items",)

    def __init__(self, items: Iterable[object]) -> None:
        self.items = items


def json_chunks(doc: object, batch: int = 512) -> Iterator[str]:
    """``doc`` as json_text gives it (the same text), in pieces: a dict is walked key by key,
    a Stream encoded ``batch`` items at a time; anything else is encoded whole."""
    if isinstance(doc, Stream):
        yield "["
        sep, buf = "", []
        for item in doc.items:
            buf.append(json_text(item))
            if len(buf) >= batch:
                yield sep + ", ".join(buf)
                sep, buf = ", ", []
        if buf:
            yield sep + ", ".join(buf)
        yield "]"
    elif isinstance(doc, dict):
        yield "{"
        for i, (key, value) in enumerate(doc.items()):
            yield (", " if i else "") + json_text(str(key)) + ": "
            yield from json_chunks(value, batch)
        yield "}"
    else:
        yield json_text(doc)
