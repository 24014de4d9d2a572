#!/usr/bin/env bash
# Download the wheels of .ci/gpu-wheels.txt for the lent GPU machine (CPython 3.12, x86-64 Linux) into .whl/,
# with no dependencies resolved (the list names each one the image lacks). Run from anywhere, where pip reaches PyPI.
# The device tool carries at most 64 MiB per call (the working tree included): this fails above 48 MiB of wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
grep -v '^\s*#' .ci/gpu-wheels.txt | sed 's/#.*//' | xargs python3 -m pip download --quiet --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl
bytes=$(du -cb .whl/*.whl | tail -1 | cut -f1)
ls -l .whl/*.whl
echo "gpu wheels: $((bytes / 1024)) KiB in .whl/"
if [ "$bytes" -gt $((48 * 1024 * 1024)) ]; then
    echo "gpu wheels exceed 48 MiB: the device tool carries 64 MiB per call, tree included" >&2
    exit 1
fi
