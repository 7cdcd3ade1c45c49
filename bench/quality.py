"""Quality of the tiny trained SpatialEdit on held-out rendered scenes: where our numbers mean something.

    python bench/quality.py [--model DIR] [--fast] [--out result.json]

The model is the shipped trained tiny one (lowmem.tiny.trained_model) unless DIR names another trained
on the rendered scenes (`lowmem train-tiny --out DIR`); on any other model the numbers measure nothing.

Five tables, all on pairs rendered from seeds no training run reaches (lowmem.tiny.scenes.HELD_OUT_SEEDS):
  1. edit success per kind: PSNR / SSIM of the edit against the rendered ground truth, beside the
     copy-the-input baseline, and the share of edits that did what the instruction says
     (`lowmem.tiny.scene_scoring.edit_succeeded` states the test per kind);
  2. int8 and nf4 on both backends against the full-precision model: PSNR of the edited image and
     relative error of the DiT velocity on the same inputs;
  3. SpotEdit against the full-step edit: PSNR / SSIM, the mean active-token fraction, whether the
     non-edited latent tokens equal the condition after token replacement, and the denoise speed-up;
  4. tiled against untiled VAE decode of the edits' latents;
  5. compute modes (issue 25) on every pair: the DiT's weights int8 or nf4 with a dequantized GEMM
     (weight-only), int8 W8A8 and fp8 W8A8 (`--compute`, each reading its own scheme's stored codes):
     PSNR of the edit against the full-precision edit (float32 on the CPU) and the edit success per
     kind beside the full-precision model's. This CPU runs fp8 natively (torch._scaled_mm's CPU
     kernel), so fp8 is computed, not emulated.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lowmem.common.image_metrics import psnr, ssim
from lowmem.common.images import to_model_tensor, to_pil
from lowmem.loading import load_quantized_dit
from lowmem.models.guidance import guidance_batch
from lowmem.models.joint_attention import TextPadding
from lowmem.pipeline import SpatialEditPipeline
from lowmem.spotedit import SpotConfig, spot_denoise
from lowmem.spotedit.selector import dilate, tokens_to_latent
from lowmem.tiny.scene_scoring import edit_succeeded, vae_roundtrip
from lowmem.tiny.scenes import EDIT_KINDS, HELD_OUT_SEEDS, EditPair, render_pair
from lowmem.tiny.trained_model import TINY_SPOT_DILATION, trained_tiny_model
from quantize import convert

SIZE = 64
GUIDANCE = 1.0
SPOT = SpotConfig(dilation=TINY_SPOT_DILATION)  # the paper's threshold, as `lowmem demo` runs it


def edit_table(pipe: SpatialEditPipeline, pairs: list[EditPair], steps: int) -> tuple[list[dict], dict]:
    rows, outputs = [], {}
    roundtrip = vae_roundtrip(pipe.vae)
    for kind in EDIT_KINDS:
        chosen = [p for p in pairs if p.kind == kind]
        scores = {"psnr": [], "ssim": [], "copy_psnr": [], "copy_ssim": [], "success": [], "copy_success": []}
        for pair in chosen:
            edited = pipe.edit(pair.source.image, pair.instruction, steps=steps, guidance=GUIDANCE, resolution=SIZE,
                               progress=False).image
            output = np.asarray(edited)
            outputs[id(pair)] = output
            target, source = np.asarray(pair.target.image), np.asarray(pair.source.image)
            scores["psnr"].append(psnr(output, target))
            scores["ssim"].append(ssim(output, target))
            scores["copy_psnr"].append(psnr(source, target))
            scores["copy_ssim"].append(ssim(source, target))
            scores["success"].append(edit_succeeded(pair, edited, roundtrip))
            scores["copy_success"].append(edit_succeeded(pair, pair.source.image, roundtrip))
        rows.append({"kind": kind, "pairs": len(chosen), **{k: float(np.mean(v)) for k, v in scores.items()}})
    return rows, outputs


def dit_inputs(pipe: SpatialEditPipeline, pair: EditPair) -> tuple:
    """One realistic DiT input: the pair's condition latent, a half-noised target and its prompt's states."""
    image = pair.model_input
    states, mask = pipe.conditioner.encode([image], pair.instruction.text, unconditional=False)
    generator = torch.Generator().manual_seed(0)
    condition = pipe.vae.encode(to_model_tensor(image), generator=generator)
    target = pipe.vae.encode(to_model_tensor(pair.target.image), generator=generator)
    noisy = 0.5 * target + 0.5 * torch.randn(target.shape, generator=generator)
    return torch.stack((condition, noisy), dim=1), torch.tensor([500.0]), states, TextPadding.from_mask(mask)


def quantization_table(model: Path, pipe: SpatialEditPipeline, pairs: list[EditPair], reference: dict, steps: int,
                       workdir: Path) -> list[dict]:
    rows = []
    inputs = [dit_inputs(pipe, p) for p in pairs]
    with torch.inference_mode():
        v_ref = [pipe.dit(*i).float() for i in inputs]
    for scheme in ("int8", "nf4"):
        for backend in ("bnb", "quanto"):
            out = workdir / f"{scheme}-{backend}"
            convert(model, out, scheme, backend, components=("dit",), progress=False, print_table=False)
            dit = load_quantized_dit(out, "cpu", torch.float32)
            with torch.inference_mode():
                errors = [float((dit(*i).float() - v).norm() / v.norm()) for i, v in zip(inputs, v_ref)]
            quantized = SpatialEditPipeline.from_folder(out, device="cpu")
            psnrs = [psnr(np.asarray(quantized.edit(p.source.image, p.instruction, steps=steps, guidance=GUIDANCE,
                                                    resolution=SIZE, progress=False).image), reference[id(p)])
                     for p in pairs]
            rows.append({"variant": f"{scheme}/{backend}", "scheme": scheme, "backend": backend,
                         "velocity_rel_err": float(np.mean(errors)), "psnr_vs_full_db": float(np.mean(psnrs))})
    return rows


COMPUTE_VARIANTS = {  # label: (stored scheme, compute mode)
    "int8 weight-only": ("int8", "bf16"),
    "nf4 weight-only": ("nf4", "bf16"),
    "int8 W8A8": ("int8", "int8"),
    "fp8 W8A8": ("fp8", "fp8"),
}


def compute_table(model: Path, pipe: SpatialEditPipeline, pairs: list[EditPair], reference: dict, steps: int,
                  workdir: Path) -> list[dict]:
    """One row per (variant, kind): PSNR vs the full-precision edit and the success rate."""
    roundtrip = vae_roundtrip(pipe.vae)
    rows = []
    for label, (scheme, mode) in COMPUTE_VARIANTS.items():
        out = workdir / f"compute-{scheme}"
        if not out.exists():
            convert(model, out, scheme, components=("dit",), progress=False, print_table=False)
        variant = SpatialEditPipeline.from_folder(out, device="cpu", compute=mode)
        for kind in EDIT_KINDS:
            chosen = [p for p in pairs if p.kind == kind]
            psnrs, successes = [], []
            for pair in chosen:
                edited = variant.edit(pair.source.image, pair.instruction, steps=steps, guidance=GUIDANCE,
                                      resolution=SIZE, progress=False).image
                psnrs.append(psnr(np.asarray(edited), reference[id(pair)]))
                successes.append(edit_succeeded(pair, edited, roundtrip))
            rows.append({"variant": label, "scheme": scheme, "compute": mode, "kind": kind, "pairs": len(chosen),
                         "psnr_vs_full_db": float(np.mean(psnrs)), "success": float(np.mean(successes))})
        variant.close()
    return rows


def spot_row(pipe: SpatialEditPipeline, pair: EditPair, steps: int) -> dict:
    """SpotEdit and the full loop on the same pair, the same noise; latents compared before decoding."""
    image = pair.model_input
    states, mask = pipe.conditioner.encode([image], pair.instruction.text, unconditional=guidance_batch(GUIDANCE) == 2)
    padding = TextPadding.from_mask(mask)
    condition = pipe.vae.encode(to_model_tensor(image), generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    full = pipe.denoise(condition, states, padding, steps, GUIDANCE, torch.Generator().manual_seed(0), progress=False)
    full_s = time.perf_counter() - start
    start = time.perf_counter()
    latents, outcome = spot_denoise(pipe.dit, pipe.vae, condition, states, padding, steps, GUIDANCE,
                                    torch.Generator().manual_seed(0), SPOT, pipe.device, pipe.dtype, progress=False)
    spot_s = time.perf_counter() - start
    exact = None  # no token left the edited set
    if outcome.edited_mask is not None and not dilate(outcome.edited_mask, 1).all():
        # Interior non-edited tokens (not bordering an edited one, whose latents are blended) are the condition's.
        kept = ~tokens_to_latent(dilate(outcome.edited_mask, 1)).expand_as(latents)
        exact = bool(torch.equal(latents[kept], condition.float()[kept]))
    spot_image, full_image = (np.asarray(to_pil(pipe.vae.decode(x))) for x in (latents, full))
    return {"kind": pair.kind, "psnr_vs_full_db": psnr(spot_image, full_image), "ssim_vs_full": ssim(spot_image, full_image),
            "active_fraction": float(np.mean(outcome.active_fraction)), "background_exact": exact,
            "speedup": full_s / spot_s, "tiled_psnr_db": tiled_psnr(pipe, full)}


def tiled_psnr(pipe: SpatialEditPipeline, latents: torch.Tensor) -> float:
    """PSNR of the tiled decode (32 px tiles, 25% overlap) against the untiled one."""
    untiled, tiled = pipe.vae.decode(latents), pipe.vae.decode(latents, tiled=True, tile=32, overlap=0.25)
    return psnr(*(np.asarray(to_pil(t)) for t in (untiled, tiled)))


def run(model: Path, per_kind: int, steps: int, compute_per_kind: int | None = None) -> dict:
    pairs = [render_pair(HELD_OUT_SEEDS + 100 * k + i, kind, size=SIZE) for k, kind in enumerate(EDIT_KINDS)
             for i in range(per_kind)]
    pipe = SpatialEditPipeline.from_folder(model, device="cpu", dtype=torch.float32)
    edits, outputs = edit_table(pipe, pairs, steps)
    probe = [pairs[k * per_kind] for k in range(len(EDIT_KINDS))]
    with tempfile.TemporaryDirectory(prefix="lowmem-quality-") as scratch:
        quant = quantization_table(model, pipe, probe, outputs, steps, Path(scratch))
        chosen = [p for k, kind in enumerate(EDIT_KINDS) for p in pairs[k * per_kind:k * per_kind + (compute_per_kind or per_kind)]]
        modes = compute_table(model, pipe, chosen, outputs, steps, Path(scratch))
    with torch.inference_mode():
        spot = [spot_row(pipe, p, steps) for p in probe]
    return {"model": str(model), "size": SIZE, "steps": steps, "guidance": GUIDANCE, "per_kind": per_kind,
            "threads": torch.get_num_threads(), "edits": edits, "quantization": quant, "compute": modes, "spotedit": spot}


def tables(result: dict) -> str:
    lines = ["| edit | pairs | PSNR dB (copy) | SSIM (copy) | success (copy) |", "|---|---|---|---|---|"]
    for r in result["edits"]:
        lines.append(f"| {r['kind']} | {r['pairs']} | {r['psnr']:.2f} ({r['copy_psnr']:.2f}) | "
                     f"{r['ssim']:.3f} ({r['copy_ssim']:.3f}) | {r['success']:.0%} ({r['copy_success']:.0%}) |")
    lines += ["", "| DiT weights | velocity rel. error | image PSNR vs full dB |", "|---|---|---|"]
    lines += [f"| {r['variant']} | {r['velocity_rel_err']:.4f} | {r['psnr_vs_full_db']:.2f} |" for r in result["quantization"]]
    lines += ["", "| edit | SpotEdit PSNR vs full dB | SSIM | active fraction | background exact | denoise speed-up | tiled decode PSNR dB |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['kind']} | {r['psnr_vs_full_db']:.2f} | {r['ssim_vs_full']:.3f} | {r['active_fraction']:.2f} | "
              f"{r['background_exact']} | {r['speedup']:.2f}x | {r['tiled_psnr_db']:.2f} |" for r in result["spotedit"]]
    return "\n".join(lines + ["", compute_summary(result)])


def compute_summary(result: dict) -> str:
    """Per variant and kind: PSNR vs the full-precision edit and success, the full model's success beside it."""
    full = {r["kind"]: r["success"] for r in result["edits"]}
    kinds = list(full)
    lines = ["| DiT weights / compute | PSNR vs full dB | " + " | ".join(f"{k} success" for k in kinds) + " | all |",
             "|---|---|" + "---|" * (len(kinds) + 1)]
    pairs = {r["kind"]: r["pairs"] for r in result["compute"]}  # the same pairs for every variant

    def overall(rate: dict) -> float:
        return sum(rate[k] * pairs[k] for k in kinds) / sum(pairs.values())

    if pairs != {r["kind"]: r["pairs"] for r in result["edits"]}:  # a subset: the full model's rate is of more pairs
        lines.append(f"(the compute modes ran {sum(pairs.values())} of the {sum(r['pairs'] for r in result['edits'])} pairs)")
    lines.append("| full precision | - | " + " | ".join(f"{full[k]:.0%}" for k in kinds) + f" | {overall(full):.1%} |")
    for label in COMPUTE_VARIANTS:
        rows = {r["kind"]: r for r in result["compute"] if r["variant"] == label}
        rate = {k: rows[k]["success"] for k in kinds}
        mean_psnr = sum(rows[k]["psnr_vs_full_db"] * pairs[k] for k in kinds) / sum(pairs.values())
        lines.append(f"| {label} | {mean_psnr:.2f} | " + " | ".join(f"{rate[k]:.0%}" for k in kinds)
                     + f" | {overall(rate):.1%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model folder written by `lowmem train-tiny` (default: the shipped one)")
    parser.add_argument("--fast", action="store_true", help="one pair per kind and 4 steps (for tests)")
    parser.add_argument("--per-kind", type=int, default=8, help="held-out pairs per edit kind (default: %(default)s)")
    parser.add_argument("--compute-per-kind", type=int, help="pairs per kind of the compute-mode table "
                                                             "(default: --per-kind's)")
    parser.add_argument("--steps", type=int, default=16, help="denoising steps (default: %(default)s)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    per_kind, steps = (1, 4) if args.fast else (args.per_kind, args.steps)
    result = run(args.model or trained_tiny_model(), per_kind, steps, args.compute_per_kind)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2, default=str))
    print(tables(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
