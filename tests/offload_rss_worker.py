"""Run in a subprocess by test_offload_rss: a DiT built on meta, streamed from disk under a budget.

Prints one JSON line: baseline RSS after imports, peak RSS after the run, weight bytes, budget,
activation estimate. Weights are made block by block (seeded random), so no full copy ever exists.
"""

import json
import resource
import sys
import tempfile

import torch

from lowmem.models.dit import build_dit
from lowmem.models.dit_config import DiTConfig
from lowmem.offload import MemoryLedger, apply_plan
from lowmem.planning import plan_for


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def materialize(module: torch.nn.Module, seed: int) -> None:
    module.to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.02, generator=g)


def main(hidden: int, depth: int, fraction: float) -> None:
    torch.set_num_threads(1)
    config = DiTConfig(hidden_size=hidden, heads_num=hidden // 64, mm_double_blocks_depth=depth,
                       text_states_dim=64, rope_dim_list=(16, 24, 24))
    dit = build_dit(config, device="meta", dtype=torch.float32)
    weights = sum(p.numel() * 4 for p in dit.parameters())
    latents = torch.randn(2, 2, 16, 1, 8, 8)
    t, text = torch.tensor([500.0, 500.0]), torch.randn(2, 8, 64)
    baseline = peak_rss()
    budget = int(weights * fraction)
    plan = plan_for(dit, budget, 64, device="cpu", storage="disk", text_tokens=8)
    for name, child in dit.named_children():
        if name != "double_blocks":
            materialize(child, 1)
    for i in plan.dit.resident_blocks:
        materialize(dit.double_blocks[i], 100 + i)
    ledger = MemoryLedger(plan.budget)
    with tempfile.TemporaryDirectory() as scratch:
        offloaded = apply_plan(dit, plan, "cpu", ledger=ledger, disk_dir=scratch,
                               source=lambda i, block: materialize(block, 100 + i))
        ledger.place("activations (estimate)", plan.estimate.phases["denoise"]["dit activations"])
        with torch.inference_mode():
            for _ in range(2):
                out = dit(latents, t, text)
        assert torch.isfinite(out).all()
        stats = offloaded.stats()
    print(json.dumps({
        "baseline_rss": baseline, "peak_rss": peak_rss(), "weights": weights, "budget": budget,
        "activations": plan.estimate.phases["denoise"]["dit activations"], "resident_blocks": len(plan.dit.resident_blocks),
        "streamed_blocks": len(plan.dit.streamed_blocks), "ledger_peak": ledger.peak, "bytes_streamed": stats["bytes_streamed"],
    }))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]))
