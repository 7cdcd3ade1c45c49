"""Tiny seeded SpatialEdit model folders in the official on-disk layout, for tests and benches.

Their weights are random; the demo and the examples use the trained one (lowmem.tiny.trained_model).

`write_tiny_model(folder)` writes transformer shards + index + config, `vae/Wan2.1_VAE.pth` with the
original Wan key names, and a complete Qwen3-VL folder with a locally built tokenizer, so every test
goes through the same loading code as a real download, with no network.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from lowmem.common.paths import staged_folder
from lowmem.models.dit import build_dit
from lowmem.models.dit_config import TINY_DIT_CONFIG, DiTConfig
from lowmem.models.layout import DIT_INDEX
from lowmem.models.vae import write_tiny_vae
from lowmem.tiny.qwen3vl import write_tiny_qwen3vl


def tiny_model_budget(device: torch.device | str) -> str:
    """A memory budget in which the tiny model fits with room to spare: on CUDA the planner also
    reserves ~0.8 GB for the CUDA context and allocator, on the CPU it does not."""
    return "2GB" if torch.device(device).type == "cuda" else "256MB"


def tiny_dit_state_dict(config: DiTConfig = TINY_DIT_CONFIG, seed: int = 0) -> dict[str, torch.Tensor]:
    """Seeded random DiT weights in bf16 (the official precision), default init plus random modulation."""
    generator = torch.Generator().manual_seed(seed)
    model = build_dit(config, device="cpu", dtype=torch.float32)
    state = {}
    for name, tensor in model.state_dict().items():
        if name.endswith("modulate_table") or name.endswith("_norm.weight"):
            value = 1.0 * (name.endswith("_norm.weight")) + 0.1 * torch.randn(tensor.shape, generator=generator)
        else:
            bound = 1.0 / max(1, tensor.shape[-1] if tensor.dim() > 1 else tensor.shape[0]) ** 0.5
            if tensor.dim() == 5:  # the patch-embedding Conv3d: fan-in is C * 1 * 2 * 2
                bound = 1.0 / tensor[0].numel() ** 0.5
            value = (torch.rand(tensor.shape, generator=generator) * 2 - 1) * bound
        state[name] = value.to(torch.bfloat16).contiguous()
    return state


def write_sharded_safetensors(state: dict[str, torch.Tensor], folder: Path, shards: int, stem: str, index_name: str) -> None:
    """Split `state` into `shards` files named like the official release, plus the weight_map index."""
    names = list(state)
    per_shard = -(-len(names) // shards)
    weight_map = {}
    for i in range(shards):
        file = f"{stem}-{i + 1:05d}-of-{shards:05d}.safetensors"
        chunk = {n: state[n] for n in names[i * per_shard : (i + 1) * per_shard]}
        save_file(chunk, folder / file, metadata={"format": "pt"})
        weight_map.update({n: file for n in chunk})
    total = sum(t.numel() * t.element_size() for t in state.values())
    (folder / index_name).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def write_tiny_model(folder: str | Path, seed: int = 0, dit_config: DiTConfig = TINY_DIT_CONFIG) -> Path:
    """Write a complete tiny model folder at `folder` (atomically: built aside, then renamed)."""
    target = Path(folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    with staged_folder(target) as staging:
        transformer = staging / "transformer"
        transformer.mkdir()
        (transformer / "config.json").write_text(dit_config.to_json())
        write_sharded_safetensors(
            tiny_dit_state_dict(dit_config, seed), transformer, shards=2, stem="diffusion_pytorch_model", index_name=DIT_INDEX
        )
        (staging / "vae").mkdir()
        write_tiny_vae(staging / "vae" / "Wan2.1_VAE.pth", seed=seed)  # no config: width read off the file
        write_tiny_qwen3vl(staging / "text_encoder", seed=seed, hidden_size=dit_config.text_states_dim)
    return target
