"""Run in a subprocess by test_planned_load_rss: `lowmem edit --budget` on a model folder, on CPU.

Prints one JSON line: the exit status, and VmHWM (peak RSS of this process image; unlike ru_maxrss
it does not count the parent's memory inherited at fork) before and after the edit. Before the
baseline the worker imports everything and runs one small edit of another (tiny) model: the first
forward of each kind of op maps libtorch's code and builds kernel caches (~40 MB, once per process),
which is not memory the measured edit holds. The peak is then reset to the current RSS.
"""

import json
import sys
from pathlib import Path


def vm_hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def edit(model: str, image: str, out: str, budget: str) -> int:
    from lowmem.cli import main as cli

    return cli(["edit", "--model", model, "--image", image, "--out", out, "--budget", budget, "--device", "cpu",
                "--rotate", "left", "--steps", "2", "--resolution", "64"])


def main(model: str, image: str, out: str, budget: str, warmup_model: str) -> None:
    import torch

    from lowmem.common.host_memory import return_freed_memory

    torch.set_num_threads(1)
    if edit(warmup_model, image, out + ".warmup.png", budget) != 0:
        raise RuntimeError("the warm-up edit failed")
    return_freed_memory()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := the current RSS
    baseline = vm_hwm()
    code = edit(model, image, out, budget)
    print(json.dumps({"code": code, "baseline": baseline, "peak": vm_hwm()}))


if __name__ == "__main__":
    main(*sys.argv[1:6])
