"""The guest's initramfs: a static busybox, our agent (``agent.c``, built static) and channel modules.

The archive is written here in the kernel's "newc" cpio format and gzipped,
so building it needs no cpio tool and no root (device nodes are just entries).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from bpfdiff.kernel.image import SetupError, busybox_path

# /init: mount what the agent needs, load the channel's modules, hand over.
# If the agent exits, init exits: the kernel panics and qemu (-no-reboot) stops.
INIT_SCRIPT = """#!/bin/busybox sh
/bin/busybox mount -t devtmpfs dev /dev
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
for m in /lib/bpfdiff/*.ko; do
    [ -e "$m" ] && /bin/busybox insmod "$m"
done
exec /agent
"""

S_IFDIR, S_IFREG, S_IFCHR, S_IFLNK = 0o040000, 0o100000, 0o020000, 0o120000


def agent_source() -> bytes:
    return resources.files("bpfdiff.kernel").joinpath("agent.c").read_bytes()


def agent_digest() -> str:
    """Names the agent's build and the initramfs holding it (``agent-<digest>``,
    ``initramfs-<digest>.gz``): checkouts with different ``agent.c`` sharing one cache each boot
    their own agent and never rewrite a file that another process's qemu is about to read."""
    return hashlib.sha256(agent_source()).hexdigest()[:16]


def initramfs_path(kernel_dir: Path) -> Path:
    return kernel_dir / f"initramfs-{agent_digest()}.gz"


def _replace(out: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.chmod(mode)
    os.replace(tmp, out)


def build_agent(kernel_dir: Path, log: Callable[[str], None]) -> Path:
    """Compile agent.c with gcc -static, once per version of the source."""
    out = kernel_dir / f"agent-{agent_digest()}"
    if out.exists():
        return out
    if shutil.which("gcc") is None:
        raise SetupError("gcc is not installed (apt-get install gcc): it builds the guest agent")
    with tempfile.TemporaryDirectory(prefix="bpfdiff-agent-") as tmp:
        src = Path(tmp) / "agent.c"
        src.write_bytes(agent_source())
        log("gcc -static agent.c")
        binary = Path(tmp) / "agent"
        proc = subprocess.run(["gcc", "-static", "-O2", "-Wall", "-o", str(binary), str(src)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            errors = [ln for ln in proc.stderr.splitlines() if "error" in ln] or proc.stderr.splitlines() or ["?"]
            raise SetupError(f"building the agent failed: {errors[0]}")
        _replace(out, binary.read_bytes(), 0o755)
    return out


class Cpio:
    """A "newc" cpio archive (include/linux/initramfs docs: 110-byte ASCII headers, 4-byte alignment)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        fields = [self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0]
        self.ino += 1
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        blob = header + name.encode() + b"\0"
        blob += b"\0" * (-len(blob) % 4)
        blob += data + b"\0" * (-len(data) % 4)
        self.parts.append(blob)

    def dir(self, name: str) -> None:
        self._entry(name, S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, S_IFREG | mode, data)

    def chardev(self, name: str, major: int, minor: int) -> None:
        self._entry(name, S_IFCHR | 0o600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return b"".join(self.parts)


def build_initramfs(out: Path, agent: Path, modules: list[Path], log: Callable[[str], None]) -> Path:
    busybox = busybox_path()
    if busybox is None:
        raise SetupError("no static busybox (apt-get install busybox-static)")
    archive = Cpio()
    for d in ("bin", "dev", "proc", "sys", "tmp", "lib", "lib/bpfdiff"):
        archive.dir(d)
    archive.chardev("dev/console", 5, 1)   # the kernel opens it for init's stdio before devtmpfs
    archive.file("bin/busybox", Path(busybox).read_bytes(), 0o755)
    archive.file("init", INIT_SCRIPT.encode(), 0o755)
    archive.file("agent", agent.read_bytes(), 0o755)
    for module in modules:
        archive.file(f"lib/bpfdiff/{module.name}", module.read_bytes())
    data = gzip.compress(archive.finish(), compresslevel=6)
    _replace(out, data)
    log(f"initramfs: {out} ({len(data) // 1024} KiB)")
    return out
