"""Kernels to boot: Debian's packaged kernels (fetched with apt, never installed) or a user's bzImage.

Everything lives under ``$XDG_CACHE_HOME/bpfdiff`` (default ``~/.cache/bpfdiff``)::

    kernels/<name>/vmlinuz          the kernel
    kernels/<name>/config           its build config (absent for a bzImage without one)
    kernels/<name>/modules/*.ko     the modules the host channel needs, uncompressed, in load order
    kernels/<name>/agent-<digest>   the agent built from agent.c (digest: of its source)
    kernels/<name>/initramfs-<digest>.gz   busybox + that agent + modules (see initramfs.py)
    kernels/<name>/ready.json       written last: the kernel's part of set-up is complete
    apt/<suite>/                    a private apt configuration for suites the system does not list

The package mirror is read from the system's apt sources at run time (never
written into this repository); other suites are added through a private
sources list and lists directory passed with ``apt-get -o``, so the system's
apt configuration is never changed.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import lzma
import os
import re
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bpfdiff.profiles import get_profile


class SetupError(Exception):
    """A set-up step that cannot be done; the message is one line."""


@dataclass(frozen=True)
class DebianKernel:
    package: str
    suite: str           # the Debian release that ships it
    version: str         # kernel version it reports, for humans


# The kernels of the profiles (what real-kernels.md measured).
DEBIAN_KERNELS: dict[str, DebianKernel] = {k.package: k for k in (
    DebianKernel("linux-image-6.1.0-56-amd64", "bookworm", "6.1.192"),
    DebianKernel("linux-image-6.12.117+deb13-amd64", "trixie", "6.12.117"),
    DebianKernel("linux-image-5.10.0-32-amd64", "bullseye", "5.10.223"),
)}

# Profile name -> the Debian kernel it models (a profile's variants, e.g.
# "linux-6.1+fix", use their base profile's kernel).
PROFILE_KERNELS: dict[str, str] = {
    "linux-6.1": "linux-image-6.1.0-56-amd64",
    "linux-6.12": "linux-image-6.12.117+deb13-amd64",
    "linux-5.10": "linux-image-5.10.0-32-amd64",
}
DEFAULT_KERNEL = PROFILE_KERNELS["linux-6.1"]

# Built as modules by Debian; the agent's fast channel (virtio-serial) needs them.
CHANNEL_MODULES = ("virtio_pci", "virtio_console")
CHANNEL_CONFIG = {"virtio_pci": "CONFIG_VIRTIO_PCI", "virtio_console": "CONFIG_VIRTIO_CONSOLE"}
REQUIRED_CONFIG = ("CONFIG_BPF_SYSCALL", "CONFIG_BPF_JIT")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "bpfdiff"


@dataclass(frozen=True)
class KernelImage:
    """A kernel ready to boot."""

    name: str                  # package name, or the bzImage's path
    dir: Path
    vmlinuz: Path
    initramfs: Path
    config: dict[str, str] | None  # CONFIG_* -> value, None when unknown (a bzImage without .config)
    modules: tuple[str, ...]   # module file names in load order

    @property
    def marker(self) -> Path:
        return self.dir / "ready.json"


def profile_kernel(profile: str) -> str:
    """The default kernel of a profile (name or variant such as ``linux-6.1+abc``)."""
    base = get_profile(profile).name.split("+")[0]
    try:
        return PROFILE_KERNELS[base]
    except KeyError:
        raise SetupError(f"profile {profile!r} has no real kernel (known: {', '.join(PROFILE_KERNELS)})") from None


def is_path(kernel: str) -> bool:
    return "/" in kernel or os.path.exists(kernel)


def kernel_dir(kernel: str) -> Path:
    if is_path(kernel):
        path = Path(kernel).resolve()
        stat = path.stat() if path.exists() else None
        ident = f"{path}:{stat.st_size if stat else 0}:{stat.st_mtime_ns if stat else 0}"
        return cache_dir() / "kernels" / f"bzimage-{hashlib.sha256(ident.encode()).hexdigest()[:16]}"
    return cache_dir() / "kernels" / kernel


def prepared(kernel: str) -> KernelImage | None:
    """The kernel if ``setup`` completed for it (no network, no building), else None."""
    image = _kernel_part(kernel)
    # without an initramfs of this agent.c (an older one answers fewer requests) setup builds it
    if image is None or not image.initramfs.exists():
        return None
    return image


def _kernel_part(kernel: str) -> KernelImage | None:
    """The kernel's prepared part (image, config, modules), whether or not this agent is built for it."""
    from bpfdiff.kernel.initramfs import initramfs_path

    marker = kernel_dir(kernel) / "ready.json"
    if not marker.exists():
        return None
    try:
        data = json.loads(marker.read_text())
        return KernelImage(name=data["name"], dir=marker.parent, vmlinuz=Path(data["vmlinuz"]),
                           initramfs=initramfs_path(marker.parent), config=data["config"],
                           modules=tuple(data["modules"]))
    except (OSError, ValueError, KeyError):
        return None


