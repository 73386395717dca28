"""Map semantics against the kernel's errno results (kernel/bpf/arraymap.c, hashtab.c)."""

import errno

import pytest

from bpfdiff.helpers import CLOBBER_VALUES, HelperFault, Prandom, call_helper
from bpfdiff.maps import (
    ArrayMap,
    HashMap,
    MapDefinitionError,
    ProgArrayMap,
    create_map,
    value_region_size,
)
from bpfdiff.scenario import BPF_ANY, BPF_EXIST, BPF_NOEXIST, MapDef, key_u32

BASE = 0x1000


class ByteStore:
    """A flat store at BASE, standing in for an engine's memory."""

    def __init__(self, size: int) -> None:
        self.data = bytearray(size)

    def read(self, addr: int, n: int) -> bytes:
        off = addr - BASE
        if off < 0 or off + n > len(self.data):
            raise HelperFault("memory", f"read 0x{addr:x}")
        return bytes(self.data[off:off + n])

    def write(self, addr: int, data: bytes) -> None:
        off = addr - BASE
        if off < 0 or off + len(data) > len(self.data):
            raise HelperFault("memory", f"write 0x{addr:x}")
        self.data[off:off + len(data)] = data


def make(mapdef: MapDef):
    store = ByteStore(max(value_region_size(mapdef), 64))
    return create_map(mapdef, store, BASE, is_loaded=lambda name: name.startswith("p")), store


def test_array_errnos_and_layout():
    arr, store = make(MapDef("a", "array", 4, 5, 3))
    assert isinstance(arr, ArrayMap)
    assert value_region_size(MapDef("a", "array", 4, 5, 3)) == 24      # round_up(5, 8) * 3
    assert arr.lookup(key_u32(2)) == BASE + 16
    assert arr.lookup(key_u32(3)) == 0
    assert arr.update(key_u32(1), b"abcde", BPF_ANY) == 0
    assert store.data[8:13] == b"abcde"
    assert arr.update(key_u32(1), b"zzzzz", BPF_EXIST) == 0
    assert arr.update(key_u32(1), b"abcde", BPF_NOEXIST) == -errno.EEXIST
    assert arr.update(key_u32(3), b"abcde", BPF_ANY) == -errno.E2BIG
    assert arr.update(key_u32(3), b"abcde", 3) == -errno.EINVAL       # flags checked before the index
    assert arr.update(key_u32(0), b"abcde", 4) == -errno.EINVAL       # BPF_F_LOCK without a spin lock
    assert arr.delete(key_u32(0)) == -errno.EINVAL
    assert arr.contents() == (("00000000", "0000000000"), ("01000000", b"zzzzz".hex()), ("02000000", "0000000000"))


def test_hash_errnos_prealloc_and_extra_elem():
    h, store = make(MapDef("h", "hash", 2, 4, 2))
    assert isinstance(h, HashMap)
    assert h.lookup(b"aa") == 0
    assert h.update(b"aa", b"1111", BPF_EXIST) == -errno.ENOENT
    assert h.update(b"aa", b"1111", BPF_NOEXIST) == 0
    first = h.lookup(b"aa")
    assert first != 0 and store.read(first, 4) == b"1111"
    assert h.update(b"aa", b"2222", BPF_NOEXIST) == -errno.EEXIST
    assert h.update(b"bb", b"3333", BPF_ANY) == 0
    assert h.update(b"cc", b"4444", BPF_ANY) == -errno.E2BIG          # full: 2 entries
    # replacing swaps in the extra element: the value moves, the old one is kept aside
    assert h.update(b"aa", b"5555", BPF_ANY) == 0
    assert h.lookup(b"aa") != first and store.read(first, 4) == b"1111"
    assert h.update(b"aa", b"5555", 7) == -errno.EINVAL
    assert h.delete(b"zz") == -errno.ENOENT
    assert h.contents() == ((b"aa".hex(), b"5555".hex()), (b"bb".hex(), b"3333".hex()))
    assert h.delete(b"bb") == 0
    assert h.update(b"cc", b"4444", BPF_ANY) == 0
    assert h.update(b"a", b"4444", BPF_ANY) == -errno.EINVAL           # wrong key length


