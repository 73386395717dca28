"""The settings a finding is replayed with: one place decides them for every command.

A finding replays as it was found only with the same kernel profile, planted
bugs and engines.  Three sources say what they were, in this order:

1. command-line options (``--profile``, ``--inject``, ``--engines``);
2. the file's ``-- meta`` (``profile``, ``inject``, ``engines``, ``seed``),
   which a campaign writes with every finding;
3. the atheris harness's environment variables, ``BPFDIFF_PROFILE`` and
   ``BPFDIFF_INJECT``: a libFuzzer artifact is raw bytes and records nothing,
   so it replays with the variables it was found with (or the options);

and otherwise the defaults (:data:`bpfdiff.profiles.DEFAULT_PROFILE`, no
planted bug, :data:`DEFAULT_ENGINES`).  ``bpfdiff run``, ``dump``,
``minimize`` and ``triage``, the minimiser and the harness all use
:func:`resolve_settings` (and :func:`load_finding`, which also reads the file).
Bad values are :class:`SettingsError`, one line naming where the value came from.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from bpfdiff.inputs import InputError, load_input
from bpfdiff.scenario import Scenario

ENV_PROFILE = "BPFDIFF_PROFILE"
ENV_INJECT = "BPFDIFF_INJECT"
META_PROFILE = "profile"
META_INJECT = "inject"
META_INJECT_OLD = "bugs"         # what early campaigns wrote
META_ENGINES = "engines"
META_SEED = "seed"
# The engines a finding runs on when nothing says otherwise: the two models,
# which need nothing but this package (the kernel engines need a guest).
DEFAULT_ENGINES = ("interp", "jit")


class SettingsError(InputError, ValueError):
    """A profile, planted bug or engine that does not exist; ``str()`` names where it came from."""


@dataclass(frozen=True, slots=True)
class FindingSettings:
    profile: str
    bugs: frozenset[str]
    engines: tuple[str, ...]
    seed: int | None = None         # the generator seed the finding came from, when recorded


def parse_profile(name: str, where: str) -> str:
    from bpfdiff.profiles import PROFILES

    if name not in PROFILES:
        raise SettingsError(f"{where}: unknown profile {name!r} (known: {', '.join(PROFILES)})")
    return name


def parse_bugs(text: str | Iterable[str], where: str) -> frozenset[str]:
    """Planted bug names, comma- or space-separated (``none`` is no bug)."""
    from bpfdiff.bugs import validate_bugs

    parts = text.replace(" ", ",").split(",") if isinstance(text, str) else list(text)
    names = {name.strip() for name in parts if name.strip() and name.strip() != "none"}
    try:
        return validate_bugs(names)
    except ValueError as exc:
        raise SettingsError(f"{where}: {exc}") from None


def parse_engines(text: str | Iterable[str], where: str = "--engines") -> tuple[str, ...]:
    from bpfdiff.engine import engine_names

    parts = text.split(",") if isinstance(text, str) else list(text)
    names = tuple(dict.fromkeys(name.strip() for name in parts if name.strip()))
    unknown = [name for name in names if name not in engine_names()]
    if not names or unknown:
        raise SettingsError(f"{where}: unknown engine {', '.join(unknown) or '(none given)'} "
                            f"(known: {', '.join(engine_names())})")
    return names


def byte_input_profile(profile: str | None = None, env: Mapping[str, str] = os.environ) -> str:
    """The profile a fuzzer byte input is decoded under, before there is any meta: the option,
    else ``$BPFDIFF_PROFILE``, else the default."""
    from bpfdiff.profiles import DEFAULT_PROFILE

    if profile is not None:
        return parse_profile(profile, "--profile")
    if env.get(ENV_PROFILE):
        return parse_profile(env[ENV_PROFILE], ENV_PROFILE)
    return DEFAULT_PROFILE


def resolve_settings(scenario: Scenario | None, *, profile: str | None = None,
                     inject: str | Iterable[str] | None = None, engines: str | Iterable[str] | None = None,
                     source: str = "<input>", env: Mapping[str, str] = os.environ) -> FindingSettings:
    """Options first, then the scenario's meta, then the environment, then the defaults.

    ``inject`` and ``engines`` may be option text (``"a,b"``) or names;
    ``source`` names the file in error messages.
    """
    from bpfdiff.profiles import DEFAULT_PROFILE

    meta = scenario.meta_dict if scenario is not None else {}
    if profile is not None:
        used_profile = parse_profile(profile, "--profile")
    elif meta.get(META_PROFILE):
        used_profile = parse_profile(meta[META_PROFILE], f"{source}: meta {META_PROFILE}")
    elif env.get(ENV_PROFILE):
        used_profile = parse_profile(env[ENV_PROFILE], ENV_PROFILE)
    else:
        used_profile = DEFAULT_PROFILE
    if inject is not None:
        bugs = parse_bugs(inject, "--inject")
    elif META_INJECT in meta or META_INJECT_OLD in meta:
        key = META_INJECT if META_INJECT in meta else META_INJECT_OLD
        bugs = parse_bugs(meta[key], f"{source}: meta {key}")
    else:
        bugs = parse_bugs(env.get(ENV_INJECT, ""), ENV_INJECT)
    if engines is not None:
        used_engines = parse_engines(engines, "--engines")
    elif meta.get(META_ENGINES):
        used_engines = parse_engines(meta[META_ENGINES], f"{source}: meta {META_ENGINES}")
    else:
        used_engines = DEFAULT_ENGINES
    seed = meta.get(META_SEED)
    try:
        used_seed = int(seed, 0) if seed is not None else None
    except ValueError:
        raise SettingsError(f"{source}: meta {META_SEED}: not an integer: {seed!r}") from None
    return FindingSettings(used_profile, bugs, used_engines, used_seed)


def load_finding(path: str | os.PathLike[str], *, profile: str | None = None,
                 inject: str | Iterable[str] | None = None, engines: str | Iterable[str] | None = None,
                 env: Mapping[str, str] = os.environ,
                 warn: Callable[[str], None] | None = None,
                 notice: Callable[[str], None] | None = None) -> tuple[Scenario, FindingSettings]:
    """Read a scenario, ``.data`` file or atheris artifact and the settings to replay it with.

    An artifact's bytes are decoded under :func:`byte_input_profile`; the
    scenario they give records that profile (and ``$BPFDIFF_INJECT``) in its meta.
    ``warn`` and ``notice`` are :func:`bpfdiff.inputs.load_input`'s.
    """
    scenario = load_input(path, byte_input_profile(profile, env), warn=warn, notice=notice)
    return scenario, resolve_settings(scenario, profile=profile, inject=inject, engines=engines,
                                      source=str(Path(path)), env=env)