def parse_config(text: str) -> dict[str, str]:
    config = {}
    for line in text.splitlines():
        m = re.match(r"(CONFIG_\w+)=(.*)", line)
        if m:
            config[m.group(1)] = m.group(2)
    return config


def check_config(config: dict[str, str], where: str) -> None:
    for option in REQUIRED_CONFIG:
        if config.get(option) != "y":
            raise SetupError(f"{where}: {option} is not set: the kernel cannot load or JIT BPF programs")


def _run(cmd: list[str], what: str, cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise SetupError(f"{what}: {cmd[0]} is not installed") from None
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip() and not ln.startswith("W:")]
        raise SetupError(f"{what}: {' '.join(cmd[:3])} failed: {lines[-1] if lines else f'exit {proc.returncode}'}")
    return proc.stdout


# -- host tools ----------------------------------------------------------------------------
HOST_TOOLS = {"qemu-system-x86_64": "qemu-system-x86", "busybox": "busybox-static", "gcc": "gcc"}


def busybox_path() -> str | None:
    """A statically linked busybox (the initramfs has no libc)."""
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        if os.path.exists(candidate) and _is_static(candidate):
            return candidate
    return None


def _is_static(path: str) -> bool:
    # A dynamically linked ELF has a PT_INTERP program header (".interp").
    with open(path, "rb") as f:
        data = f.read(1 << 20)
    return b"/lib64/ld-linux" not in data and b"/lib/ld-linux" not in data


def ensure_host_tools(log: Callable[[str], None]) -> None:
    """Install qemu-system-x86, busybox-static and gcc with apt-get when missing."""
    missing = [pkg for tool, pkg in HOST_TOOLS.items()
               if (busybox_path() is None if tool == "busybox" else shutil.which(tool) is None)]
    if not missing:
        return
    if os.geteuid() != 0:
        raise SetupError(f"missing {', '.join(missing)}: install them (apt-get install {' '.join(missing)})")
    log(f"installing {', '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    proc = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *missing],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        _run(["apt-get", "update"], "apt-get update")
        proc = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *missing],
                              capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise SetupError(f"apt-get install {' '.join(missing)} failed: {last}")


# -- apt: the system's mirrors and a private configuration ------------------------------------------
def system_mirrors(etc: Path = Path("/etc/apt")) -> tuple[str, str | None]:
    """(archive URI, security URI) from the system's apt sources (deb822 or one-line)."""
    archive: str | None = None
    security: str | None = None
    entries: list[tuple[list[str], list[str]]] = []   # (uris, suites)
    sources_d = etc / "sources.list.d"
    for path in sorted(sources_d.glob("*.sources")) if sources_d.is_dir() else []:
        for stanza in re.split(r"\n\s*\n", path.read_text(errors="replace")):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                m = re.match(r"([A-Za-z-]+):\s*(.*)", line)
                if m and not line.startswith("#"):
                    fields[m.group(1).lower()] = m.group(2)
            if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes") != "no":
                entries.append((fields.get("uris", "").split(), fields.get("suites", "").split()))
    one_line = [etc / "sources.list", *(sorted(sources_d.glob("*.list")) if sources_d.is_dir() else [])]
    for path in one_line:
        if path.exists():
            for line in path.read_text(errors="replace").splitlines():
                m = re.match(r"deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", line.strip())
                if m:
                    entries.append(([m.group(1)], [m.group(2)]))
    others: list[str] = []
    for uris, suites in entries:
        for uri in uris:
            if any(s.endswith("-security") for s in suites) or "security" in uri:
                security = security or uri.rstrip("/")
            elif uri.rstrip("/").endswith("/debian"):
                archive = archive or uri.rstrip("/")
            else:
                others.append(uri.rstrip("/"))
    archive = archive or (others[0] if others else None)
    if archive is None:
        raise SetupError("no Debian archive in the system's apt sources (/etc/apt/sources.list.d/*.sources)")
    return archive, security


