"""Run in a subprocess by test_planned_load_rss: `lowmem edit --budget` on a model folder, on CPU.

Prints one JSON line: the exit status, and VmHWM (peak RSS of this process image; unlike ru_maxrss
it does not count the parent's memory inherited at fork) after the imports and after the edit.
"""

import json
import sys
from pathlib import Path


def vm_hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def main(model: str, image: str, out: str, budget: str) -> None:
    import torch

    import lowmem.offload.planned_load  # noqa: F401 - every import the edit needs, before the baseline
    import quantize.loader  # noqa: F401
    from lowmem.cli import main as cli

    torch.set_num_threads(1)
    baseline = vm_hwm()
    code = cli(["edit", "--model", model, "--image", image, "--out", out, "--budget", budget, "--device", "cpu",
                "--rotate", "left", "--steps", "2", "--resolution", "64"])
    print(json.dumps({"code": code, "baseline": baseline, "peak": vm_hwm()}))


if __name__ == "__main__":
    main(*sys.argv[1:5])