def test_prog_array_errnos_and_observer():
    pa, _ = make(MapDef("jt", "prog_array", 4, 4, 2))
    assert isinstance(pa, ProgArrayMap)
    seen = []
    pa.add_observer(lambda m, i, old, new: seen.append((i, old, new)))
    assert pa.update(key_u32(0), "prog1", BPF_NOEXIST) == -errno.EINVAL   # only BPF_ANY
    assert pa.update(key_u32(0), "prog1", BPF_EXIST) == -errno.EINVAL
    assert pa.update(key_u32(2), "prog1", BPF_ANY) == -errno.E2BIG
    assert pa.update(key_u32(0), "notloaded", BPF_ANY) == -errno.EBADF
    assert seen == []
    assert pa.update(key_u32(0), "prog1", BPF_ANY) == 0
    assert pa.get(0) == "prog1" and pa.get(1) is None and pa.get(5) is None
    assert pa.update(key_u32(0), "prog2", BPF_ANY) == 0
    assert pa.delete(key_u32(1)) == -errno.ENOENT
    assert pa.delete(key_u32(2)) == -errno.E2BIG
    assert pa.delete(key_u32(0)) == 0
    assert seen == [(0, None, "prog1"), (0, "prog1", "prog2"), (1, None, None), (0, "prog2", None)]
    assert pa.contents() == ()


def test_bad_map_definitions_are_refused():
    for bad in (MapDef("x", "array", 8, 4, 1), MapDef("x", "ringbuf", 4, 4, 1),
                MapDef("x", "prog_array", 4, 8, 1), MapDef("x", "hash", 4, 4, 0)):
        with pytest.raises(MapDefinitionError, match="map 'x'"):
            make(bad)


class Env:
    def __init__(self, maps, store):
        self.maps = maps
        self.store = store
        self.prandom = Prandom.for_run(1, 0)

    def map_at(self, addr):
        return self.maps.get(addr)

    def read(self, addr, n):
        return self.store.read(addr, n)

    def write(self, addr, data):
        self.store.write(addr, data)


def test_helpers_through_env():
    store = ByteStore(256)
    arr = ArrayMap(MapDef("a", "array", 4, 8, 4), store, BASE + 128)
    env = Env({0xAAAA: arr}, store)
    store.write(BASE, key_u32(2))
    store.write(BASE + 8, (0x1122).to_bytes(8, "little"))
    assert call_helper(env, 2, 0xAAAA, BASE, BASE + 8, BPF_ANY, 0) == 0
    assert call_helper(env, 1, 0xAAAA, BASE, 0, 0, 0) == BASE + 128 + 16
    assert store.read(BASE + 128 + 16, 8) == (0x1122).to_bytes(8, "little")
    assert call_helper(env, 3, 0xAAAA, BASE, 0, 0, 0) == (-errno.EINVAL) & (2**64 - 1)
    assert call_helper(env, 8, 0, 0, 0, 0, 0) == 0
    with pytest.raises(HelperFault) as info:
        call_helper(env, 6, 0, 0, 0, 0, 0)
    assert info.value.kind == "unsupported"
    with pytest.raises(HelperFault) as info:
        call_helper(env, 1, 0xAAAA, BASE + 4096, 0, 0, 0)
    assert info.value.kind == "memory"
    assert set(CLOBBER_VALUES) == {1, 2, 3, 4, 5}


def test_prandom_is_deterministic_per_run():
    a, b, c = Prandom.for_run(7, 3), Prandom.for_run(7, 3), Prandom.for_run(7, 4)
    seq_a = [a.next_u32() for _ in range(5)]
    assert seq_a == [b.next_u32() for _ in range(5)]
    assert seq_a != [c.next_u32() for _ in range(5)]
    assert all(0 <= v < 2**32 for v in seq_a)
    assert len(set(seq_a)) == 5
