#!/usr/bin/env bash
# Fill .gpucarry/ (ignored by git) with what benchmarks/gpu_check.sh needs on a device machine that
# has no network: wheels of the packages its image lacks, and the MNIST IDX files.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .gpucarry/wheels
grep -qx '/.gpucarry/' .git/info/exclude 2>/dev/null || echo '/.gpucarry/' >> .git/info/exclude
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .gpucarry/wheels msgspec bitarray
python3 benchmarks/fetch_data.py --dest .gpucarry --only mnist >/dev/null
du -sh .gpucarry
