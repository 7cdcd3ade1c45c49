"""W8A8 compute (int8, fp8) against bf16, side by side in one run: matmuls at the full DiT's shapes, a
full-size block's forward, and each of that block's large Linears' error.

    python bench/compute.py [--device cpu|cuda] [--tokens 256 1024] [--resolution 256] [--repeats 3]
                            [--threads N] [--out result.json] [--fast]

1. matmul: each large Linear shape of a full-size block (qkv, attention projection, MLP up and down)
   at each token count M: seconds of F.linear on bf16 weights, of int8 W8A8 and of fp8 W8A8 (the
   per-token activation quantization included, the weight's stored codes read as they are), and the
   ratio of each to bf16 (> 1: faster). The repeats are interleaved (bench/timing.py).
2. block: one full-size double block (the DiT at depth 1, seeded random weights N(0, 1/fan_in)) at
   `--resolution` (condition + target image tokens, 64 text tokens), its whole forward per mode:
   dense bf16, and for each W8A8 mode its large Linears stored in the mode's own scheme.
3. per-layer error: each large Linear of that block, on the input it really saw in a float32 forward:
   the relative error of its output against the float32 dense product, weights int8 or nf4 with a
   dequantized GEMM (weight-only) and int8 / fp8 W8A8. Random weights and activations have no
   outlier channels, which real checkpoints do: these errors are a floor, not a prediction.

On the CPU the speed columns say how this CPU's kernels compare (oneDNN's int8 and fp8 GEMMs); the
tensor-core speed-ups this mode exists for are the GPU's (`--device cuda`, or the GPU suite).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ helpers when run as a script
from random_models import fill_random  # noqa: E402
from timing import interleaved_best  # noqa: E402

from lowmem.models.dit import build_dit  # noqa: E402
from lowmem.models.dit_config import FULL_DIT_CONFIG  # noqa: E402
from lowmem.models.joint_attention import TextPadding  # noqa: E402
from quantize.compute import W8A8_MODES, supported_modes, w8a8_linear  # noqa: E402
from quantize.linear import QuantizedLinear  # noqa: E402
from quantize.plan import default_skip, quantizable_linears, use_compute  # noqa: E402
from quantize.schemes import dequantize, quantize_linear_weight, row_step  # noqa: E402

STORED = {"int8": ("int8", "bnb"), "fp8": ("fp8", "quanto")}  # each W8A8 mode reads its own scheme's codes
WEIGHT_ONLY = {"int8 weight-only": ("int8", "bnb"), "nf4 weight-only": ("nf4", "bnb")}
TEXT_TOKENS = 64


def synced(fn, device: torch.device):
    """`fn` that returns only when the device has finished its work (CUDA runs kernels asynchronously)."""
    if device.type != "cuda":
        return fn

    def run():
        out = fn()
        torch.cuda.synchronize(device)
        return out

    return run


def linear_shapes() -> dict[str, tuple[int, int]]:
    h, mlp = FULL_DIT_CONFIG.hidden_size, FULL_DIT_CONFIG.mlp_hidden
    return {"qkv": (3 * h, h), "attn proj": (h, h), "mlp up": (mlp, h), "mlp down": (h, mlp)}


def matmul_rows(device: torch.device, tokens: list[int], repeats: int) -> list[dict]:
    modes = [m for m in W8A8_MODES if m in supported_modes(device)]
    rows = []
    for name, (out_f, in_f) in linear_shapes().items():
        gen = torch.Generator(device).manual_seed(out_f + in_f)
        weight = (torch.randn(out_f, in_f, generator=gen, device=device) * in_f**-0.5).to(torch.bfloat16)
        codes = {m: quantize_linear_weight(weight, *STORED[m]) for m in modes}
        for m_tokens in tokens:
            x = torch.randn(m_tokens, in_f, generator=gen, device=device).to(torch.bfloat16)
            fns = [lambda: F.linear(x, weight)]
            fns += [lambda m=m: w8a8_linear(x, codes[m]["qweight"], row_step(codes[m], *STORED[m]), None, m)
                    for m in modes]
            seconds = interleaved_best([synced(fn, device) for fn in fns], repeats)
            row = {"linear": name, "shape": f"{out_f}x{in_f}", "tokens": m_tokens, "bf16_s": seconds[0]}
            for m, s in zip(modes, seconds[1:]):
                row[f"{m}_s"], row[f"{m}_speedup"] = s, seconds[0] / s
            rows.append(row)
            print(f"  {name:9} M={m_tokens:5}: bf16 {seconds[0] * 1e3:8.1f} ms"
                  + "".join(f"  {m} {s * 1e3:8.1f} ms ({seconds[0] / s:.2f}x)" for m, s in zip(modes, seconds[1:])),
                  file=sys.stderr)
    return rows


def one_block_dit(device: torch.device, dtype: torch.dtype):
    dit = build_dit(replace(FULL_DIT_CONFIG, mm_double_blocks_depth=1), device="meta", dtype=dtype)
    fill_random(dit, 7, device, dtype)
    return dit


def block_inputs(dit, resolution: int, device: torch.device, dtype: torch.dtype) -> tuple:
    gen = torch.Generator(device).manual_seed(3)
    side = resolution // 8  # VAE latent side
    latents = torch.randn(1, 2, dit.config.in_channels, 1, side, side, generator=gen, device=device, dtype=dtype)
    text = torch.randn(1, TEXT_TOKENS, dit.config.text_states_dim, generator=gen, device=device, dtype=dtype)
    mask = TextPadding.from_mask(torch.ones(1, TEXT_TOKENS, dtype=torch.bool, device=device))
    return latents, torch.tensor([500.0], device=device), text, mask


def quantized_copy(dit, mode: str):
    """A copy of `dit` whose large Linears store `mode`'s own codes and multiply in `mode`, as a
    `lowmem quantize --scheme <mode>` folder runs with `--compute <mode>`."""
    model = copy.deepcopy(dit)
    scheme, backend = STORED[mode]
    for name in quantizable_linears(model, "dit", default_skip("dit"), scheme, backend):
        parent, _, leaf = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, leaf, QuantizedLinear.from_linear(getattr(owner, leaf), scheme, backend))
    use_compute(model, mode)
    return model


def block_rows(device: torch.device, resolution: int, repeats: int) -> list[dict]:
    dense = one_block_dit(device, torch.bfloat16)
    inputs = block_inputs(dense, resolution, device, torch.bfloat16)
    models = {"bf16": dense} | {m: quantized_copy(dense, m) for m in W8A8_MODES if m in supported_modes(device)}

    def forward(model):
        with torch.inference_mode():
            return model(*inputs)

    seconds = interleaved_best([synced(lambda m=m: forward(m), device) for m in models.values()], repeats)
    return [{"mode": m, "seconds": s, "speedup": seconds[0] / s} for m, s in zip(models, seconds)]


def layer_error_rows(device: torch.device, resolution: int) -> list[dict]:
    dit = one_block_dit(device, torch.float32)
    seen: dict[str, torch.Tensor] = {}
    block = dit.double_blocks[0]
    large = {name: m for name, m in block.named_modules() if isinstance(m, torch.nn.Linear) and "_mod" not in name}
    hooks = [m.register_forward_hook(lambda mod, args, out, name=name: seen.__setitem__(name, args[0].detach()))
             for name, m in large.items()]
    with torch.inference_mode():
        dit(*block_inputs(dit, resolution, device, torch.float32))
    for hook in hooks:
        hook.remove()
    rows = []
    for name, linear in large.items():
        x, w = seen[name].reshape(-1, linear.in_features), linear.weight
        exact = F.linear(x, w)
        row = {"linear": name, "shape": f"{w.shape[0]}x{w.shape[1]}", "tokens": x.shape[0]}
        for label, (scheme, backend) in WEIGHT_ONLY.items():
            approx = F.linear(x, dequantize(quantize_linear_weight(w, scheme, backend), tuple(w.shape), scheme, backend,
                                            torch.float32))
            row[label] = ((approx - exact).norm() / exact.norm()).item()
        for mode in W8A8_MODES:
            stored = quantize_linear_weight(w, *STORED[mode])
            approx = w8a8_linear(x, stored["qweight"], row_step(stored, *STORED[mode]), None, mode)
            row[f"{mode} W8A8"] = ((approx.float() - exact).norm() / exact.norm()).item()
        rows.append(row)
    return rows


def tables(result: dict) -> str:
    modes = [m for m in W8A8_MODES if any(f"{m}_s" in r for r in result["matmul"])]
    lines = [f"device {result['device']}, {result['threads']} threads", "",
             "| linear | shape | tokens | bf16 ms | " + " | ".join(f"{m} W8A8 ms (x bf16)" for m in modes) + " |",
             "|---|---|---|---|" + "---|" * len(modes)]
    for r in result["matmul"]:
        lines.append(f"| {r['linear']} | {r['shape']} | {r['tokens']} | {r['bf16_s'] * 1e3:.1f} | "
                     + " | ".join(f"{r[f'{m}_s'] * 1e3:.1f} ({r[f'{m}_speedup']:.2f}x)" for m in modes) + " |")
    lines += ["", f"| full-size block forward at {result['resolution']} px | seconds | x bf16 |", "|---|---|---|"]
    lines += [f"| {r['mode']} | {r['seconds']:.3f} | {r['speedup']:.2f}x |" for r in result["block"]]
    variants = list(WEIGHT_ONLY) + [f"{m} W8A8" for m in W8A8_MODES]
    lines += ["", "| layer (full-size random block) | shape | tokens | " + " | ".join(variants) + " |",
              "|---|---|---|" + "---|" * len(variants)]
    lines += [f"| {r['linear']} | {r['shape']} | {r['tokens']} | " + " | ".join(f"{r[v]:.4f}" for v in variants) + " |"
              for r in result["layers"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    parser.add_argument("--tokens", type=int, nargs="+", default=[256, 1024], help="token counts M of the matmul table")
    parser.add_argument("--resolution", type=int, default=256, help="image side of the block forward (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many interleaved runs (default: %(default)s)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--fast", action="store_true", help="M=32, 64 px, one repeat (for tests)")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.fast:
        args.tokens, args.resolution, args.repeats = [32], 64, 1
    device = torch.device(args.device)
    print("matmul ...", file=sys.stderr)
    result = {"device": str(device), "threads": torch.get_num_threads(), "resolution": args.resolution,
              "matmul": matmul_rows(device, args.tokens, args.repeats)}
    print("block ...", file=sys.stderr)
    result["block"] = block_rows(device, args.resolution, args.repeats)
    print("per-layer error ...", file=sys.stderr)
    result["layers"] = layer_error_rows(device, args.resolution)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    print(tables(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