def _private_apt(suite: str, log: Callable[[str], None]) -> list[str]:
    """apt-get options for a private configuration listing ``suite`` (updated once)."""
    archive, security = system_mirrors()
    root = cache_dir() / "apt" / suite
    lists = root / "lists"
    (lists / "partial").mkdir(parents=True, exist_ok=True)
    (root / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
    signed = f"[signed-by={keyring}] " if os.path.exists(keyring) else ""
    lines = [f"deb {signed}{archive} {suite} main", f"deb {signed}{archive} {suite}-updates main"]
    if security:
        lines.append(f"deb {signed}{security} {suite}-security main")
    sources = root / "sources.list"
    text = "\n".join(lines) + "\n"
    fresh = not sources.exists() or sources.read_text() != text or not any(lists.glob("*Packages*"))
    sources.write_text(text)
    options = ["-o", f"Dir::Etc::sourcelist={sources}", "-o", "Dir::Etc::sourceparts=-",
               "-o", f"Dir::State::Lists={lists}", "-o", f"Dir::Cache={root / 'cache'}",
               "-o", "APT::Sandbox::User=root"]
    if fresh:
        log(f"apt-get update ({suite}, private configuration in {root})")
        _run(["apt-get", *options, "update"], f"apt-get update for {suite}")
    return options


def _system_suite() -> str | None:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return None
    m = re.search(r"^VERSION_CODENAME=(\w+)", text, re.M)
    return m.group(1) if m else None


def download_package(kernel: DebianKernel, dest: Path, log: Callable[[str], None]) -> Path:
    """``apt-get download`` the package into ``dest`` (once)."""
    existing = sorted(dest.glob(f"{kernel.package}_*.deb"))
    if existing:
        return existing[-1]
    dest.mkdir(parents=True, exist_ok=True)
    if kernel.suite == _system_suite():
        options = ["-o", "APT::Sandbox::User=root"]
        log(f"apt-get download {kernel.package}")
        proc = subprocess.run(["apt-get", *options, "download", kernel.package], cwd=dest,
                              capture_output=True, text=True)
        if proc.returncode != 0:   # lists may be stale or missing
            _run(["apt-get", "update"], "apt-get update")
            _run(["apt-get", *options, "download", kernel.package], f"apt-get download {kernel.package}", dest)
    else:
        options = _private_apt(kernel.suite, log)
        log(f"apt-get download {kernel.package} ({kernel.suite})")
        _run(["apt-get", *options, "download", kernel.package], f"apt-get download {kernel.package}", dest)
    found = sorted(dest.glob(f"{kernel.package}_*.deb"))
    if not found:
        raise SetupError(f"apt-get download {kernel.package}: no .deb appeared in {dest}")
    return found[-1]


# -- extracting what we need from the package ----------------------------------------------
def _decompress(name: str, data: bytes) -> bytes:
    if name.endswith(".xz"):
        return lzma.decompress(data)
    if name.endswith(".zst"):
        try:
            import zstandard  # type: ignore[import-not-found]
            return zstandard.ZstdDecompressor().decompressobj().decompress(data)
        except ImportError:
            pass
        try:
            return subprocess.run(["zstd", "-dc"], input=data, capture_output=True, check=True).stdout
        except (FileNotFoundError, subprocess.CalledProcessError):
            raise SetupError(f"{name}: a zstd-compressed module and no zstd to decompress it") from None
    if name.endswith(".gz"):
        import gzip
        return gzip.decompress(data)
    return data


def module_name(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    base = re.sub(r"\.ko(\.\w+)?$", "", base)
    return base.replace("-", "_")


def module_depends(ko: bytes) -> list[str]:
    """The ``depends=`` field of a module's .modinfo section."""
    m = re.search(rb"(?:^|\x00)depends=([^\x00]*)\x00", ko)
    if not m or not m.group(1):
        return []
    return [d.decode().replace("-", "_") for d in m.group(1).split(b",") if d]


def extract_deb(deb: Path, out: Path, log: Callable[[str], None]) -> tuple[Path, Path, dict[str, bytes]]:
    """vmlinuz, config and every virtio module (uncompressed, by module name) of a kernel package.

    ``dpkg-deb --fsys-tarfile`` streams the package's files; we keep only what
    the guest needs instead of writing the ~400 MB module tree to disk.
    """
    log(f"dpkg-deb: extracting {deb.name}")
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    vmlinuz = config = None
    modules: dict[str, bytes] = {}
    assert proc.stdout is not None
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                name = member.name
                if not member.isfile():
                    continue
                is_module = re.search(r"/kernel/drivers/(virtio/|char/virtio_console)[^/]*\.ko", name)
                if not (re.search(r"boot/(vmlinuz|config)-", name) or is_module):
                    continue
                f = tar.extractfile(member)
                assert f is not None
                data = f.read()
                if "boot/vmlinuz-" in name:
                    vmlinuz = out / "vmlinuz"
                    vmlinuz.write_bytes(data)
                elif "boot/config-" in name:
                    config = out / "config"
                    config.write_bytes(data)
                else:
                    modules[module_name(name)] = _decompress(name, data)
    finally:
        proc.stdout.close()
        if proc.wait() != 0:
            raise SetupError(f"dpkg-deb --fsys-tarfile {deb} failed (exit {proc.returncode})")
    if vmlinuz is None or config is None:
        raise SetupError(f"{deb.name}: no boot/vmlinuz-* or boot/config-* in the package")
    return vmlinuz, config, modules


def channel_modules(config: dict[str, str], available: dict[str, bytes]) -> list[str]:
    """Modules to insmod, dependencies first, for the virtio-serial channel ([] if built in)."""
    order: list[str] = []

    def visit(name: str, trail: tuple[str, ...]) -> None:
        if name in order or name in trail:
            return
        if name not in available:
            return   # built in (or not needed): insmod of the rest fails visibly in the console log
        for dep in module_depends(available[name]):
            visit(dep, (*trail, name))
        order.append(name)

    for module in CHANNEL_MODULES:
        if config.get(CHANNEL_CONFIG[module]) == "m":
            visit(module, ())
    return order


# -- set-up ---------------------------------------------------------------------------------
def setup(kernel: str | None = None, profile: str | None = None,
          log: Callable[[str], None] = lambda _msg: None, force: bool = False) -> KernelImage:
    """Prepare ``kernel`` (a Debian package name or a bzImage path; default: the profile's kernel)."""
    if kernel is None:
        kernel = profile_kernel(profile) if profile else DEFAULT_KERNEL
    if not force:
        ready = _ready(kernel)
        if ready is not None:
            return ready
    if not is_path(kernel) and kernel not in DEBIAN_KERNELS:
        raise SetupError(f"unknown kernel {kernel!r} (known: {', '.join(DEBIAN_KERNELS)}, or a bzImage path)")
    if is_path(kernel):
        _check_bzimage(Path(kernel))
    out = kernel_dir(kernel)
    out.mkdir(parents=True, exist_ok=True)
    # Several processes may set up the same kernel at once (fuzz --jobs N, parallel test
    # runs): one prepares it under the lock, the others wait and take its result, instead
    # of deleting the modules and initramfs another process is still building.
    with open(out / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force:
            ready = _ready(kernel)
            if ready is not None:
                return ready
            part = _kernel_part(kernel)
            if part is not None and part.vmlinuz.exists():
                return _build_guest_files(part, log)   # a new agent.c: the kernel is ready already
        return _prepare(kernel, out, log)


def _ready(kernel: str) -> KernelImage | None:
    ready = prepared(kernel)
    if ready is not None and ready.vmlinuz.exists() and ready.initramfs.exists():
        return ready
    return None


def _prepare(kernel: str, out: Path, log: Callable[[str], None]) -> KernelImage:
    from bpfdiff.kernel.initramfs import initramfs_path

    ensure_host_tools(log)
    modules_dir = out / "modules"
    if modules_dir.exists():
        shutil.rmtree(modules_dir)
    modules_dir.mkdir()
    module_files: list[str] = []
    if is_path(kernel):
        src = Path(kernel)
        config = _tree_config(src)
        vmlinuz = out / "vmlinuz"
        shutil.copyfile(src, vmlinuz)
        if config is not None:
            # Modules built in the same tree (`make modules`) give the fast channel when virtio
            # is not built in; without them the agent falls back to the (slow) second serial port.
            tree = src.resolve().parents[3]
            available = {module_name(str(ko)): ko.read_bytes()
                         for ko in [*tree.glob("drivers/virtio/*.ko"), *tree.glob("drivers/char/virtio_console.ko")]}
            for i, name in enumerate(channel_modules(config, available)):
                filename = f"{i:02d}-{name}.ko"
                (modules_dir / filename).write_bytes(available[name])
                module_files.append(filename)
    else:
        deb = download_package(DEBIAN_KERNELS[kernel], out, log)
        vmlinuz, config_path, available = extract_deb(deb, out, log)
        config = parse_config(config_path.read_text(errors="replace"))
        check_config(config, f"{kernel}: boot/config")
        for i, name in enumerate(channel_modules(config, available)):
            filename = f"{i:02d}-{name}.ko"
            (modules_dir / filename).write_bytes(available[name])
            module_files.append(filename)
    image = _build_guest_files(KernelImage(name=kernel, dir=out, vmlinuz=vmlinuz, initramfs=initramfs_path(out),
                                           config=config, modules=tuple(module_files)), log)
    if is_path(kernel):
        _probe_bzimage(image, log)
    image.marker.write_text(json.dumps({
        "name": image.name, "vmlinuz": str(image.vmlinuz), "initramfs": str(image.initramfs),
        "config": image.config, "modules": list(image.modules)}, indent=1))
    return image


def _build_guest_files(image: KernelImage, log: Callable[[str], None]) -> KernelImage:
    """The agent and the initramfs of this agent.c for a prepared kernel."""
    from bpfdiff.kernel.initramfs import build_agent, build_initramfs

    agent = build_agent(image.dir, log)
    build_initramfs(image.initramfs, agent, [image.dir / "modules" / m for m in image.modules], log)
    return image


def _check_bzimage(src: Path) -> None:
    if not src.is_file():
        raise SetupError(f"{src}: no such kernel image")
    with open(src, "rb") as f:
        head = f.read(0x210)
    # A bzImage carries the "HdrS" boot protocol magic at 0x202 (Documentation/x86/boot.rst).
    if head[0x202:0x206] != b"HdrS":
        raise SetupError(f"{src}: not a bzImage (no x86 boot header)")
    _tree_config(src)


def _tree_config(src: Path) -> dict[str, str] | None:
    """The .config of the tree arch/x86/boot/bzImage was built in, checked; None when not beside it."""
    parents = src.resolve().parents
    tree_config = parents[3] / ".config" if len(parents) > 3 else None
    if tree_config is None or not tree_config.is_file():
        return None
    config = parse_config(tree_config.read_text(errors="replace"))
    check_config(config, str(tree_config))
    return config


def _probe_bzimage(image: KernelImage, log: Callable[[str], None]) -> None:
    """Boot a user's kernel once: the agent must answer and bpf(2) must work."""
    from bpfdiff.kernel.guest import Guest, GuestError

    log(f"booting {image.name} to check it")
    try:
        guest = Guest.start_image(image)
    except GuestError as exc:
        raise SetupError(f"{image.name}: {exc}") from None
    try:
        hello = guest.hello
        if not hello.bpf_syscall:
            raise SetupError(f"{image.name}: bpf(2) is not available (CONFIG_BPF_SYSCALL is not set)")
        if not hello.jit_sysctl:
            raise SetupError(f"{image.name}: no net.core.bpf_jit_enable (CONFIG_BPF_JIT is not set)")
    finally:
        guest.close()


def describe(image: KernelImage) -> str:
    buf = io.StringIO()
    buf.write(f"kernel {image.name}: {image.vmlinuz}\n")
    buf.write(f"initramfs {image.initramfs} ({', '.join(image.modules) or 'no modules'})\n")
    return buf.getvalue()
