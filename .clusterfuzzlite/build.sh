#!/bin/bash -eu
# Build one libFuzzer target per kernel profile, as OSS-Fuzz builds Python
# projects: compile_python_fuzzer bundles a target with PyInstaller into one
# file in $OUT.  tests/test_oss_fuzz_build.py runs this script the same way.
#
# - bpfdiff is installed first (not editable): the package is assembled from
#   four folders (bpfdiff/, interp/, jit/, fuzz/), so only the installed copy
#   is whole.
# - The targets are generated, and built, outside the source tree: from
#   inside it, ./bpfdiff (without interp/, jit/, fuzz/) would shadow the
#   installed package.
# - unicorn and capstone are collected whole: their shared libraries and the
#   modules they import at run time are invisible to PyInstaller's analysis.
# - BPFDIFF_FUZZ_PROFILES (space-separated) limits the targets; default: every
#   profile of bpfdiff.profiles.PROFILES.

cd "$SRC/bpfdiff"
pip3 install .

targets="${WORK:-/tmp}/bpfdiff-fuzz-targets"
rm -rf "$targets"
mkdir -p "$targets"
cd "$targets"
# shellcheck disable=SC2086 # the profile list is meant to split
for target in $(python3 -m bpfdiff.fuzz.targets "$targets" ${BPFDIFF_FUZZ_PROFILES:-}); do
  compile_python_fuzzer "$target" \
    --collect-all unicorn --collect-all capstone --collect-submodules bpfdiff
done
