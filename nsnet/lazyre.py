"""Regular expressions compiled where they are first used, not when their module is imported.

Compiling a pattern costs ~0.2-1 ms; a module compiled all of its patterns at import, so every
command paid for the parsers of sources and files it never reads (the /proc/net tables under
the netlink source, the kubelet's names without --host-root, conntrack's text). A loop that
matches many lines takes `.compiled` once, outside the loop.
"""
from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from typing import AnyStr, Generic


class LazyPattern(Generic[AnyStr]):
    __slots__ = ("_compiled", "_flags", "_source")

    def __init__(self, source: AnyStr, flags: int = 0) -> None:
        self._source: AnyStr = source
        self._flags = flags
        self._compiled: re.Pattern[AnyStr] | None = None

    @property
    def compiled(self) -> re.Pattern[AnyStr]:
        # two threads may both compile it the first time: the same pattern either way
        if self._compiled is None:
            self._compiled = re.compile(self._source, self._flags)
        return self._compiled

    def match(self, string: AnyStr, pos: int = 0, endpos: int = sys.maxsize
              ) -> re.Match[AnyStr] | None:
        return self.compiled.match(string, pos, endpos)

    def fullmatch(self, string: AnyStr, pos: int = 0, endpos: int = sys.maxsize
                  ) -> re.Match[AnyStr] | None:
        return self.compiled.fullmatch(string, pos, endpos)

    def search(self, string: AnyStr, pos: int = 0, endpos: int = sys.maxsize
               ) -> re.Match[AnyStr] | None:
        return self.compiled.search(string, pos, endpos)

    def finditer(self, string: AnyStr, pos: int = 0, endpos: int = sys.maxsize
                 ) -> Iterator[re.Match[AnyStr]]:
        return self.compiled.finditer(string, pos, endpos)
