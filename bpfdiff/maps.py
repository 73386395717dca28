"""BPF maps with the kernel's semantics, independent of where values live.

Every engine uses these classes, so map behaviour can never be a divergence
by itself; what differs between engines is only *where* the bytes of array
and hash values are kept.  The interpreter keeps them in its own memory, the
JIT runner in unicorn memory.  An engine therefore hands each map a
:class:`ValueStore` and a ``base`` address of a region of
:func:`value_region_size` bytes; the map never touches memory outside it.

Semantics (kernel/bpf/arraymap.c, kernel/bpf/hashtab.c, kernel/bpf/syscall.c):

* array: 4-byte keys; every element exists and starts zeroed.  Update: flags
  other than ANY/NOEXIST/EXIST -> -EINVAL, index >= max_entries -> -E2BIG,
  NOEXIST -> -EEXIST (the element always exists).  Delete -> -EINVAL.
  Lookup of an index out of range -> NULL.  Element ``i`` lives at
  ``base + i * round_up(value_size, 8)``.
* hash: preallocated like the kernel's default (no BPF_F_NO_PREALLOC):
  ``max_entries`` elements plus one per-CPU "extra" element (we model one
  CPU) on a LIFO free list.  Update: unknown flags -> -EINVAL; existing key
  with NOEXIST -> -EEXIST; missing key with EXIST -> -ENOENT; inserting into
  a full map -> -E2BIG.  Replacing an existing key swaps in the extra
  element and the old one becomes the extra (so a value's address changes on
  update, as in the kernel).  Delete of a missing key -> -ENOENT.
* prog_array: values are program names (fds to the kernel).  Update: flags
  other than BPF_ANY -> -EINVAL, index >= max_entries -> -E2BIG, a program
  that is not loaded -> -EBADF (``bpf_prog_get`` on a bad fd).  Delete: index
  out of range -> -E2BIG, empty slot -> -ENOENT.  Every exchange of a slot
  (update, and delete of an in-range index even when it was empty) is
  reported to the observers with the old and new program, which is when the
  kernel runs ``map_poke_run``.

Keys and values whose length is not the map's key/value size cannot come from
the real syscall (the kernel copies exactly key_size/value_size bytes); such
malformed events are answered with -EINVAL by every engine alike.
"""

from __future__ import annotations

import errno
import functools
from collections.abc import Callable
from typing import Protocol

from bpfdiff.engine import MapContents
from bpfdiff.scenario import BPF_ANY, BPF_EXIST, BPF_NOEXIST, MapDef

BPF_F_LOCK = 4   # only meaningful for values with a bpf_spin_lock, which we never have
PROG_ARRAY_VALUE_SIZE = 4


class ValueStore(Protocol):
    """Byte-addressed memory owned by an engine; maps keep their values in it."""

    def read(self, addr: int, n: int) -> bytes: ...

    def write(self, addr: int, data: bytes) -> None: ...


class MapDefinitionError(ValueError):
    """A map the kernel's BPF_MAP_CREATE would refuse (bad input, not a finding)."""


# Called with (map, index, old program, new program) on every prog-array slot exchange.
SlotObserver = Callable[["ProgArrayMap", int, "str | None", "str | None"], None]


def round_up8(n: int) -> int:
    return (n + 7) & ~7


@functools.lru_cache(maxsize=64)
def _sorted_index_keys(max_entries: int) -> tuple[tuple[int, str], ...]:
    """(index, key hex) of an array's indices, in the order of their 4-byte little-endian keys: the
    order ``contents`` lists them in (asked after every run of every map, for a few sizes)."""
    return tuple((i, i.to_bytes(4, "little").hex())
                 for i in sorted(range(max_entries), key=lambda i: i.to_bytes(4, "little")))


def value_region_size(mapdef: MapDef) -> int:
    """Bytes of value memory the engine must provide for ``mapdef`` (0 for prog arrays)."""
    if mapdef.kind == "array":
        return mapdef.max_entries * round_up8(mapdef.value_size)
    if mapdef.kind == "hash":
        return (mapdef.max_entries + HashMap.EXTRA_ELEMS) * round_up8(mapdef.value_size)
    return 0


