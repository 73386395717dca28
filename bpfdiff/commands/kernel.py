"""``bpfdiff kernel``: the real kernel under qemu -- set it up, boot it.

    bpfdiff kernel setup [--kernel NAME|PATH] [--profile P]   fetch/build what the guest needs (idempotent)
    bpfdiff kernel boot  [--kernel NAME|PATH] [--profile P]   boot it once, report the agent and timings

NAME is a Debian kernel package (see ``bpfdiff.kernel.image.DEBIAN_KERNELS``),
PATH a bzImage one built (``arch/x86/boot/bzImage``).  Every step that cannot be
done is a one-line error and exit 2.
"""

from __future__ import annotations

import argparse
import sys
import time

from bpfdiff.kernel.image import DEBIAN_KERNELS, SetupError, profile_kernel, setup

NAME = "kernel"
HELP = "the real kernel under qemu: set up a Debian kernel or your own bzImage, boot it"


def _log(message: str) -> None:
    print(f"bpfdiff kernel: {message}", file=sys.stderr)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="kernel_command", metavar="ACTION", required=True)
    for action, text in (("setup", "download a Debian kernel (or take a bzImage), build the agent and initramfs"),
                         ("boot", "boot the kernel once and report the agent's channel and timings")):
        p = sub.add_parser(action, help=text, description=text)
        p.add_argument("--kernel", metavar="NAME|PATH",
                       help=f"a Debian kernel package ({', '.join(DEBIAN_KERNELS)}) or a bzImage path "
                            "(default: the profile's kernel)")
        p.add_argument("--profile", default="linux-6.1", help="profile whose kernel to use (default: %(default)s)")
        p.add_argument("--force", action="store_true", help="redo every step even if the cache is complete")
        p.set_defaults(_kernel_main={"setup": _setup, "boot": _boot}[action])
    _add_compare_jit(sub)
    _add_capture(sub)


def _add_capture(sub: argparse._SubParsersAction) -> None:
    """``bpfdiff kernel capture``: fixtures of the real kernel's code and outcomes (:mod:`bpfdiff.kernel_fixtures`)."""
    from bpfdiff import kernel_fixtures

    text = "run scenarios on the real kernel and write its code and outcomes as fixtures our profile is checked against"
    p = sub.add_parser("capture", help=text, description=text)
    kernel_fixtures.add_arguments(p)
    p.set_defaults(_kernel_main=kernel_fixtures.main)


def _add_compare_jit(sub: argparse._SubParsersAction) -> None:
    """``bpfdiff kernel compare-jit``: our xlated programs and images against the kernel's
    (:mod:`bpfdiff.compare_jit`)."""
    from bpfdiff import compare_jit

    text = "compare our profile's xlated programs and JIT images with the real kernel's, byte for byte"
    p = sub.add_parser("compare-jit", help=text, description=text)
    compare_jit.add_arguments(p)
    p.set_defaults(_kernel_main=compare_jit.main)


def _kernel_of(args: argparse.Namespace) -> str:
    return args.kernel or profile_kernel(args.profile)


def _setup(args: argparse.Namespace) -> int:
    image = setup(_kernel_of(args), log=_log, force=args.force)
    print(f"kernel {image.name}")
    print(f"vmlinuz {image.vmlinuz}")
    print(f"initramfs {image.initramfs}")
    print(f"modules {' '.join(image.modules) or '(none)'}")
    return 0


def _boot(args: argparse.Namespace) -> int:
    from bpfdiff.kernel.guest import Guest, GuestError

    image = setup(_kernel_of(args), log=_log, force=args.force)
    started = time.monotonic()
    try:
        guest = Guest.start_image(image)
    except GuestError as exc:
        tail = getattr(exc, "console_tail", "")
        if tail:
            print(tail, file=sys.stderr)
        raise SetupError(str(exc)) from None
    with guest:
        print(f"kernel {guest.hello.release}: agent on {guest.hello.channel} after {guest.boot_seconds:.1f} s")
        t = time.monotonic()
        for _ in range(100):
            guest.ping()
        print(f"round trip {(time.monotonic() - t) * 10:.2f} ms")
    print(f"total {time.monotonic() - started:.1f} s")
    return 0


def main(args: argparse.Namespace) -> int:
    try:
        return int(args._kernel_main(args))
    except SetupError as exc:
        print(f"bpfdiff: error: {exc}", file=sys.stderr)
        return 2
