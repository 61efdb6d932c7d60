"""nsnet.records.record: the same class as dataclasses.dataclass, its methods but __init__
compiled at their first call (Python 3.11 and 3.12)."""
from __future__ import annotations

import dataclasses
import inspect
import pickle
import re
import threading
from dataclasses import FrozenInstanceError, dataclass, field
from pathlib import Path

import pytest

from nsnet import records
from nsnet.records import record

DEFERS = hasattr(dataclasses, "_create_fn")
needs_deferral = pytest.mark.skipif(
    not DEFERS, reason="Python 3.13+ builds a dataclass's methods in one exec: nothing deferred")


# module level, so that pickle finds them
@record(frozen=True, slots=True)
class FrozenRec:
    name: str
    port: int = 0
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class FrozenStd:
    name: str
    port: int = 0
    tags: tuple[str, ...] = ()


@record(slots=True)
class MutableRec:
    name: str
    items: list[int] = field(default_factory=list)


@dataclass(slots=True)
class MutableStd:
    name: str
    items: list[int] = field(default_factory=list)


@record(order=True)
class OrderedRec:
    a: int
    b: str = ""


@dataclass(order=True)
class OrderedStd:
    a: int
    b: str = ""


def _generated(func: object) -> bool:
    """Whether a method is dataclass()'s own (compiled from text), not a stand-in."""
    code = getattr(func, "__code__", None)
    return code is not None and code.co_filename == "<string>"


PAIRS = [(FrozenRec, FrozenStd), (MutableRec, MutableStd), (OrderedRec, OrderedStd)]


def _sample(cls: type) -> tuple[object, object, object]:
    if cls in (FrozenRec, FrozenStd):
        return cls("db", 5432, ("a",)), cls("db", 5432, ("a",)), cls("db", 5433)
    if cls in (MutableRec, MutableStd):
        return cls("x", [1]), cls("x", [1]), cls("y")
    return cls(1, "b"), cls(1, "b"), cls(2)


@pytest.mark.parametrize(("rec", "std"), PAIRS, ids=lambda c: c.__name__)
def test_a_record_behaves_as_the_dataclass_it_stands_for(rec: type, std: type) -> None:
    r1, r2, r3 = _sample(rec)
    s1, s2, s3 = _sample(std)
    assert repr(r1).replace(rec.__name__, "C") == repr(s1).replace(std.__name__, "C")
    assert (r1 == r2, r1 == r3, r1 != r3) == (s1 == s2, s1 == s3, s1 != s3) == (True, False, True)
    assert r1.__eq__(s1) is NotImplemented and (r1 == s1) is False   # another class
    assert [f.name for f in dataclasses.fields(rec)] == [f.name for f in dataclasses.fields(std)]
    assert dataclasses.asdict(r1) == dataclasses.asdict(s1)
    assert str(inspect.signature(rec)) == str(inspect.signature(std))
    assert rec.__match_args__ == std.__match_args__
    assert hasattr(rec, "__slots__") == hasattr(std, "__slots__")
    if std.__hash__ is None:
        assert rec.__hash__ is None
    else:
        assert hash(r1) == hash(r2) == hash(s1)
        assert len({r1, r2, r3}) == 2
    copied = pickle.loads(pickle.dumps(r1))
    assert copied == r1 and copied is not r1
    assert dataclasses.replace(r1) == r1


def test_a_frozen_record_refuses_to_change() -> None:
    rec = FrozenRec("db")
    with pytest.raises(FrozenInstanceError):
        rec.port = 1     # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        del rec.port     # type: ignore[misc]
    assert rec.port == 0


def test_order_compares_as_the_dataclass() -> None:
    assert sorted([OrderedRec(2), OrderedRec(1, "z"), OrderedRec(1, "a")]) == \
        [OrderedRec(1, "a"), OrderedRec(1, "z"), OrderedRec(2)]
    assert (OrderedRec(1) < OrderedRec(2)) is True and (OrderedRec(3) <= OrderedRec(2)) is False


def test_a_class_without_a_docstring_gets_the_dataclass_one() -> None:
    @record
    class Bare:
        a: int
        b: str = "x"

    @dataclass
    class Plain:
        a: int
        b: str = "x"

    assert Bare.__doc__ == Plain.__doc__.replace("Plain", "Bare") == "Bare(a: 'int', b: 'str' = 'x')"


@needs_deferral
def test_methods_but_init_are_compiled_at_their_first_call_and_then_called_directly() -> None:
    @record(frozen=True)
    class Point:
        x: int
        y: int = 0

    assert _generated(Point.__dict__["__init__"])       # at once: the signature is read from it
    for name in ("__eq__", "__hash__", "__setattr__", "__delattr__"):
        assert not _generated(Point.__dict__[name]), name
    p = Point(1)
    assert p == Point(1) and hash(p) == hash((1, 0))
    with pytest.raises(FrozenInstanceError):
        p.x = 2     # type: ignore[misc]
    for name in ("__eq__", "__hash__", "__setattr__"):
        method = Point.__dict__[name]
        assert _generated(method), name
        assert method.__qualname__.endswith(f"Point.{name}")
    assert not _generated(Point.__dict__["__delattr__"])    # never called: never compiled


@needs_deferral
def test_an_inherited_stub_is_replaced_where_the_class_holds_it() -> None:
    @record
    class Base:
        a: int

    @record(eq=False)
    class Child(Base):
        b: int = 0

    assert "__eq__" not in Child.__dict__
    assert Child(1, 2) == Child(1, 3)      # Base's __eq__ compares Base's fields only
    assert _generated(Base.__dict__["__eq__"])
    assert Base(1) == Base(1) and Base(1) != Base(2)


@needs_deferral
def test_the_builder_is_put_back_even_when_dataclass_refuses_the_class() -> None:
    with pytest.raises(TypeError, match="non-default argument"):
        @record
        class Wrong:
            a: int = 0
            b: int      # type: ignore[misc]
    assert dataclasses._create_fn is records._BUILD    # type: ignore[attr-defined]

    @dataclass
    class After:     # a dataclass made afterwards, elsewhere, is the stdlib's own
        a: int

    assert _generated(After.__dict__["__eq__"])


@needs_deferral
def test_threads_calling_a_method_first_at_once_all_get_its_answer() -> None:
    @record(frozen=True)
    class Key:
        a: int
        b: str

    results: list[bool] = []
    start = threading.Barrier(8)

    def compare() -> None:
        start.wait()
        results.append(Key(1, "x") == Key(1, "x") and hash(Key(2, "y")) == hash((2, "y")))

    threads = [threading.Thread(target=compare) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 8


def test_nsnet_declares_its_dataclasses_with_record() -> None:
    """A plain @dataclass on nsnet's import path costs each command its compiled methods."""
    root = Path(records.__file__).parent
    plain = [f"{path.relative_to(root)}:{n}" for path in sorted(root.rglob("*.py"))
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if re.match(r"@dataclass\b(?!_)", line)]
    assert plain == []