# -- Bounds on a map's definition ----------------------------------------------
# The kernel's (kernel/bpf/syscall.c, arraymap.c, hashtab.c), then ours.
U32_MAX = (1 << 32) - 1       # key_size, value_size and max_entries are __u32 in union bpf_attr
INT_MAX = (1 << 31) - 1       # array_map_alloc_check: value_size > INT_MAX is -E2BIG (v5.11+)
MAX_BPF_STACK = 512           # hash keys up to v5.10: built on the program's stack (-E2BIG above)
KMALLOC_MAX_SIZE = 1 << 22    # x86-64 SLUB: 1 << (MAX_ORDER + PAGE_SHIFT - 1), MAX_ORDER 11
HTAB_ELEM_SIZE = 48           # sizeof(struct htab_elem) on x86-64: 16 + 24-byte unions, u32 hash, key aligned 8
HTAB_BUCKET_SIZE = 16         # sizeof(struct bucket): hlist_nulls_head + raw spinlock, padded
# Ours: every map's contents are compared after every run, and values live in
# the engines' memory (unicorn's for the JIT), so a map stays small.
MAX_ENTRIES = 1 << 16
MAX_VALUE_REGION = 64 << 20   # value bytes of one map (see value_region_size)


def map_size_problem(kind: str, key_size: int, value_size: int, max_entries: int) -> tuple[str, str] | None:
    """The first size of a map definition that the kernel or our engines refuse: (attribute, reason).

    ``kind`` is assumed known.  None when every size is acceptable.
    """
    sizes = {"key_size": key_size, "value_size": value_size, "max_entries": max_entries}
    for attribute, value in sizes.items():
        if value <= 0:
            return attribute, f"{attribute} must be positive, not {value} (BPF_MAP_CREATE: -EINVAL)"
        if value > U32_MAX:
            return attribute, f"{attribute} {value} does not fit the syscall's 32-bit field"
    if kind in ("array", "prog_array") and key_size != 4:
        return "key_size", f"an {kind} needs 4-byte keys, not {key_size} (BPF_MAP_CREATE: -EINVAL)"
    if kind == "prog_array" and value_size != PROG_ARRAY_VALUE_SIZE:
        return "value_size", f"a prog_array's value_size is 4 (a program fd), not {value_size} (-EINVAL)"
    if kind == "array" and value_size > INT_MAX:
        return "value_size", f"value_size {value_size} > INT_MAX (BPF_MAP_CREATE: -E2BIG)"
    if kind == "hash":
        if key_size > MAX_BPF_STACK:
            return "key_size", (f"key_size {key_size} > {MAX_BPF_STACK} (MAX_BPF_STACK: -E2BIG up to v5.10; "
                                "and a key's decimal text must stay printable)")
        if key_size + value_size >= KMALLOC_MAX_SIZE - HTAB_ELEM_SIZE:
            return "value_size", (f"key_size + value_size {key_size + value_size} >= KMALLOC_MAX_SIZE - "
                                   f"sizeof(struct htab_elem) = {KMALLOC_MAX_SIZE - HTAB_ELEM_SIZE} (-E2BIG)")
        buckets = 1 << (max_entries - 1).bit_length()
        if buckets > U32_MAX // HTAB_BUCKET_SIZE:
            return "max_entries", f"max_entries {max_entries}: {buckets} buckets overflow 32 bits (-E2BIG)"
    if max_entries > MAX_ENTRIES:
        return "max_entries", f"max_entries {max_entries} is more than bpfdiff's engines hold ({MAX_ENTRIES})"
    region = value_region_size(MapDef("", kind, key_size, value_size, max_entries))
    if region > MAX_VALUE_REGION:
        return "value_size", (f"{region} bytes of values (max_entries x value_size rounded up to 8) is more "
                              f"than bpfdiff's engines hold ({MAX_VALUE_REGION})")
    return None


def check_map_def(mapdef: MapDef) -> None:
    """Raise :class:`MapDefinitionError` for a map the kernel would not create, or our engines cannot hold."""
    where = f"map {mapdef.name!r}"
    if mapdef.kind not in MAP_CLASSES:
        raise MapDefinitionError(f"{where}: unknown kind {mapdef.kind!r} (known: {', '.join(MAP_CLASSES)})")
    problem = map_size_problem(mapdef.kind, mapdef.key_size, mapdef.value_size, mapdef.max_entries)
    if problem is not None:
        raise MapDefinitionError(f"{where}: {problem[1]}")


