"""Tables and headings for nsnet's human output.

Two regimes, chosen by the caller from :func:`terminal_width`:

* ``width=None`` (stdout is not a terminal): every cell is printed in full, columns are
  as wide as their widest cell. Piped output must keep the whole command line for
  ``grep``; the consumer's screen is not ours to fit.
* ``width=N`` (a terminal N cells wide): no line is longer than N display cells, so the
  terminal never wraps a row into the next one. What an operator reads a row for --
  endpoints, ports, states, names -- is never cut. To get there, in order:

  1. columns with a short form (``Column.short``: a list shown as "first +count") use it;
  2. cuttable columns (``Column.shrink``: command lines) are narrowed, the widest first:
     all of them are capped at one common width, as high as still fits, never below their
     ``min_width``; cells that no longer fit end in ``…``;
  3. if that is not enough, columns with a ``priority`` are hidden, lowest priority
     first (rightmost first on ties), and step 2 is redone with the room they freed;
     columns without a priority are never hidden, and the caller is told which were
     (``on_hidden``) so that it can say so;
  4. wrapping columns (``Column.wrap``: long endpoints, names) are narrowed like step 2,
     but a cell that does not fit continues on the next line, whole -- before step 3 down
     to the width their ordinary cells need (a lone unix path among addresses wraps rather
     than a column going), after it as far as needed;
  5. if it still does not fit (a tiny terminal), each line is cut at N cells and ends
     in ``…``.

Every cell and title goes through :func:`nsnet.sanitize.printable`, so nothing read
from /proc reaches the terminal raw; after that the only escape sequences in the output
are our own SGR colour codes, and only when ``color=True``. Widths are measured in
display cells: East Asian wide and fullwidth characters count 2, combining marks 0.
``…`` counts 1 (it is "ambiguous" width: a terminal set to draw ambiguous characters
wide will show such lines one cell longer).
"""
from __future__ import annotations

import functools
import gc
import operator
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import field
from typing import Any, Literal

from .records import record
from .sanitize import SafeText, printable
from .terminal import _fileno, _isatty, forced_columns, terminal_width, use_color  # noqa: F401

__all__ = [
    "Column", "render_table", "display_width", "truncate", "paint", "heading",
    "terminal_width", "use_color", "forced_columns", "STYLES", "select_columns",
    "unknown_columns", "wrap_text",
]

ELLIPSIS = "…"
SEPARATOR = "  "      # between columns

# Style names accepted wherever a style is given ("bold", "dim red", ...).
STYLES: dict[str, int] = {
    "bold": 1, "dim": 2, "italic": 3, "underline": 4, "reverse": 7,
    "red": 31, "green": 32, "yellow": 33, "blue": 34, "magenta": 35, "cyan": 36,
}

StyleFn = Callable[[Any], str | None]


@record
class Column:
    """One column of a table.

    ``key`` is a mapping key or attribute name looked up on each row, or a callable
    taking the row. The value is shown with ``str()``; None shows as an empty cell.
    ``style``, if given, returns a style for the cell from the row (e.g. a colour per
    TCP state), or None. ``short`` gives the cell's compact form, used on a terminal too
    narrow for the full one; ``name`` is the column's id for a column choice (``-o``),
    by default the title with dashes for blanks.
    """

    title: str
    key: str | Callable[[Any], object]
    align: Literal["left", "right"] = "left"
    min_width: int = 1
    shrink: bool = False
    priority: int | None = None
    style: StyleFn | None = None
    wrap: bool = False
    short: Callable[[Any], object] | None = None
    name: str = ""

    def __post_init__(self) -> None:
        if self.align not in ("left", "right"):
            raise ValueError(f"align must be 'left' or 'right', not {self.align!r}")
        if self.shrink and self.wrap:
            raise ValueError(f"column {self.title!r}: cut (shrink) or wrap, not both")
        if not self.name:
            self.name = self.title.upper().replace(" ", "-")

    def value(self, row: Any) -> object:
        """This column's value in ``row`` (mapping key, attribute, or the callable's)."""
        return _getter(self, row)(row)


def select_columns(columns: Sequence[Column], wanted: Sequence[str]) -> list[Column]:
    """The columns named in ``wanted`` (ids, any case), in that order; those a table does
    not have are skipped (a command's tables differ). The caller checks the names first
    against every column the command has (:func:`unknown_columns`)."""
    by_name = {c.name: c for c in columns}
    return [by_name[w.upper()] for w in wanted if w.upper() in by_name]


