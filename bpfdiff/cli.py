"""The ``bpfdiff`` command line: one subcommand per module in :mod:`bpfdiff.commands`.

Exit codes: 0 success (engines agree), 1 a finding or failure, 2 bad input,
130 interrupted.  Bad input never shows a traceback: the error is one line on
stderr naming the file and place.  Every command reports errors the same way:
``bpfdiff: error: ...`` (:data:`ERROR_PREFIX`), bad options included.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import NoReturn

# Subcommands, in the order `bpfdiff --help` lists them.  Each is a module
# bpfdiff.commands.<name> with NAME, HELP, add_arguments(parser), main(args).
COMMANDS = ("run", "conformance", "dump", "fuzz", "bugs", "minimize", "triage", "corpus", "kernel")

EXIT_OK = 0
EXIT_FINDING = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
ERROR_PREFIX = "bpfdiff: error: "
WARNING_PREFIX = "bpfdiff: warning: "


def error_line(message: str) -> str:
    """The one line every command prints on stderr for an error."""
    return ERROR_PREFIX + message


class _ArgumentParser(argparse.ArgumentParser):
    """argparse, but its errors carry the same prefix as every other error (and exit 2, as before)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        command = self.prog.removeprefix("bpfdiff").strip()
        self.exit(EXIT_BAD_INPUT, error_line(f"{command}: {message}" if command else message) + "\n")


def available_commands() -> dict[str, ModuleType]:
    """Every subcommand's module, by name (an import error is a real bug: it propagates)."""
    return {name: importlib.import_module(f"bpfdiff.commands.{name}") for name in COMMANDS}


def build_parser(commands: dict[str, ModuleType] | None = None) -> argparse.ArgumentParser:
    commands = available_commands() if commands is None else commands
    parser = _ArgumentParser(
        prog="bpfdiff",
        description="Differential testing of the eBPF x86-64 JIT against a reference interpreter.",
    )
    parser.add_argument("--version", action="version", version=f"bpfdiff {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in commands.items():
        command = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        command.set_defaults(_main=module.main)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bpfdiff")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "(not installed)"


def _input_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "bad input": reported in one line, exit 2."""
    from bpfdiff.engine import EngineError
    from bpfdiff.inputs import InputError
    from bpfdiff.limits import InputTooLarge
    from bpfdiff.scenario_text import ScenarioSyntaxError

    errors: list[type[BaseException]] = [InputError, ScenarioSyntaxError, EngineError, InputTooLarge]
    for module_name, attr in (("bpfdiff.asm", "AsmError"), ("bpfdiff.datafile", "DataFileError")):
        if importlib.util.find_spec(module_name) is not None:
            errors.append(getattr(importlib.import_module(module_name), attr))
    return tuple(errors)


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        code = int(args._main(args))
        sys.stdout.flush()  # a closed pipe shows up here, inside the handler below
        return code
    except KeyboardInterrupt:
        print("bpfdiff: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `bpfdiff ... | head`: the reader is gone; keep the interpreter's
        # final flush of stdout from failing again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except _input_errors() as exc:
        print(error_line(_one_line(exc)), file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
