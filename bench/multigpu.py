"""Past one process: a batch in-process vs over Ray workers, and a CFG-parallel edit vs one process.

Both through the real CLI (`python -m lowmem batch`, `torchrun -m lowmem edit --parallel cfg`) on the
tiny model, on whatever this machine has (CPU figures on a machine without a GPU: label them so):

- batch: the wall time of the same N-job batch (a fresh output folder each) in this process and
  over a local Ray of W workers; the wall time includes starting Python, loading the pipeline and,
  for Ray, starting the cluster and loading one pipeline per worker. In-process runs with all
  threads and with one (each CPU Ray worker gets one CPU, hence one thread).
- CFG parallel: the denoising step time (the run report's "denoise" phase / steps) of one process
  running the [uncond ; cond] batch vs two ranks running one row each and exchanging velocities.
  On the CPU each rank gets one thread (torchrun's default); the single process runs with all
  threads and with one.

    python bench/multigpu.py                  # 20 jobs, 2 Ray workers; CFG at 512 px, 10 steps
    python bench/multigpu.py --fast           # 4 jobs, CFG at 64 px, 4 steps (seconds)
    python bench/multigpu.py --out multigpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

VIEWS = ("left", "right", "back", "front")


def timed(command: list[str], env: dict | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def bench_batch(model: Path, work: Path, jobs: int, workers: int, steps: int, resolution: int) -> dict:
    canvas = np.full((resolution, resolution, 3), (200, 210, 225), dtype=np.uint8)
    canvas[resolution // 3: 2 * resolution // 3, resolution // 3: 2 * resolution // 3] = (180, 60, 40)
    Image.fromarray(canvas).save(work / "scene.png")
    jobs_file = work / "jobs.jsonl"
    jobs_file.write_text("".join(json.dumps({"image": "scene.png", "rotate": VIEWS[i % 4], "seed": i}) + "\n"
                                 for i in range(jobs)))
    base = [sys.executable, "-m", "lowmem", "batch", str(jobs_file), "--model", str(model), "--device", "cpu",
            "--steps", str(steps), "--resolution", str(resolution)]
    local = timed(base + ["--out", str(work / "local")])
    local_one_thread = timed(base + ["--out", str(work / "local1")], env={"OMP_NUM_THREADS": "1"})
    ray = timed(base + ["--out", str(work / "ray"), "--engine", "ray", "--workers", str(workers)])
    same = all(np.array_equal(np.asarray(Image.open(p)), np.asarray(Image.open(work / "ray" / p.name)))
               for p in (work / "local").glob("*.png"))
    return {"jobs": jobs, "workers": workers, "steps": steps, "resolution": resolution, "in_process_s": round(local, 2),
            "in_process_one_thread_s": round(local_one_thread, 2), "ray_s": round(ray, 2),
            "ray_over_in_process": round(ray / local, 3), "ray_over_in_process_one_thread": round(ray / local_one_thread, 3),
            "identical_images": same}


def step_seconds(report: Path, steps: int) -> float:
    return json.loads(report.read_text())["phase_seconds"]["denoise"] / steps


def bench_cfg(model: Path, work: Path, steps: int, resolution: int) -> dict:
    Image.new("RGB", (resolution, resolution), (120, 140, 160)).save(work / "cfg.png")
    edit = ["edit", "--model", str(model), "--image", str(work / "cfg.png"), "--device", "cpu", "--rotate", "left",
            "--steps", str(steps), "--resolution", str(resolution), "--overwrite"]
    one, one_thread = work / "one.json", work / "one1.json"
    timed([sys.executable, "-m", "lowmem", *edit, "--out", str(work / "one.png"), "--report", str(one)])
    timed([sys.executable, "-m", "lowmem", *edit, "--out", str(work / "one.png"), "--report", str(one_thread)],
          env={"OMP_NUM_THREADS": "1"})
    two = work / "two.json"
    timed([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "lowmem", *edit,
           "--out", str(work / "two.png"), "--report", str(two), "--parallel", "cfg"], env={"OMP_NUM_THREADS": "1"})
    single, single_thread, parallel = (step_seconds(report, steps) for report in (one, one_thread, two))
    return {"steps": steps, "resolution": resolution, "one_process_step_s": round(single, 4),
            "one_process_one_thread_step_s": round(single_thread, 4), "cfg_parallel_step_s": round(parallel, 4),
            "parallel_over_one": round(parallel / single, 3), "parallel_over_one_thread": round(parallel / single_thread, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="model folder (default: a tiny seeded one)")
    parser.add_argument("--fast", action="store_true", help="4 jobs; CFG at 64 px, 4 steps")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = args.model
        if model is None:
            from lowmem.tiny.random_model import write_tiny_model

            model = write_tiny_model(work / "tiny")
        device = "CPU" if not __import__("torch").cuda.is_available() else "CPU (the benchmark runs --device cpu)"
        batch = bench_batch(model, work, 4 if args.fast else 20, args.workers, steps=4 if args.fast else 8, resolution=64)
        cfg = bench_cfg(model, work, steps=4 if args.fast else 10, resolution=64 if args.fast else 512)
    print(f"{device} figures, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end")
    print(f"batch of {batch['jobs']} jobs ({batch['steps']} steps, {batch['resolution']} px), wall time incl. start-up:")
    print(f"  in-process, all threads  {batch['in_process_s']:8.2f} s")
    print(f"  in-process, 1 thread     {batch['in_process_one_thread_s']:8.2f} s")
    print(f"  Ray, {batch['workers']} workers x 1 thread {batch['ray_s']:8.2f} s   ({batch['ray_over_in_process']:.2f}x in-process, "
          f"{batch['ray_over_in_process_one_thread']:.2f}x in-process on 1 thread; images identical: {batch['identical_images']})")
    print(f"CFG-parallel denoising step ({cfg['steps']} steps, {cfg['resolution']} px):")
    print(f"  one process, all threads {cfg['one_process_step_s'] * 1000:8.1f} ms")
    print(f"  one process, 1 thread    {cfg['one_process_one_thread_step_s'] * 1000:8.1f} ms")
    print(f"  2 ranks x 1 thread, gloo {cfg['cfg_parallel_step_s'] * 1000:8.1f} ms   ({cfg['parallel_over_one']:.2f}x "
          f"one process, {cfg['parallel_over_one_thread']:.2f}x one process on 1 thread)")
    if args.out:
        args.out.write_text(json.dumps({"device": device, "cores": os.cpu_count(), "batch": batch, "cfg": cfg}, indent=2))


if __name__ == "__main__":
    main()