def unknown_columns(wanted: Sequence[str], known: Iterable[str]) -> list[str]:
    """The names in ``wanted`` that are none of ``known`` (case-insensitive)."""
    names = {k.upper() for k in known}
    return [w for w in wanted if w.upper() not in names]


# ---------------------------------------------------------------------------- widths

@functools.lru_cache(maxsize=4096)
def _char_width(ch: str) -> int:
    if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me"):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def display_width(text: str) -> int:
    """Terminal cells ``text`` occupies (wide = 2, combining = 0; sanitised text only)."""
    if text.isascii():
        return len(text)
    return sum(_char_width(ch) for ch in text)


def truncate(text: str, width: int) -> str:
    """``text`` cut to at most ``width`` cells, ending in ``…`` when anything was cut."""
    if display_width(text) <= width:
        return text
    if width <= 0:
        return ""
    return _take(text, width - 1) + ELLIPSIS


def _take(text: str, cells: int) -> str:
    """The longest prefix of ``text`` that fits in ``cells``."""
    if text.isascii():
        return text[:max(cells, 0)]
    used = 0
    for end, ch in enumerate(text):
        used += _char_width(ch)
        if used > cells:
            return text[:end]
    return text


# ---------------------------------------------------------------------------- colour

@functools.lru_cache(maxsize=64)
def _sgr(style: str) -> str:
    try:
        codes = [str(STYLES[name]) for name in style.split()]
    except KeyError as e:
        raise ValueError(f"unknown style {e.args[0]!r}; known: {', '.join(STYLES)}") from None
    return ";".join(codes)


def paint(text: str, style: str | None, color: bool) -> str:
    """Wrap ``text`` in the SGR codes of ``style`` ("bold", "dim red"...) when ``color``."""
    if not color or not style or not text:
        return text
    codes = _sgr(style)
    return f"\x1b[{codes}m{text}\x1b[0m" if codes else text


def heading(text: str, color: bool, *, width: int | None = None) -> str:
    """A section heading: the sanitised text, then a line of ``=`` as long as it.

    The underline keeps sections visible in piped (colourless) output; with colour the
    text is bold as well. No trailing newline. ``width`` (a terminal's) truncates.
    """
    safe: str = printable(text)
    if width is not None:
        safe = truncate(safe, max(width, 1))
    return paint(safe, "bold", color) + "\n" + "=" * display_width(safe)


# ---------------------------------------------------------------------------- layout

