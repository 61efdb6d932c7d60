"""What the terminal is: its width, whether to colour. Apart from nsnet.table (the table
layout, ~10 ms to import) so that a run printing JSON never imports the layout."""
from __future__ import annotations

import os
from typing import Any, TextIO


def _fileno(stream: Any) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):  # no fd, or closed, or io.StringIO
        return None


def _isatty(stream: Any) -> bool:
    fd = _fileno(stream)
    return fd is not None and os.isatty(fd)


def forced_columns(value: str | None) -> int | None:
    """A width the user forces (the COLUMNS variable, which the CLI reads): a positive
    integer, else None -- garbage is ignored, never fatal."""
    if value and value.isascii() and value.isdigit() and int(value) > 0:  # isdigit() alone accepts "²"
        return int(value)
    return None


def terminal_width(stream: TextIO, forced: int | None = None) -> int | None:
    """Columns of the terminal ``stream`` writes to, or None when it is not a terminal.

    ``forced`` (from ``COLUMNS``: users set it to force a width) wins. Otherwise the size of
    the stream's own fd is asked, not stdout's as ``shutil`` would; a terminal that reports 0
    columns (a fresh pty, a serial console) counts as 80.
    """
    fd = _fileno(stream)
    if fd is None or not os.isatty(fd):
        return None
    if forced is not None and forced > 0:
        return forced
    try:
        columns = os.get_terminal_size(fd).columns
    except OSError:
        columns = 0
    return columns if columns > 0 else 80


def use_color(stream: TextIO, mode: str = "auto", *, no_color: str | None = None,
              term: str | None = None) -> bool:
    """Whether to colour output written to ``stream``.

    ``never``: no. ``always``: yes, even with NO_COLOR set or when piped, because an
    explicit flag is the user's latest word. ``auto``: only when ``stream`` is a
    terminal, ``no_color`` (the NO_COLOR variable) is unset or empty (https://no-color.org:
    any non-empty value disables colour) and ``term`` (TERM) is not ``dumb``.
    """
    if mode == "never":
        return False
    if mode == "always":
        return True
    if mode != "auto":
        raise ValueError(f"colour mode must be auto, always or never, not {mode!r}")
    if no_color:
        return False
    if term == "dumb":
        return False
    return _isatty(stream)
