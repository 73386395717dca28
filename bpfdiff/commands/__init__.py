"""Subcommands of the ``bpfdiff`` CLI.

Each module here defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and
``main(args) -> int``; :mod:`bpfdiff.cli` lists the modules in ``COMMANDS``.
Exit codes: 0 success / all agree, 1 finding or failure, 2 bad input.
"""
