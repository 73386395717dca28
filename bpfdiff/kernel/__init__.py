"""The real Linux kernel as an engine: Debian's packaged kernels (or a user's bzImage) under qemu.

* :mod:`bpfdiff.kernel.image` -- fetch and cache a kernel, check its config.
* :mod:`bpfdiff.kernel.initramfs` -- busybox + our agent (``agent.c``) + the channel's modules.
* :mod:`bpfdiff.kernel.protocol` -- the binary frames between host and agent.
* :mod:`bpfdiff.kernel.guest` -- one qemu guest running the agent.
* :mod:`bpfdiff.kernel.engine` -- the ``kernel-jit`` and ``kernel-interp`` engines.
"""
