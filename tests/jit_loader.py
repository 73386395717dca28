"""A tiny stand-in for the JIT engine, shared by the fixture and listing tests.

Bump-allocated images in a byte-array "text", one prog array whose slots the
test sets (``slots[key] = JitProgram``), and ``read``/``write`` for the poke
functions -- no emulator, so the tests see exactly the JIT's bytes.
"""

from __future__ import annotations

from collections.abc import Mapping

from bpfdiff.jit.bpf_jit_comp import JitEnv, JitOptions, JitProgram, bpf_int_jit_compile

from bpfdiff.isa import Program
from bpfdiff.profiles import Profile
from bpfdiff.scenario import MapDef

TEXT_BASE = 0x7FFF_A000_0000
HELPERS_BASE = 0x7FFF_8100_0000


class Loader:
    def __init__(self, profile: Profile, maps: Mapping[str, MapDef], map_addr: int) -> None:
        self.profile = profile
        self.maps = maps
        self.next = TEXT_BASE
        self.text_base = TEXT_BASE
        self.text = bytearray()
        self.slots: dict[int, JitProgram] = {}
        self.env = JitEnv(alloc_image=self.alloc, helper_addr=lambda i: HELPERS_BASE + 8 * i,
                          map_addr=lambda name: map_addr,
                          map_value_addr=lambda name: map_addr + profile.off_array_ptrs)

    def alloc(self, size: int) -> int:
        addr = self.next
        self.next += (size + 15) & ~15
        return addr

    def target(self, map_name: str, key: int) -> int | None:
        prog = self.slots.get(key)
        return None if prog is None else prog.bpf_func

    def load(self, prog: Program, options: JitOptions | None = None) -> JitProgram:
        jited = bpf_int_jit_compile(prog, self.maps, self.profile, self.env, options or JitOptions(), self.target)
        for image in jited.images:
            end = image.base + len(image.code) - self.text_base
            self.text.extend(b"\xcc" * max(0, end - len(self.text)))
            self.text[image.base - self.text_base:end] = image.code
        return jited

    def read(self, addr: int, n: int) -> bytes:
        return bytes(self.text[addr - self.text_base:addr - self.text_base + n])

    def write(self, addr: int, data: bytes) -> None:
        self.text[addr - self.text_base:addr - self.text_base + len(data)] = data

    def image(self, jited: JitProgram) -> bytes:
        """A program's main image as it is in the text now (pokes included)."""
        return self.read(jited.bpf_func, len(jited.images[0].code))
