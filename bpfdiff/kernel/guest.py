"""One qemu guest running the bpfdiff agent, and the scenario-level calls on it.

qemu runs with TCG only (KVM opens on these machines but the guest hangs at
boot).  The host listens on two unix sockets that qemu connects to: a
virtio-serial port named ``bpfdiff`` (fast; Debian builds its driver as a
module, loaded by /init) and a second 16550 serial port as the fallback; the
agent says hello on whichever it could open.  The console (ttyS0) goes to a
log file, whose tail is kept when the guest hangs or panics.

qemu is started with PR_SET_PDEATHSIG so that it dies with this process.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bpfdiff.kernel import protocol
from bpfdiff.kernel.image import KernelImage, SetupError, prepared, setup
from bpfdiff.kernel.protocol import Images, Request, ScenarioReply
from bpfdiff.scenario import PROG_XDP, Delete, Load, Run, Scenario, Update
from bpfdiff.xdp import packet_length_error

# seconds from qemu start to the agent's hello: ~4 s on an idle machine, ~50 s measured at load average 11
BOOT_TIMEOUT = 180.0
REQUEST_TIMEOUT = 30.0   # one scenario; a verified program always terminates
CONSOLE_TAIL = 4000      # bytes of console log kept with a crash
EXCERPT = 1400           # characters of it a finding keeps
CLOSED = bytes([protocol.CMD_CLOSED])   # the frame saying a scenario's fds are closed
# lines of the kernel's own words when it fails (lib/bug.c, arch/x86/kernel/dumpstack.c, kernel/panic.c)
CRASH_MARKERS = ("BUG:", "Oops:", "general protection fault", "WARNING:", "Kernel panic", "RIP:")



class GuestError(Exception):
    """The guest could not be started or talked to (one line)."""


class GuestCrashed(GuestError):
    """The guest hung or panicked during a request; ``console_tail`` is the end of its console."""

    def __init__(self, message: str, console_tail: str) -> None:
        super().__init__(message)
        self.console_tail = console_tail

    @property
    def console_excerpt(self) -> str:
        """What a finding keeps of the console: from the first line saying how the kernel failed
        (a BUG, an oops, a panic...), else its end; at most EXCERPT characters."""
        starts = [i for i in (self.console_tail.find(m) for m in CRASH_MARKERS) if i >= 0]
        if not starts:
            return self.console_tail[-EXCERPT:]
        start = self.console_tail.rfind("\n", 0, min(starts)) + 1
        return self.console_tail[start:start + EXCERPT]

    @property
    def crash_site(self) -> str:
        """Where the crash happened, for its signature: the kernel's first line saying how it
        failed (numbers and addresses as N, one word), else what the host saw.  The same
        however the host noticed the death (a closed channel, qemu gone, a timeout)."""
        excerpt = self.console_excerpt
        for marker in CRASH_MARKERS:
            at = excerpt.find(marker)
            if at >= 0:
                line = excerpt[at:].splitlines()[0]
                line = re.sub(r"0x[0-9a-fA-F]+|[0-9a-fA-F]{8,}|\d+", "N", line)
                return re.sub(r"[^A-Za-z0-9_.]+", "-", line).strip("-")[:60]
        return "no-reply" if isinstance(self, GuestHung) else "no-kernel-message"


class GuestDied(GuestCrashed):
    """The channel closed: the kernel panicked (qemu runs with -no-reboot) or the agent exited."""


class GuestHung(GuestCrashed):
    """No reply in time: the kernel or the agent hangs (the guest is killed)."""


class GuestLost(GuestError):
    """The guest died before it started on this request: while it served an earlier request
    (``fatal``, its ticket; that request's owner gets :attr:`death`) or while it was idle
    (``fatal`` None).  The agent answers requests strictly one after the other and reads the
    next only after writing the reply before, so this request played no part: run it again on
    a fresh guest.  ``unclaimed``: no collector will be told of :attr:`death` (the guest died
    idle, or serving a request whose owner abandoned it) -- the one that gets this error must
    report it."""

    def __init__(self, message: str, death: GuestCrashed, fatal: int | None, unclaimed: bool) -> None:
        super().__init__(message)
        self.death = death
        self.fatal = fatal
        self.unclaimed = unclaimed


@dataclass(frozen=True)
class Hello:
    bpf_syscall: bool
    jit_sysctl: bool
    channel: str         # "virtio-serial" or "serial"
    release: str         # uname -r of the guest


@dataclass(frozen=True)
class LoadedProg:
    """A program as the real kernel loaded it (or refused it)."""

    name: str
    error: str | None            # the verifier's message, None when loaded
    errno: int = 0
    xlated: bytes = b""
    jited: bytes = b""
    func_lens: tuple[int, ...] = ()
    ksyms: tuple[int, ...] = ()  # start address of each function's image (main first)


def _pdeathsig() -> None:
    # prctl(PR_SET_PDEATHSIG, SIGKILL): qemu dies when the Python process does.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)
    os.setpgrp()  # and a Ctrl-C on the terminal is ours to handle, not qemu's


# rcupdate.rcu_expedited=1: synchronize_rcu() takes an expedited grace period.  A prog-array
# delete that un-patches a direct tail-call site waits for one (prog_array_map_poke_run), and a
# normal grace period under TCG took 12 ms a delete (0.3 ms expedited): the scenario's largest
# cost.  It changes when RCU callbacks run, never what the verifier or the JIT emit (the fixture
# images in tests/test_kernel_guest.py are byte-identical with it).
KERNEL_CMDLINE = "console=ttyS0 panic=-1 oops=panic loglevel=4 rdinit=/init rcupdate.rcu_expedited=1"


def qemu_command(image: KernelImage, console: Path, vport: Path, serial: Path) -> list[str]:
    append = KERNEL_CMDLINE
    return [
        "qemu-system-x86_64", "-accel", "tcg", "-m", "512", "-smp", "1",
        "-nographic", "-monitor", "none", "-no-reboot",
        "-kernel", str(image.vmlinuz), "-initrd", str(image.initramfs), "-append", append,
        "-chardev", f"file,id=con,path={console}", "-serial", "chardev:con",
        "-chardev", f"socket,id=ser,path={serial}", "-serial", "chardev:ser",
        "-device", "virtio-serial-pci",
        "-chardev", f"socket,id=vp,path={vport}", "-device", "virtserialport,chardev=vp,name=bpfdiff",
        "-net", "none",
    ]


class Guest:
    """A booted guest; not thread-safe (one request at a time)."""

    def __init__(self, image: KernelImage, proc: subprocess.Popen, workdir: Path, sock: socket.socket,
                 others: list[socket.socket], hello: Hello, boot_seconds: float) -> None:
        self.image = image
        self.proc = proc
        self.workdir = workdir
        self.sock = sock
        self._others = others
        self.hello = hello
        self.boot_seconds = boot_seconds
        self.console = workdir / "console.log"
        self.dead = False
        self._inbuf = bytearray()
        # (ticket, sent at, timeout, a scenario: CMD_CLOSED follows its reply) per request not read yet
        self._pending: collections.deque[tuple[int, float, float, bool]] = collections.deque()
        self._closing: int | None = None   # a scenario answered whose fds the agent has not closed yet
        self._next_ticket = 0
        # Replies read while waiting for a later ticket (or salvaged when the guest died), by ticket.
        self._replies: dict[int, bytes] = {}
        self._abandoned: set[int] = set()
        # How the guest died, and the ticket it was serving then (None: it died idle); fatal_closing:
        # it was closing that scenario's fds after its reply.
        self.death: GuestCrashed | None = None
        self.fatal: int | None = None
        self.fatal_closing = False
        self._death_told = False
        self._last_reply = 0.0
        self._timeout = REQUEST_TIMEOUT
        sock.setblocking(False)

    # -- life cycle ---------------------------------------------------------------------------
    @classmethod
    def start(cls, kernel: str | None = None) -> Guest:
        """Boot ``kernel`` (a Debian kernel package name or a bzImage path; default: 6.1), setting it up if needed."""
        from bpfdiff.kernel.image import DEFAULT_KERNEL

        kernel = kernel or DEFAULT_KERNEL
        image = prepared(kernel)
        if image is None:
            try:
                image = setup(kernel)
            except SetupError as exc:
                raise GuestError(str(exc)) from None
        return cls.start_image(image)

    @classmethod
    def start_image(cls, image: KernelImage) -> Guest:
        if shutil.which("qemu-system-x86_64") is None:
            raise GuestError("qemu-system-x86_64 is not installed (bpfdiff kernel setup installs it)")
        workdir = Path(tempfile.mkdtemp(prefix="bpfdiff-guest-"))
        listeners = {}
        for name in ("vport", "serial"):
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(str(workdir / name))
            listener.listen(1)
            listeners[name] = listener
        console = workdir / "console.log"
        started = time.monotonic()
        proc = subprocess.Popen(qemu_command(image, console, workdir / "vport", workdir / "serial"),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=open(workdir / "qemu.err", "wb"), preexec_fn=_pdeathsig)
        conns: list[socket.socket] = []
        try:
            for listener in listeners.values():
                listener.settimeout(15)
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    raise GuestError(f"qemu did not connect its channels: {_tail(workdir / 'qemu.err', 300)}") \
                        from None
                conns.append(conn)
                listener.close()
            deadline = started + BOOT_TIMEOUT
            chosen = None
            while chosen is None:
                left = deadline - time.monotonic()
                if left <= 0 or proc.poll() is not None:
                    what = "exited" if proc.poll() is not None else f"gave no hello within {BOOT_TIMEOUT:.0f} s"
                    raise GuestCrashed(f"guest {what} while booting {image.name}", _tail(console))
                ready, _, _ = select.select(conns, [], [], min(left, 0.5))
                if ready:
                    chosen = ready[0]
            guest = cls(image, proc, workdir, chosen, [c for c in conns if c is not chosen],
                        Hello(False, False, "?", "?"), 0.0)
            payload = guest._read_frame(time.monotonic() + 10)
            if not payload or payload[0] != protocol.CMD_HELLO or len(payload) < 4:
                raise GuestCrashed("the agent's first frame is not a hello", _tail(console))
            guest.hello = Hello(bool(payload[1]), bool(payload[2]),
                                {1: "virtio-serial", 2: "serial"}.get(payload[3], "?"),
                                payload[4:].decode(errors="replace"))
            guest.boot_seconds = time.monotonic() - started
            return guest
        except BaseException:
            proc.kill()
            proc.wait()
            for c in conns:
                c.close()
            shutil.rmtree(workdir, ignore_errors=True)
            raise

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=10)
        for s in (self.sock, *self._others):
            with contextlib.suppress(OSError):
                s.close()
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.dead = True

    def __enter__(self) -> Guest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- frames -------------------------------------------------------------------------------
    # Requests can be queued (``submit`` several, ``collect`` each reply in order): the agent
    # answers them one after the other, so the guest works while the host runs other engines.
    # The socket is non-blocking and every transfer both sends and receives, so a large request
    # never waits for the agent while the agent waits for us to read its reply.
    def _crash(self, why: str, kind: type[GuestCrashed] | None = None) -> GuestCrashed:
        """The guest died (``why``): keep every reply it sent before, note the request it was
        serving (the oldest one without a reply) and its console's tail, and close it."""
        if self.death is not None:
            return self.death
        with contextlib.suppress(OSError):
            while True:   # what the agent sent before dying is ours: read it up to the end
                data = self.sock.recv(1 << 20)
                if not data:
                    break
                self._inbuf += data
        while (frame := self._take_frame()) is not None:
            if frame == CLOSED:
                self._closing = None
            elif self._pending:
                ticket, _, _, closes = self._pending.popleft()
                self._replies[ticket] = frame
                self._closing = ticket if closes else None
        if self._closing is not None:
            # it died closing that scenario's maps and programs: the scenario's fault; its owner
            # hears of it instead of the reply, or nobody will when the reply was collected already
            self.fatal, self.fatal_closing = self._closing, True
            if self._replies.pop(self.fatal, None) is None:
                self._abandoned.add(self.fatal)
        else:
            self.fatal = self._pending[0][0] if self._pending else None
        self.death = (kind or GuestDied)(f"guest {self.image.name}: {why}", _tail(self.console))
        self.close()
        return self.death

    def notice_death(self) -> GuestCrashed | None:
        """If qemu has exited (a panic with -no-reboot) while nobody was waiting on it: how it died."""
        if self.death is None and not self.dead and self.proc.poll() is not None:
            return self._crash(f"qemu exited (status {self.proc.returncode}): the kernel panicked or the agent exited")
        return self.death

    def unclaimed_death(self) -> GuestLost | None:
        """The guest's death as a :class:`GuestLost` if no collector has been or will be told of it."""
        if self.death is None:
            return None
        lost = self._lost(None)
        return lost if lost.unclaimed else None

    def _lost(self, ticket: int | None) -> GuestLost:
        """GuestLost for ``ticket`` (None: a request not sent), after the guest died."""
        assert self.death is not None
        unclaimed = not self._death_told and (self.fatal is None or self.fatal in self._abandoned)
        self._death_told = self._death_told or unclaimed
        if self.fatal is None:
            where = "while idle, after its last reply"
        elif self.fatal_closing:
            where = f"while closing the maps and programs of an earlier scenario (ticket {self.fatal}) after its reply"
        else:
            where = f"while it served an earlier request (ticket {self.fatal})"
        what = f"request {ticket}" if ticket is not None else "this request"
        return GuestLost(f"guest {self.image.name} died {where}, before it started on {what}: {self.death}",
                         self.death, self.fatal, unclaimed)

    def _io(self, out: bytes, need: int, deadline: float) -> None:
        """Send all of ``out`` and receive until the input buffer holds ``need`` bytes."""
        view = memoryview(out)
        sent = 0
        while sent < len(view) or len(self._inbuf) < need:
            left = deadline - time.monotonic()
            # past the deadline, what already waits in the socket still counts (the host may
            # come late to collect a reply); only a guest silent until then hangs
            readable, writable, _ = select.select([self.sock], [self.sock] if sent < len(view) else [], [],
                                                  max(left, 0))
            if left <= 0 and not readable and not writable:
                raise self._crash(f"no reply within {self._timeout:.0f} s (hung)", GuestHung)
            if readable:
                try:
                    data = self.sock.recv(1 << 20)
                except BlockingIOError:
                    data = None
                except OSError as exc:
                    raise self._crash(f"receiving failed: {exc}") from None
                if data == b"":
                    raise self._crash("the channel closed (the guest died: panic or agent exit)")
                if data:
                    self._inbuf += data
            if writable:
                try:
                    sent += self.sock.send(view[sent:sent + (1 << 20)])
                except BlockingIOError:
                    pass
                except OSError as exc:
                    raise self._crash(f"sending failed: {exc}") from None

    def _take_frame(self) -> bytes | None:
        """A whole frame from the input buffer, if one is there."""
        if len(self._inbuf) < 4:
            return None
        (length,) = struct.unpack_from("<I", self._inbuf)
        if len(self._inbuf) < 4 + length:
            return None
        frame = bytes(self._inbuf[4:4 + length])
        del self._inbuf[:4 + length]
        return frame

    def _read_frame(self, deadline: float) -> bytes:
        self._io(b"", 4, deadline)
        (length,) = struct.unpack_from("<I", self._inbuf)
        self._io(b"", 4 + length, deadline)
        frame = self._take_frame()
        assert frame is not None   # _io returned with the whole frame in the buffer
        return frame

    def submit(self, payload: bytes, timeout: float = REQUEST_TIMEOUT) -> int:
        """Queue a request; its reply is ``collect``-ed later (a ticket).  Raises
        :class:`GuestLost` when the guest is found dead (the request was not sent)."""
        if self.death is None and not self.dead:
            self.notice_death()
        if self.death is not None:
            raise self._lost(None)
        if self.dead:
            raise GuestError("the guest is closed")
        self._timeout = timeout
        self._next_ticket += 1
        ticket = self._next_ticket
        self._pending.append((ticket, time.monotonic(), timeout, payload[:1] == bytes([protocol.CMD_SCENARIO])))
        try:
            self._io(struct.pack("<I", len(payload)) + payload, 0, time.monotonic() + timeout)
        except GuestCrashed:
            if self.fatal == ticket:   # the request may be part-sent: it counts as in flight
                raise
            raise self._lost(ticket) from None
        return ticket

    def collect(self, ticket: int) -> bytes:
        """The reply of ``ticket``.  Replies of earlier tickets are kept for their own ``collect``
        (or dropped once ``abandon``-ed).  If the guest dies: :class:`GuestCrashed` when it was
        serving ``ticket``, :class:`GuestLost` when it died before starting on it."""
        while True:
            if ticket in self._replies:
                return self._replies.pop(ticket)
            if self.death is not None:
                if ticket == self.fatal:
                    self._death_told = True
                    raise self.death
                raise self._lost(ticket)
            if self.dead:
                raise GuestError("the guest is closed")
            if not any(entry[0] == ticket for entry in self._pending):
                raise GuestError(f"no request {ticket} is waiting for its reply")
            current, sent, timeout, closes = self._pending[0]
            self._timeout = timeout
            try:
                # the agent starts on a request when it has answered the one before (and closed
                # the fds of a scenario)
                reply = self._read_frame(max(sent, self._last_reply) + timeout)
                while reply == CLOSED:
                    self._closing = None
                    reply = self._read_frame(max(sent, self._last_reply) + timeout)
            except GuestCrashed:
                continue   # settled above: ours, or an earlier request's
            self._pending.popleft()
            self._closing = current if closes else None
            self._last_reply = time.monotonic()
            if current not in self._abandoned:
                self._replies[current] = reply
            self._abandoned.discard(current)

    def abandon(self, ticket: int) -> GuestLost | None:
        """Nobody will collect ``ticket``: drop its reply.  If the guest died serving it, that
        death is returned, for the caller to report; if it dies serving it later, the next
        collector hears of it (:attr:`GuestLost.unclaimed`)."""
        self._replies.pop(ticket, None)
        if any(entry[0] == ticket for entry in self._pending) or ticket == self.fatal:
            self._abandoned.add(ticket)
        return self.unclaimed_death() if ticket == self.fatal else None

    def request(self, payload: bytes, timeout: float = REQUEST_TIMEOUT) -> bytes:
        return self.collect(self.submit(payload, timeout))

    def crash_for_test(self, how: str = "panic", timeout: float = REQUEST_TIMEOUT) -> int:
        """Make the guest die for real (``panic``: sysrq c, an oops that panics; ``hang``: the agent
        stops answering, seen after ``timeout``): collecting the returned ticket raises
        :class:`GuestCrashed`, any request after it :class:`GuestLost`.  For tests of the recovery."""
        return self.submit(bytes([protocol.CMD_DEBUG]) + (b"c" if how == "panic" else b"h"), timeout)

    def ping(self) -> None:
        self.request(bytes([protocol.CMD_PING]))

    def read_file(self, path: str) -> bytes:
        """A file of the guest, e.g. ``/proc/kallsyms`` (the agent runs as root, kptr_restrict 0)."""
        reply = self.request(bytes([protocol.CMD_READ]) + path.encode())
        if reply[:1] != bytes([protocol.CMD_READ]) or len(reply) < 5:
            raise GuestError(f"reading {path} in the guest: malformed reply (an agent built before CMD_READ?)")
        (err,) = struct.unpack("<I", reply[1:5])
        if err:
            raise GuestError(f"reading {path} in the guest: {os.strerror(err)}")
        return reply[5:]

    def stats(self) -> dict[str, tuple[int, float]]:
        """Calls and seconds the agent spent per kind of syscall since the last call (its counters restart)."""
        reply = self.request(bytes([protocol.CMD_STATS]))
        if reply[:1] != bytes([protocol.CMD_STATS]) or len(reply) < 5:
            raise GuestError("stats: malformed reply (an agent built before CMD_STATS?)")
        (n,) = struct.unpack_from("<I", reply, 1)
        out = {}
        for i in range(n):
            calls, ns = struct.unpack_from("<QQ", reply, 5 + 16 * i)
            if calls:
                out[protocol.STAT_NAMES.get(i, f"bpf command {i}")] = (calls, ns / 1e9)
        return out

    # -- scenarios ----------------------------------------------------------------------------
    def send(self, request: Request, maps: list[tuple[int, int, int, int]]) -> ScenarioReply:
        reply = protocol.decode_scenario_reply(self.request(request.encode()), request, maps)
        if reply.malformed:
            raise protocol.ProtocolError("the agent could not parse our request")
        return reply

    def load_programs(self, scenario: Scenario, jit: bool = True) -> list[LoadedProg]:
        """Load every program in declaration order (maps created, no events); images of each."""
        req, maps = build_request(scenario, jit, images=True, events=False)
        reply = self.send(req, maps)
        out = []
        for _kind, name, body in reply.outcomes:
            assert isinstance(body, protocol.LoadReply)
            out.append(_loaded(str(name), body))
        return out

    def images_after_events(self, scenario: Scenario, jit: bool = True) -> list[dict[str, Images]]:
        """Run the scenario; after each event, the images of every program loaded so far."""
        req, maps = build_request(scenario, jit, images=False, events=True, info_after_each=True)
        reply = self.send(req, maps)
        states: list[dict[str, Images]] = [{} for _ in scenario.events]
        for kind, tag, body in reply.outcomes:
            if kind == "info":
                index, name = tag  # type: ignore[misc]
                if index >= 0:
                    states[index][name] = body  # type: ignore[assignment]
            elif kind == "load" and isinstance(body, protocol.LoadReply) and body.retval:
                raise GuestError(f"program refused: {protocol.verifier_message(body.log)}")
        return states

    def execute(self, scenario: Scenario, jit: bool) -> list:
        """The scenario's outcomes on this kernel (see :mod:`bpfdiff.kernel.engine`)."""
        from bpfdiff.kernel.engine import outcomes_from_reply

        req, maps = build_request(scenario, jit, images=False, events=True)
        return outcomes_from_reply(scenario, jit, self.send(req, maps))


def _loaded(name: str, body: protocol.LoadReply) -> LoadedProg:
    if body.retval:
        return LoadedProg(name, protocol.verifier_message(body.log), -body.retval)
    images = body.images or Images(b"", b"", (), ())
    return LoadedProg(name, None, 0, images.xlated, images.jited, images.func_lens, images.ksyms)


def _tail(path: Path, n: int = CONSOLE_TAIL) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-n:].decode(errors="replace")