def _u32_index(key: bytes) -> int:
    return int.from_bytes(key, "little")


class BpfMap:
    """What every map kind offers; subclasses implement the kernel's checks."""

    kind = "?"

    def __init__(self, mapdef: MapDef) -> None:
        self.name = mapdef.name
        self.key_size = mapdef.key_size
        self.value_size = mapdef.value_size
        self.max_entries = mapdef.max_entries

    def lookup(self, key: bytes) -> int:
        """Address of the value for ``key``, 0 (NULL) when there is none."""
        raise NotImplementedError

    def update(self, key: bytes, value: bytes | str, flags: int) -> int:
        """0 or -errno, as ``bpf_map_update_elem`` returns it."""
        raise NotImplementedError

    def delete(self, key: bytes) -> int:
        """0 or -errno, as ``bpf_map_delete_elem`` returns it."""
        raise NotImplementedError

    def contents(self) -> MapContents:
        """Sorted (key hex, value hex or program name) pairs of the present elements."""
        raise NotImplementedError


class ArrayMap(BpfMap):
    kind = "array"

    def __init__(self, mapdef: MapDef, store: ValueStore, base: int) -> None:
        super().__init__(mapdef)
        self.store = store
        self.base = base
        self.elem_size = round_up8(mapdef.value_size)

    def value_addr(self, index: int) -> int:
        return self.base + index * self.elem_size

    def lookup(self, key: bytes) -> int:
        if len(key) != 4:
            return 0
        index = _u32_index(key)
        if index >= self.max_entries:
            return 0
        return self.value_addr(index)

    def update(self, key: bytes, value: bytes | str, flags: int) -> int:
        if len(key) != 4 or not isinstance(value, bytes) or len(value) != self.value_size:
            return -errno.EINVAL
        if flags & ~BPF_F_LOCK > BPF_EXIST:
            return -errno.EINVAL
        index = _u32_index(key)
        if index >= self.max_entries:
            return -errno.E2BIG
        if flags & BPF_NOEXIST:
            return -errno.EEXIST
        if flags & BPF_F_LOCK:  # no bpf_spin_lock in our values
            return -errno.EINVAL
        self.store.write(self.value_addr(index), value)
        return 0

    def delete(self, key: bytes) -> int:
        return -errno.EINVAL

    def contents(self) -> MapContents:
        # every value at once: one read of the store (an engine call) instead of one per element
        elem, size = self.elem_size, self.value_size
        values = self.store.read(self.base, self.max_entries * elem)
        return tuple((key, values[i * elem:i * elem + size].hex()) for i, key in _sorted_index_keys(self.max_entries))


class HashMap(BpfMap):
    kind = "hash"
    EXTRA_ELEMS = 1  # htab->extra_elems: one per possible CPU, and we model one CPU

    def __init__(self, mapdef: MapDef, store: ValueStore, base: int) -> None:
        super().__init__(mapdef)
        self.store = store
        self.base = base
        self.elem_size = round_up8(mapdef.value_size)
        # Free list of element numbers, popped from the end (LIFO like the
        # kernel's pcpu_freelist after populate); the first pop is the extra.
        self.free = list(range(mapdef.max_entries + self.EXTRA_ELEMS))
        self.extra = self.free.pop()
        self.elems: dict[bytes, int] = {}   # key -> element number

    def value_addr(self, elem: int) -> int:
        return self.base + elem * self.elem_size

    def lookup(self, key: bytes) -> int:
        elem = self.elems.get(bytes(key))
        return 0 if elem is None else self.value_addr(elem)

    def update(self, key: bytes, value: bytes | str, flags: int) -> int:
        if len(key) != self.key_size or not isinstance(value, bytes) or len(value) != self.value_size:
            return -errno.EINVAL
        if flags & ~BPF_F_LOCK > BPF_EXIST:
            return -errno.EINVAL
        if flags & BPF_F_LOCK:
            return -errno.EINVAL
        key = bytes(key)
        old = self.elems.get(key)
        if old is not None and flags & ~BPF_F_LOCK == BPF_NOEXIST:
            return -errno.EEXIST
        if old is None and flags & ~BPF_F_LOCK == BPF_EXIST:
            return -errno.ENOENT
        if old is not None:
            new, self.extra = self.extra, old
        elif self.free:
            new = self.free.pop()
        else:
            return -errno.E2BIG
        self.store.write(self.value_addr(new), value)
        self.elems[key] = new
        return 0

    def delete(self, key: bytes) -> int:
        elem = self.elems.pop(bytes(key), None)
        if elem is None:
            return -errno.ENOENT
        self.free.append(elem)
        return 0

    def contents(self) -> MapContents:
        return tuple(
            (key.hex(), self.store.read(self.value_addr(elem), self.value_size).hex())
            for key, elem in sorted(self.elems.items())
        )


