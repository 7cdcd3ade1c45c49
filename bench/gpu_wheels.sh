#!/usr/bin/env bash
# The wheels the GPU machines' image lacks (it has torch, transformers, accelerate, huggingface_hub,
# pillow, pytest), fetched here into the git-ignored .whl/ before a device call, since that machine
# reaches no registry. Python 3.12, x86-64; pinned to the versions tested here (CI takes the newest). About 48 MB, bitsandbytes 43 of it:
# with the ~12 MB tree that is under the 64 MiB a device call may carry.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl \
    diffusers==0.42.1 bitsandbytes==0.50.2 optimum-quanto==0.2.7 importlib_metadata==10.2.0
du -sh .whl