def _shrink(natural: list[int], mins: list[int], shrinkable: list[int], budget: int) -> list[int]:
    """Widths after capping the shrinkable columns at one level so they fit ``budget``."""
    widths = list(natural)
    if not shrinkable:
        return widths
    floor = sum(mins[i] for i in shrinkable)
    if floor >= budget:
        for i in shrinkable:
            widths[i] = mins[i]
        return widths

    def used(cap: int) -> int:
        return sum(max(mins[i], min(natural[i], cap)) for i in shrinkable)

    # Largest common cap that fits: the widest columns give up room first, and a narrow
    # column is only touched once every wider one is down to its size.
    lo, hi = 0, max(natural[i] for i in shrinkable)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if used(mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    for i in shrinkable:
        widths[i] = max(mins[i], min(natural[i], lo))
    # The cap moves in steps of one cell per capped column; hand the remainder back to
    # the naturally widest of them so no cell of the terminal is wasted.
    spare = budget - used(lo)
    capped = sorted((i for i in shrinkable if widths[i] == lo and natural[i] > lo),
                    key=lambda i: (-natural[i], i))
    for i in capped[:spare]:
        widths[i] += 1
    return widths


@record
class _Fit:
    visible: list[int]          # column indices shown
    widths: list[int]           # per column (all of them; only the visible matter)
    compact: bool = False       # the short forms are used
    hidden: list[int] = field(default_factory=list)    # hidden for want of room


def _span(visible: list[int], widths: list[int], sep_width: int) -> int:
    return sum(widths[i] for i in visible) + sep_width * (len(visible) - 1)


def _narrow(columns: Sequence[Column], widths: list[int], mins: list[int], visible: list[int],
            width: int, sep_width: int, kind: str) -> list[int]:
    """``widths`` with the visible columns of ``kind`` (shrink or wrap) capped to fit."""
    chosen = [i for i in visible if getattr(columns[i], kind)]
    fixed = sum(widths[i] for i in visible if i not in chosen)
    return _shrink(widths, mins, chosen, width - fixed - sep_width * (len(visible) - 1))


def _fit(columns: Sequence[Column], natural: list[int], short: list[int | None],
         typical: list[int], width: int, sep_width: int) -> _Fit:
    """Which columns show and how wide, for a terminal ``width`` cells wide (the steps of
    the module docstring). typical: each column's width that most of its cells fit in."""
    visible = list(range(len(columns)))
    if _span(visible, natural, sep_width) <= width:
        return _Fit(visible, list(natural))
    base = [n if s is None else s for n, s in zip(natural, short, strict=True)]
    mins = [min(max(c.min_width, 1), n) for c, n in zip(columns, base, strict=True)]
    if _span(visible, _narrow(columns, base, mins, visible, width, sep_width, "shrink"),
             sep_width) > width:
        # a few long cells (one unix path among addresses) wrap before a column is hidden
        base = [min(b, t) if c.wrap and c.short is None else b
                for c, b, t in zip(columns, base, typical, strict=True)]
    hidden: list[int] = []
    while True:
        widths = _narrow(columns, base, mins, visible, width, sep_width, "shrink")
        hideable = [i for i in visible if columns[i].priority is not None]
        if _span(visible, widths, sep_width) <= width or not hideable or len(visible) == 1:
            break
        victim = min(hideable, key=lambda i: (columns[i].priority, -i))
        visible.remove(victim)
        hidden.append(victim)
    if _span(visible, widths, sep_width) > width:
        widths = _narrow(columns, widths, mins, visible, width, sep_width, "wrap")
    return _Fit(visible, widths, any(s is not None for s in short), hidden)


def wrap_text(text: str, width: int) -> list[str]:
    """``text`` in pieces of at most ``width`` cells (a wide character alone may exceed a
    1-cell width), broken after a separator (``: / , . -`` or a blank) when one is in the
    second half of a piece: an endpoint or a name continues on the next line, whole."""
    width = max(width, 1)
    pieces = []
    while display_width(text) > width:
        head = _take(text, width) or text[0]
        cut = max(head.rfind(sep) for sep in ":/,.- ")
        if cut + 1 >= (len(head) + 1) // 2 and cut + 1 < len(head):
            head = head[:cut + 1]
        text = text[len(head):]
        pieces.append(head.rstrip(" ") or head)   # a blank at the break is not shown
        text = text.lstrip(" ") or text
    pieces.append(text)
    return pieces


# A line is built as segments so that clipping and colour never cut into each other:
# (text, display width, style or None, is_padding).
_Segment = tuple[str, int, str | None, bool]


def _clip(segments: list[_Segment], width: int) -> list[_Segment]:
    if sum(s[1] for s in segments) <= width:
        return segments
    out: list[_Segment] = []
    room = width - 1  # keep a cell for the ellipsis
    for text, w, style, pad in segments:
        if w <= room:
            out.append((text, w, style, pad))
            room -= w
            continue
        if room > 0:
            cut = _take(text, room)
            out.append((cut, display_width(cut), style, pad))
        break
    out.append((ELLIPSIS, 1, None, False))
    return out


def _rstrip(segments: list[_Segment]) -> list[_Segment]:
    # Padding after the last real text goes: no trailing blanks, and a line is never
    # clipped (and marked "…") for blanks alone.
    end = len(segments)
    while end and segments[end - 1][3]:
        end -= 1
    return segments[:end]


def _emit(segments: list[_Segment], color: bool) -> str:
    return "".join(paint(text, style, color) if style else text
                   for text, _, style, _ in segments)


def _getter(column: Column, sample: Any) -> Callable[[Any], object]:
    # Resolved once per table rather than per cell: the rows of one table are all
    # mappings or all objects.
    if callable(column.key):
        return column.key
    if isinstance(sample, Mapping):
        return operator.itemgetter(column.key)
    return operator.attrgetter(column.key)


def _cell_text(value: object) -> SafeText:
    if type(value) is SafeText:
        return value
    if value is None:
        return SafeText("")
    return printable(value if isinstance(value, str) else str(value))


def _combine(*styles: str | None) -> str | None:
    return " ".join(s for s in styles if s) or None


def render_table(
    columns: Sequence[Column],
    rows: Iterable[Any],
    *,
    width: int | None,
    color: bool,
    row_style: StyleFn | None = None,
    header: bool = True,
    on_hidden: Callable[[list[str]], None] | None = None,
) -> str:
    """Render ``rows`` under ``columns`` as text lines joined by newlines (none at the end).

    ``width=None``: full width, nothing truncated (output is not a terminal).
    ``width=N``: every line is at most N display cells (see the module docstring; N < 1
    is treated as 1). ``color``: header bold, ``row_style(row)`` and ``Column.style(row)``
    applied as SGR codes (the cell's style after the row's); with ``color=False`` the
    output contains no escape sequence at all. Rows are mappings (``key`` is looked up
    with ``row[key]``) or objects (``getattr``), not a mix of both in one table.
    ``on_hidden`` is called with the titles of the columns a terminal was too narrow for.
    """
    # Rendering creates no reference cycles, yet at ~100k rows the collector's passes
    # over every live row object took half of the time; refcounting frees all we make.
    paused = gc.isenabled()
    gc.disable()
    try:
        return _render(list(columns), list(rows), width, color, row_style, header, on_hidden)
    finally:
        if paused:
            gc.enable()


_Body = list[tuple[list[SafeText], list[int], "list[str | None] | None"]]
_Short = dict[int, tuple[list[SafeText], list[int]]]    # column -> every row's short cell


def _measure(cols: list[Column], rows: list[Any], titles: Sequence[str], color: bool,
             row_style: StyleFn | None, header: bool) -> tuple[_Body, list[int]]:
    """Every cell's text, width and style, and each column's natural width."""
    getters = [_getter(c, rows[0] if rows else None) for c in cols]
    natural = [display_width(t) for t in titles] if header else [0] * len(cols)
    body: _Body = []
    styled = color and (row_style is not None or any(c.style for c in cols))
    for row in rows:
        cells = [_cell_text(g(row)) for g in getters]
        cell_widths = [display_width(t) for t in cells]
        for i, w in enumerate(cell_widths):
            if w > natural[i]:
                natural[i] = w
        styles = None
        if styled:
            rstyle = row_style(row) if row_style else None
            styles = [_combine(rstyle, c.style(row) if c.style else None) for c in cols]
        body.append((cells, cell_widths, styles))
    return body, natural


def _measure_short(cols: list[Column], rows: list[Any], titles: Sequence[str],
                   header: bool) -> tuple[_Short, list[int | None]]:
    """The short cells of the columns that have a short form, and their natural widths."""
    cells: _Short = {}
    widths: list[int | None] = [None] * len(cols)
    for i, c in enumerate(cols):
        if c.short is None:
            continue
        texts = [_cell_text(c.short(row)) for row in rows]
        cell_widths = [display_width(t) for t in texts]
        cells[i] = (texts, cell_widths)
        widths[i] = max([display_width(titles[i]) if header else 0, *cell_widths])
    return cells, widths


@record
class _Layout:
    """Which columns show, how wide, and how a row of cells becomes one line."""
    visible: list[int]
    widths: list[int]
    right: list[bool]
    sep: str
    color: bool
    clip_width: int | None      # the terminal width, when some line must still be cut

    def line(self, cells: Sequence[str], cell_widths: Sequence[int],
             styles: Sequence[str | None] | None) -> str:
        if self.clip_width is None:
            return self.fast_line(cells, cell_widths, styles)
        sep, widths, right = self.sep, self.widths, self.right
        sep_width = display_width(sep)
        segments: list[_Segment] = []
        for n, i in enumerate(self.visible):
            if n:
                segments.append((sep, sep_width, None, True))
            text, w = cells[i], cell_widths[i]
            if w > widths[i]:
                text = truncate(text, widths[i])
                # Measured without the "…" so an ASCII cell stays on the fast path.
                w = display_width(text[:-1]) + 1 if text else 0
            pad = (" " * (widths[i] - w), widths[i] - w, None, True)
            # An empty cell counts as padding, so an empty last column leaves no blanks.
            cell = (text, w, styles[i] if styles else None, not text)
            segments.extend((pad, cell) if right[i] else (cell, pad))
        return _emit(_clip(_rstrip(segments), self.clip_width), self.color)

    def fast_line(self, cells: Sequence[str], cell_widths: Sequence[int],
                  styles: Sequence[str | None] | None) -> str:
        # The same layout as the segment path, without a tuple per piece: this runs
        # once per socket when nothing needs clipping, the usual case.
        visible, widths, right, sep, color = (self.visible, self.widths, self.right,
                                              self.sep, self.color)
        last = -1
        for n, i in enumerate(visible):
            if cells[i]:
                last = n
        parts: list[str] = []
        for n in range(last + 1):
            i = visible[n]
            text, w, cw = cells[i], cell_widths[i], widths[i]
            if w > cw:
                text = truncate(text, cw)
                w = display_width(text[:-1]) + 1 if text else 0
            if n:
                parts.append(sep)
            if styles is not None and text:
                text = paint(text, styles[i], color)
            if right[i]:
                parts.append(" " * (cw - w))
                parts.append(text)
            else:
                parts.append(text)
                if n < last:
                    parts.append(" " * (cw - w))
        return "".join(parts)


def _render(cols: list[Column], rows: list[Any], width: int | None, color: bool,
            row_style: StyleFn | None, header: bool,
            on_hidden: Callable[[list[str]], None] | None) -> str:
    sep = SEPARATOR
    if not cols:
        return ""
    titles = [printable(c.title) for c in cols]
    body, natural = _measure(cols, rows, titles, color, row_style, header)
    sep_width = display_width(sep)
    everything = list(range(len(cols)))
    if width is not None:
        width = max(width, 1)
    if width is None or _span(everything, natural, sep_width) <= width:
        fit = _Fit(everything, natural)     # the usual case: nothing to shorten or measure
    else:
        short_cells, short_widths = _measure_short(cols, rows, titles, header)
        fit = _fit(cols, natural, short_widths, _typical(cols, body, titles, header), width,
                   sep_width)
        if fit.compact:
            _use_short(body, short_cells)
        if fit.hidden and on_hidden is not None:
            on_hidden([cols[i].title for i in sorted(fit.hidden)])
    visible, widths = fit.visible, fit.widths
    total = _span(visible, widths, sep_width)
    layout = _Layout(visible, widths, [c.align == "right" for c in cols], sep, color,
                     width if width is not None and total > width else None)
    out = []
    if header:
        out.append(layout.line(titles, [display_width(t) for t in titles],
                               ["bold"] * len(cols) if color else None))
    wrapping = [i for i in visible if cols[i].wrap and natural[i] > widths[i]]
    line = layout.line
    for cells, cell_widths, styles in body:
        if wrapping and any(cell_widths[i] > widths[i] for i in wrapping):
            for piece_cells in _wrapped(cells, cell_widths, widths, wrapping):
                out.append(line(piece_cells, [display_width(t) for t in piece_cells], styles))
        else:
            out.append(line(cells, cell_widths, styles))
    return "\n".join(out)


def _typical(cols: list[Column], body: _Body, titles: Sequence[str], header: bool) -> list[int]:
    """Per wrapping column, the width its ordinary cells need: the widest cell not more than
    half again as wide as the one four cells in five fit in (the title's at least). Wider
    cells are the outliers that wrap before a column is hidden."""
    typical = [0] * len(cols)
    for i, c in enumerate(cols):
        if c.wrap and body:
            widths = sorted(row[1][i] for row in body)
            usual = widths[(len(widths) * 4 + 4) // 5 - 1]
            typical[i] = max([w for w in widths if w <= usual * 3 // 2] +
                             [display_width(titles[i]) if header else 0])
    return typical


def _use_short(body: _Body, short_cells: _Short) -> None:
    for i, (texts, cell_widths) in short_cells.items():
        for row, (cells, widths, _) in enumerate(body):
            cells[i], widths[i] = texts[row], cell_widths[row]


def _wrapped(cells: list[SafeText], cell_widths: list[int], widths: list[int],
             wrapping: list[int]) -> list[list[str]]:
    """One row as several lines: the wrapping cells in pieces, the others on the first."""
    pieces = {i: wrap_text(cells[i], widths[i]) if cell_widths[i] > widths[i] else [cells[i]]
              for i in wrapping}
    lines: list[list[str]] = [list(cells)]
    for n in range(1, max(len(p) for p in pieces.values())):
        lines.append([""] * len(cells))
        for i, parts in pieces.items():
            lines[n][i] = parts[n] if n < len(parts) else ""
    for i, parts in pieces.items():
        lines[0][i] = parts[0]
    return lines


# ---------------------------------------------------------------------------- terminal
# (what the terminal is: nsnet.terminal, re-exported here)

def fit_line(text: str, width: int | None) -> str:
    """One line of ours (a warning, a status line) cut to the terminal's width."""
    text = printable(text)
    return text if width is None else truncate(text, width)