# -- scenario -> request ---------------------------------------------------------------------
class UnsupportedScenario(Exception):
    """What the kernel engines cannot run by design (e.g. a packet too short for XDP)."""


class BadScenario(Exception):
    """Bad input: every engine refuses it (unknown program, run before load...)."""


def build_request(scenario: Scenario, jit: bool, images: bool, events: bool,
                  info_after_each: bool = False) -> tuple[Request, list[tuple[int, int, int, int]]]:
    from bpfdiff.maps import MapDefinitionError, check_map_def

    if scenario.prog_type != PROG_XDP:
        # "raw" (R1 = the bytes, R2 = their length) is the uBPF convention of .data files:
        # no kernel program type gives R1 that meaning.
        raise UnsupportedScenario(f"program type {scenario.prog_type!r} exists only in our engines "
                                  f"(the kernel runs {PROG_XDP!r})")
    flags = (protocol.FLAG_JIT if jit else 0) | (protocol.FLAG_IMAGES_ON_LOAD if images else 0)
    if not events:
        flags |= protocol.FLAG_CONTINUE
    req = Request(flags)
    map_index: dict[str, int] = {}
    for mapdef in scenario.maps:
        if mapdef.name in map_index:
            raise BadScenario(f"map {mapdef.name!r} is defined twice")
        try:
            check_map_def(mapdef)
        except MapDefinitionError as exc:
            raise BadScenario(str(exc)) from None
        if mapdef.key_size > 512 or mapdef.value_size > 65536:
            raise UnsupportedScenario(f"map {mapdef.name!r}: keys over 512 or values over 64 KiB")
        map_index[mapdef.name] = len(req.maps)
        req.maps.append((protocol.MAP_TYPES[mapdef.kind], mapdef.key_size, mapdef.value_size,
                         mapdef.max_entries))
    prog_index: dict[str, int] = {}
    for prog in scenario.programs:
        if prog.name in prog_index:
            raise BadScenario(f"program {prog.name!r} is defined twice")
        missing = [m for m in prog.map_names if m not in map_index]
        if missing:
            raise BadScenario(f"program {prog.name!r} uses unknown map {missing[0]!r}")
        prog_index[prog.name] = len(req.programs)
        req.programs.append(protocol.encode_program(prog, map_index))
    if len(req.maps) > 64 or len(req.programs) > 64:
        raise UnsupportedScenario("more than 64 maps or programs")
    loaded: list[str] = []

    def after(index: int) -> None:
        if info_after_each:
            for name in loaded:
                req.info(prog_index[name], (index, name))

    if not events:
        for prog in scenario.programs:
            req.load(prog_index[prog.name], prog.name)
        return req, req.maps
    upfront, _ = scenario.load_order()
    for name in upfront:
        req.load(prog_index[name], name)
        loaded.append(name)
    after(-1)   # -1: after the upfront loads
    for index, event in enumerate(scenario.events):
        if isinstance(event, Load):
            if event.prog not in prog_index:
                raise BadScenario(f"event {index}: load of unknown program {event.prog!r}")
            req.load(prog_index[event.prog], index)
            if event.prog not in loaded:
                loaded.append(event.prog)
        elif isinstance(event, Run):
            if event.prog not in loaded:
                raise BadScenario(f"event {index}: run of {event.prog!r}, which is not loaded")
            problem = packet_length_error(len(event.mem))
            if problem is not None:   # bad input for every engine of an XDP scenario
                raise BadScenario(f"event {index}: run of {event.prog!r}: {problem}")
            req.run(prog_index[event.prog], event.mem, index)
        elif isinstance(event, Update):
            _update(req, scenario, event, index, map_index, prog_index)
        elif isinstance(event, Delete):
            if event.map not in map_index:
                raise BadScenario(f"event {index}: unknown map {event.map!r}")
            if len(event.key) != scenario.map(event.map).key_size:
                req.fixed(-22, "delete", index)   # the syscall copies key_size bytes: malformed -> -EINVAL
            else:
                req.delete(map_index[event.map], event.key, index)
        else:
            raise BadScenario(f"event {index}: unknown event {event!r}")
        after(index)
    return req, req.maps


def _update(req: Request, scenario: Scenario, event: Update, index: int, map_index: dict[str, int],
            prog_index: dict[str, int]) -> None:
    if event.map not in map_index:
        raise BadScenario(f"event {index}: unknown map {event.map!r}")
    mapdef = scenario.map(event.map)
    if len(event.key) != mapdef.key_size:
        req.fixed(-22, "update", index)
        return
    if mapdef.kind == "prog_array":
        # A name that is no program (or a byte value) is an fd that is no program: -EBADF after
        # the kernel's own flag and index checks, so the agent passes fd -1.
        prog = prog_index.get(event.value, protocol.NO_PROG) if isinstance(event.value, str) else protocol.NO_PROG
        req.update(map_index[event.map], event.key, prog, event.flags, index)
        return
    if not isinstance(event.value, bytes) or len(event.value) != mapdef.value_size:
        req.fixed(-22, "update", index)
        return
    req.update(map_index[event.map], event.key, event.value, event.flags, index)
