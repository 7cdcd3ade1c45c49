"""Peak RAM of the streaming converter stays near one block, for a model many blocks large."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lowmem.models.dit_config import DiTConfig

# ~230 MB of bf16 DiT weights in 8 blocks of ~28 MB each.
MEDIUM = DiTConfig(hidden_size=768, heads_num=6, mm_double_blocks_depth=8, text_states_dim=64, rope_dim_list=(16, 56, 56))

CHILD = r"""
import json, resource, sys
from pathlib import Path
from quantize import convert

def hwm():
    # Peak RSS of this process image. ru_maxrss would also count the pytest parent's pages that
    # the fork inherited before exec; VmHWM is ru_maxrss's figure for this address space alone.
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

src, tiny, out = sys.argv[1:4]
result = {}
for scheme in ("int8", "nf4"):
    convert(tiny, Path(out) / f"warm-{scheme}", scheme, components=("dit",), progress=False, print_table=False)  # lazy imports
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    base = hwm()
    convert(src, Path(out) / f"big-{scheme}", scheme, components=("dit",), progress=False, print_table=False)
    result[scheme] = {"base": base, "peak": hwm()}
result["ru_maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps(result))
"""


@pytest.fixture(scope="module")
def medium_model(tmp_path_factory):
    from lowmem.tiny.random_model import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("medium") / "m", dit_config=MEDIUM)


@pytest.mark.slow
def test_peak_rss_is_about_one_block(medium_model, tiny_model, tmp_path):
    from safetensors import safe_open

    from lowmem.models.layout import open_model_folder

    sizes: dict[str, int] = {}
    for name, shard in open_model_folder(medium_model).dit_shards().items():
        with safe_open(shard, "pt") as f:
            sl = f.get_slice(name)
            numel = 1
            for d in sl.get_shape():
                numel *= d
        unit = ".".join(name.split(".")[:2]) if name.startswith("double_blocks.") else "rest"
        sizes[unit] = sizes.get(unit, 0) + 2 * numel
    block, total = max(sizes.values()), sum(sizes.values())
    assert total > 6 * block
    proc = subprocess.run([sys.executable, "-c", CHILD, str(medium_model), str(tiny_model), str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for scheme in ("int8", "nf4"):
        r = result[scheme]
        grew = r["peak"] - r["base"]
        print(f"{scheme}: model {total / 2**20:.0f} MiB, largest block {block / 2**20:.1f} MiB, "
              f"baseline RSS {r['base'] / 2**20:.0f} MiB, peak {r['peak'] / 2**20:.0f} MiB (+{grew / 2**20:.1f} MiB)")
        assert r["peak"] < r["base"] + 2 * block, scheme
