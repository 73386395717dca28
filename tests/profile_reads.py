"""What a part of bpfdiff reads of a profile, for the tests of the caches keyed on profile fields
(the verifier model's answers, the oracle's known-bug probes)."""

from __future__ import annotations

import itertools
from typing import Any

from bpfdiff.profiles import PROFILES, Profile, get_profile


class RecordingProfile:
    """Stands in for a profile and records every attribute read, also inside its methods and
    properties (they run with this object as ``self``)."""

    def __init__(self, profile: Profile, reads: set[str]) -> None:
        object.__setattr__(self, "_profile", profile)
        object.__setattr__(self, "_reads", reads)

    def __getattr__(self, name: str) -> Any:
        self._reads.add(name)
        attribute = getattr(type(self._profile), name, None)
        if isinstance(attribute, property):
            return attribute.fget(self)
        if callable(attribute) and not isinstance(getattr(self._profile, name), type):
            return attribute.__get__(self)
        return getattr(self._profile, name)


def every_fixed_variant() -> list[Profile]:
    """Each profile with every combination of its known kernel bugs fixed (the oracle's probes)."""
    out = []
    for base in PROFILES.values():
        commits = [bug.commit for bug in base.kernel_bugs]
        for size in range(len(commits) + 1):
            for together in itertools.combinations(commits, size):
                out.append(get_profile("+".join((base.name, *together))))
    return out
