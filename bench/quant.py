"""int8 / nf4 (each backend) against bf16 on a seeded random model, measured side by side in one run.

For every variant: conversion time, bytes of DiT weights on disk, DiT load time, relative error of
the DiT velocity against bf16, mean per-layer weight error, one DiT forward (step) time on the CPU,
and the PSNR of the decoded image of a full edit (same seed) against the bf16 pipeline's image.

    python bench/quant.py            # medium model (hidden 512, 4 blocks)
    python bench/quant.py --fast     # tiny model, for tests
    python bench/quant.py --out quant.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lowmem.models.dit_config import TINY_DIT_CONFIG, DiTConfig
from lowmem.models.dit_loading import load_dit
from lowmem.models.layout import open_model_folder
from lowmem.pipeline import SpatialEditPipeline
from lowmem.testing import write_tiny_model
from quantize import convert, load_quantized_dit, read_manifest
from quantize.schemes import BACKENDS, DEFAULT_BACKEND, SCHEMES

MEDIUM = DiTConfig(hidden_size=512, heads_num=4, mm_double_blocks_depth=4, text_states_dim=64, rope_dim_list=(16, 56, 56))
PROMPT = "Rotate the object to show the front side view."


def scene() -> Image.Image:
    canvas = np.full((64, 64, 3), (200, 210, 225), dtype=np.uint8)
    canvas[20:44, 20:44] = (180, 60, 40)
    return Image.fromarray(canvas)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def dit_inputs(config: DiTConfig, grid: int):
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 2, 16, 1, grid, grid, generator=g)
    states = torch.randn(2, 32, config.text_states_dim, generator=g)
    return latents, torch.tensor([500.0, 500.0]), states


def timed(fn, repeats: int):
    """(last output, fastest of `repeats` calls): the minimum is the figure least disturbed by other load."""
    out = fn()  # warm-up
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return out, best


def weight_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in (folder / "transformer").glob("*.safetensors"))


def run(fast: bool, workdir: Path) -> dict:
    torch.manual_seed(0)
    config = TINY_DIT_CONFIG if fast else MEDIUM
    grid, repeats, steps = (8, 1, 1) if fast else (16, 3, 4)
    source = write_tiny_model(workdir / "bf16", dit_config=config)
    inputs = dit_inputs(config, grid)
    image = scene()

    start = time.perf_counter()
    ref_dit = load_dit(open_model_folder(source), dtype=torch.float32, device="cpu")
    load_s = time.perf_counter() - start
    with torch.inference_mode():
        v_ref, step_s = timed(lambda: ref_dit(*inputs).float(), repeats)
    ref_img = np.asarray(SpatialEditPipeline.from_folder(source, device="cpu").edit(
        image, PROMPT, steps=steps, resolution=64, seed=0, progress=False).image)
    rows = [{"variant": "bf16", "scheme": "bf16", "backend": "-", "convert_s": 0.0, "dit_bytes": weight_bytes(source),
             "load_s": load_s, "step_s": step_s, "velocity_rel_err": 0.0, "weight_rel_err": 0.0, "psnr_db": math.inf}]
    del ref_dit

    for scheme in SCHEMES:
        for backend in BACKENDS:
            out = workdir / f"{scheme}-{backend}"
            start = time.perf_counter()
            convert(source, out, scheme, backend, components=("dit",) if fast else ("dit", "vlm"), progress=False, print_table=False)
            convert_s = time.perf_counter() - start
            manifest = read_manifest(out)
            errs = [e["rel_error"] for e in manifest["dit"]["tensors"].values() if e["scheme"] == scheme]
            start = time.perf_counter()
            dit = load_quantized_dit(out, "cpu", torch.float32)
            load_s = time.perf_counter() - start
            with torch.inference_mode():
                v, step_s = timed(lambda: dit(*inputs).float(), repeats)
            img = np.asarray(SpatialEditPipeline.from_folder(out, device="cpu").edit(
                image, PROMPT, steps=steps, resolution=64, seed=0, progress=False).image)
            rows.append({
                "variant": f"{scheme}/{backend}", "scheme": scheme, "backend": backend, "convert_s": convert_s,
                "dit_bytes": weight_bytes(out), "load_s": load_s, "step_s": step_s,
                "velocity_rel_err": float((v - v_ref).norm() / v_ref.norm()),
                "weight_rel_err": float(sum(errs) / len(errs)), "psnr_db": psnr(img, ref_img),
            })
            del dit
    best = {}
    for scheme in SCHEMES:
        candidates = [r for r in rows if r["scheme"] == scheme]
        floor = min(r["velocity_rel_err"] for r in candidates)
        close = [r for r in candidates if r["velocity_rel_err"] <= 1.05 * floor]  # accuracy first, then speed
        best[scheme] = min(close, key=lambda r: r["step_s"])["backend"]
    return {"model": "tiny" if fast else "medium", "dit_config": config.__dict__, "grid": grid, "steps": steps,
            "device": "cpu", "threads": torch.get_num_threads(), "rows": rows, "best_backend": best}


def table(result: dict) -> str:
    base = result["rows"][0]
    lines = [f"quantization vs bf16 ({result['model']} DiT, CPU, {result['threads']} threads, float32 compute)",
             f"{'variant':12} {'vel.err':>8} {'w.err':>7} {'PSNR dB':>8} {'DiT MB':>7} {'x bf16':>6} {'load s':>7} {'step ms':>8} {'x bf16':>6}"]
    for r in result["rows"]:
        lines.append(f"{r['variant']:12} {r['velocity_rel_err']:8.5f} {r['weight_rel_err']:7.4f} {r['psnr_db']:8.1f} "
                     f"{r['dit_bytes'] / 1e6:7.2f} {r['dit_bytes'] / base['dit_bytes']:6.3f} {r['load_s']:7.3f} "
                     f"{r['step_s'] * 1e3:8.1f} {r['step_s'] / base['step_s']:6.2f}")
    lines.append("defaults (quantize/schemes.py, which also weighs Gaussian/heavy-tailed weights and CUDA kernels): "
                 + ", ".join(f"{k}: {v}" for k, v in DEFAULT_BACKEND.items()))
    lines.append("best backend per scheme on this random-weight model (accuracy, then speed): "
                 + ", ".join(f"{k}: {v}" for k, v in result["best_backend"].items()))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fast", action="store_true", help="tiny model (seconds), for tests")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lowmem-bench-quant-") as tmp:
        result = run(args.fast, Path(tmp))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2, default=str))
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