class ProgArrayMap(BpfMap):
    kind = "prog_array"

    def __init__(self, mapdef: MapDef, is_loaded: Callable[[str], bool]) -> None:
        super().__init__(mapdef)
        self.is_loaded = is_loaded
        self.slots: list[str | None] = [None] * mapdef.max_entries
        self.observers: list[SlotObserver] = []

    def add_observer(self, observer: SlotObserver) -> None:
        """Call ``observer(map, index, old, new)`` on every slot exchange (the kernel's map_poke_run)."""
        self.observers.append(observer)

    def get(self, index: int) -> str | None:
        """The program in slot ``index`` (u32), None when empty or out of range."""
        if 0 <= index < self.max_entries:
            return self.slots[index]
        return None

    def lookup(self, key: bytes) -> int:
        # The kernel's prog arrays have no lookup for programs (the verifier
        # refuses it); helpers report that as unsupported before calling this.
        return 0

    def _exchange(self, index: int, new: str | None) -> str | None:
        old = self.slots[index]
        self.slots[index] = new
        for observer in self.observers:
            observer(self, index, old, new)
        return old

    def update(self, key: bytes, value: bytes | str, flags: int) -> int:
        if len(key) != 4:
            return -errno.EINVAL
        if flags != BPF_ANY:
            return -errno.EINVAL
        index = _u32_index(key)
        if index >= self.max_entries:
            return -errno.E2BIG
        if not isinstance(value, str) or not self.is_loaded(value):
            return -errno.EBADF   # bpf_prog_get() of an fd that is no loaded program
        self._exchange(index, value)
        return 0

    def delete(self, key: bytes) -> int:
        if len(key) != 4:
            return -errno.EINVAL
        index = _u32_index(key)
        if index >= self.max_entries:
            return -errno.E2BIG
        old = self._exchange(index, None)
        return 0 if old is not None else -errno.ENOENT

    def contents(self) -> MapContents:
        slots = self.slots
        return tuple((key, slots[i]) for i, key in _sorted_index_keys(self.max_entries) if slots[i] is not None)


MAP_CLASSES: dict[str, type[BpfMap]] = {"array": ArrayMap, "hash": HashMap, "prog_array": ProgArrayMap}


def create_map(mapdef: MapDef, store: ValueStore | None = None, base: int = 0,
               is_loaded: Callable[[str], bool] | None = None) -> BpfMap:
    """Create the map for ``mapdef``; array/hash need ``store`` and ``base``, prog arrays ``is_loaded``."""
    check_map_def(mapdef)
    if mapdef.kind == "prog_array":
        if is_loaded is None:
            raise TypeError("a prog_array needs is_loaded")
        return ProgArrayMap(mapdef, is_loaded)
    if store is None:
        raise TypeError(f"a {mapdef.kind} map needs a value store")
    return MAP_CLASSES[mapdef.kind](mapdef, store, base)  # type: ignore[call-arg]


__all__ = [
    "BPF_ANY", "BPF_EXIST", "BPF_NOEXIST", "ArrayMap", "BpfMap", "HashMap", "MapDefinitionError",
    "ProgArrayMap", "SlotObserver", "ValueStore", "check_map_def", "create_map", "map_size_problem", "round_up8",
    "value_region_size",
]
