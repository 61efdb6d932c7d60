"""`record`: dataclasses.dataclass whose methods other than __init__ are compiled at first use.

On Python 3.11 and 3.12, dataclass() writes each method it adds (__init__, __repr__, __eq__,
and __hash__, __setattr__, __delattr__ for a frozen class) as source text and compiles it with
its own exec(): ~0.25 ms per method, ~1.3 ms for a frozen class. nsnet declares ~40 dataclasses
on a command's import path, and their methods were ~28 ms of a ~75 ms import, most of them
methods the command never calls (who compares two Stats, or prints a CpuBudget's repr?).

`record` takes the same arguments and makes the same class. Only while it runs, the module
function dataclass() builds each method with (`dataclasses._create_fn`) is replaced: __init__
is still built at once (the class's signature and docstring are read from it), every other
method is a stub that builds the real one at its first call, with the very text and
namespaces dataclass() gave, and puts it on the class in its own place. Python 3.13 builds all
of a class's methods in one exec() and has no _create_fn: there `record` is dataclass().
"""
from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from typing import Any, TypeVar, cast, dataclass_transform, overload

T = TypeVar("T")

_BUILD = getattr(dataclasses, "_create_fn", None)   # 3.11, 3.12; absent from 3.13
# One swap at a time. Reentrant: nothing in dataclass() imports today, but a module imported
# from inside it that declares a record must not deadlock (its swap back only makes the rest
# of the outer class's methods eager). A plain dataclass() another thread makes meanwhile gets
# stubs too: the same methods, compiled later.
_SWAP = threading.RLock()
EAGER = frozenset({"__init__"})


def _deferred(name: str, args: Any, body: Any, *, globals: Any = None,
              locals: Any = None, return_type: Any = dataclasses.MISSING) -> Callable[..., Any]:
    """dataclasses._create_fn's contract, built at the first call but for EAGER names."""
    assert _BUILD is not None
    if name in EAGER:
        return _BUILD(name, args, body, globals=globals, locals=locals, return_type=return_type)
    # the caller may reuse and change its dict afterwards (_create_fn itself adds to it):
    # the text must meet the namespace as it was now
    names = dict(locals) if locals is not None else None
    built: list[Callable[..., Any]] = []

    def stub(self: Any, *rest: Any) -> Any:
        if not built:     # two threads may both build it the first time: the same function
            built.append(_BUILD(name, args, body, globals=globals, locals=names,
                                return_type=return_type))
            real = built[0]
            # replace the stub where the class holds it, so that later calls are direct;
            # the __repr__ dataclass() wraps against recursion holds it inside the wrapper
            for klass in type(self).__mro__:
                if klass.__dict__.get(name) is stub:
                    real.__qualname__ = f"{klass.__qualname__}.{name}"
                    setattr(klass, name, real)
                    break
        return built[0](self, *rest)

    stub.__name__ = name
    # what dataclasses._set_qualname looks for, to name it after the class
    stub.__qualname__ = f"__create_fn__.<locals>.{name}"
    return stub


@overload
def record(cls: type[T], /) -> type[T]: ...
@overload
def record(cls: None = None, /, **options: bool) -> Callable[[type[T]], type[T]]: ...


@dataclass_transform(field_specifiers=(dataclasses.field, dataclasses.Field))
def record(cls: type[T] | None = None, /, **options: bool
           ) -> type[T] | Callable[[type[T]], type[T]]:
    """@record, @record(frozen=True, slots=True): as @dataclass, with the same options."""
    make = cast(Callable[[type[T]], type[T]], dataclasses.dataclass(**options))

    def wrap(klass: type[T]) -> type[T]:
        if _BUILD is None:
            return make(klass)
        with _SWAP:
            dataclasses._create_fn = _deferred  # type: ignore[attr-defined]
            try:
                return make(klass)
            finally:
                dataclasses._create_fn = _BUILD  # type: ignore[attr-defined]
    return wrap if cls is None else wrap(cls)
