#!/usr/bin/env bash
# The prepared GPU check, one call: the wheels a bare GPU machine lacks, `pytest -m cuda`, then
# bench/gpu_suite.py (every case, then the nf4 + SpotEdit capped case once more with
# PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True, for the allocator decision), then bench/compute.py's
# W8A8 kernel ratios when time is left. Every table and log
# goes under $OUT (default: gpu-out/). Exit status 1 when a test or a suite case failed.
#
#   bash bench/gpu_wheels.sh        # here, first: the wheels into the git-ignored .whl/ (carry it)
#   bash bench/gpu_run.sh           # on the GPU machine: about 7 minutes on one H100, 8 at most
#   bash bench/gpu_run.sh --cpu     # anywhere: the same steps on the tiny configuration (CI runs it)
#
# The machine needs Python with torch and transformers; lowmem runs from this checkout (PYTHONPATH),
# not installed. GPU_RUN_SECONDS (default 480) bounds the whole run: the suite starts no case after it.
set -uo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
out=${OUT:-gpu-out}
deadline=$((SECONDS + ${GPU_RUN_SECONDS:-480}))
mkdir -p "$out"
export PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
status=0

if compgen -G ".whl/*.whl" >/dev/null; then
    site=$(mktemp -d)
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl || exit 3
    export PYTHONPATH=$site:$PYTHONPATH
fi
"$python" -c "import diffusers, bitsandbytes, optimum.quanto, lowmem.pipeline" > "$out/imports.txt" 2>&1 || {
    cat "$out/imports.txt"; echo "gpu_run: a package is missing (see $out/imports.txt); run bench/gpu_wheels.sh and carry .whl" >&2
    exit 3
}

if [ "${1:-}" = --cpu ]; then
    suite=(--cpu)
else
    suite=()
    nvidia-smi > "$out/nvidia-smi.txt" 2>&1
fi

# 1. The CUDA tests (on the CPU they are collected and skipped).
timeout 150 "$python" -m pytest -m cuda -q -p no:cacheprovider tests > "$out/pytest-cuda.txt" 2>&1 || status=1
tail -n 3 "$out/pytest-cuda.txt"

# 2. The suite: every case, under the card the preset describes.
"$python" bench/gpu_suite.py "${suite[@]}" --out-dir "$out" --time-limit $((deadline - SECONDS - 150)) \
    2> "$out/gpu_suite.log" || status=1
cat "$out/gpu_suite.txt"

# 3. The allocator decision: the 24 GB default case again with expandable segments (GPU only), then
#    the W8A8 kernels' speed against bf16 at full-size shapes (bench/compute.py), in the time left.
if [ ${#suite[@]} -eq 0 ]; then
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True "$python" bench/gpu_suite.py --out-dir "$out" \
        --name gpu_suite_expandable --cases "nf4 + SpotEdit, capped" --time-limit $((deadline - SECONDS - 90)) \
        2>> "$out/gpu_suite.log" || status=1
    cat "$out/gpu_suite_expandable.txt"
    left=$((deadline - SECONDS))
    if [ $left -gt 30 ]; then
        timeout $left "$python" bench/compute.py --device cuda --tokens 1024 8192 --resolution 1024 --repeats 5 \
            --out "$out/compute.json" > "$out/compute.txt" 2>> "$out/gpu_suite.log" || status=1
        cat "$out/compute.txt"
    fi
fi
exit $status
