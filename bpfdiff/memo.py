"""Remembered answers: the one home of bpfdiff's bounded memos and of forgetting them all.

A fuzzing campaign asks the same questions again and again -- the same instruction in program
after program, the same program at every engine -- and several pure steps (checking an encoding,
the verifier model, assembling a line, decoding a program) remember their answers.  Each memo
here is keyed on immutable data (or on an object's identity, holding the object so that its id
cannot be reused while remembered); the comment at each memo says why its key is complete.

A memo is bounded: when it is full it starts over (a campaign's working set is small and
recurs, so the answers that matter come back at once; an LRU's bookkeeping would cost more on
every hit than the rare refill).  The lookup stays an ordinary ``dict.get`` in the caller's hot
loop; only a miss calls :meth:`Memo.remember`.

:func:`forget_all` empties every memo and every cache registered with :func:`forgettable`, for
the measurements that must see the work done as a new process would: line coverage of the engines
(``fuzz/corpus.py``), a throughput pass that must not profit from the one before
(``bench/throughput.py``), a test that records what the verifier model reads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

_K = TypeVar("_K")
_V = TypeVar("_V")
_T = TypeVar("_T")
_F = TypeVar("_F")

# every memo and registered cache, for forget_all: a functools cache (cache_clear), a dict
# (clear) or a function that forgets what its module remembers
_FORGETTABLE: list[Any] = []


class Memo(dict[_K, _V]):
    """A dict of remembered answers that starts over when it holds ``limit`` of them."""

    __slots__ = ("limit",)

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        _FORGETTABLE.append(self)

    def remember(self, key: _K, value: _V) -> _V:
        """Remember ``value`` as the answer for ``key`` and return it."""
        if len(self) >= self.limit:
            self.clear()
        self[key] = value
        return value


class IdentityMemo(Generic[_T, _V]):
    """``make(obj)`` remembered per object, looked up by ``id(obj)`` without hashing the object.

    For objects that are costly to hash (a Program: every instruction) and that callers pass again
    as the very same object.  The entry holds the object, so its id is not reused while the entry
    lives, and a hit checks identity: an equal but different object is a miss, never a wrong hit.
    """

    __slots__ = ("entries", "make")

    def __init__(self, make: Callable[[_T], _V], limit: int) -> None:
        self.make = make
        self.entries: Memo[int, tuple[_T, _V]] = Memo(limit)

    def __call__(self, obj: _T) -> _V:
        hit = self.entries.get(id(obj))
        if hit is not None and hit[0] is obj:
            return hit[1]
        return self.entries.remember(id(obj), (obj, self.make(obj)))[1]

    def clear(self) -> None:
        """Forget every object's answer (``make`` changed: a planted bug swapped its parts)."""
        self.entries.clear()


def forgettable(cache: _F) -> _F:
    """Register ``cache`` for :func:`forget_all`: a ``functools`` cache, a dict, or a function of
    no argument that forgets what its module remembers.  Returns it, so that it reads as a
    decorator above ``@functools.cache``."""
    _FORGETTABLE.append(cache)
    return cache


def forget_all() -> None:
    """Forget every remembered answer: the next question is computed as in a new process."""
    for cache in _FORGETTABLE:
        if hasattr(cache, "cache_clear"):
            cache.cache_clear()
        elif hasattr(cache, "clear"):
            cache.clear()
        else:
            cache()


__all__ = ["IdentityMemo", "Memo", "forget_all", "forgettable"]
