"""Loading a model folder under a plan: only what the plan keeps resident is read up front.

The DiT is built on the meta device in its final form (quantized Linears already swapped in), so
the planner sizes it without reading a weight. Then the weights outside the blocks and the resident
blocks are read, and each streamed block is read once, by the streamer's block source, straight
into its store (pinned RAM, or a file on disk on the CPU tier) and dropped: host RAM never holds
the whole DiT.
"""

from __future__ import annotations

from typing import Optional

import torch

from lowmem.common.host_memory import return_freed_memory
from lowmem.loading import ModelLoader
from lowmem.models.conditioner import QwenVLConditioner
from lowmem.models.dit import SpatialEditDiT
from lowmem.models.dit_loading import in_block, outside_blocks
from lowmem.models.layout import ModelFolder
from lowmem.models.vae import WanVAE
from lowmem.offload.plan import Plan
from lowmem.offload.runtime import OffloadRuntime
from lowmem.planning.planner import plan_for
from lowmem.planning.preflight import folder_precision, preflight_plan
from lowmem.planning.presets import load_preset
from quantize.schemes import SCHEMES

HOST = torch.device("cpu")


def planned_device_kind(device: torch.device) -> str:
    """The hardware class the plan is made for: `meta` stands in for the GPU in the CPU-only checks
    (the meta-device edit runs the CUDA plan's placements with no memory behind them)."""
    return "cuda" if device.type == "meta" else device.type


def plan_models(dit: SpatialEditDiT, vae: WanVAE, conditioner: QwenVLConditioner, device: torch.device, memory_budget,
                preset: Optional[str], resolution: int, precision: str, spot: bool,
                max_resident_blocks: Optional[int] = None, guidance: float = 5.0, compute: str = "bf16") -> Plan:
    """The plan for these models (the DiT may still be on `meta`: it is sized, not read) on `device`,
    its traced peaks those of the DiT's Linears in `compute` mode."""
    return plan_for(dit, memory_budget, resolution, precision, spot, preset=preset, device=planned_device_kind(device),
                    vlm_bytes=conditioner.weight_bytes(), vae_bytes=vae.weight_bytes(),
                    max_resident_blocks=max_resident_blocks, vae_config=dict(vae.module.config),
                    vlm_config=conditioner.model.config, guidance=guidance, compute=compute)


def load_under_plan(
    folder: ModelFolder,
    device: torch.device,
    dtype: torch.dtype,
    quantization: Optional[str],
    memory_budget,
    preset: Optional[str],
    resolution: int,
    spot: bool,
    max_resident_blocks: Optional[int] = None,
    guidance: float = 5.0,
    compute: str = "bf16",
):
    """(dit, vae, conditioner, OffloadRuntime) for running on `device` within the budget or preset,
    planned for edits at `guidance` (<= 1: one DiT row per forward), the DiT's large Linears in `compute` mode."""
    if preset is not None and quantization is None and not folder.is_quantized:
        # A preset planned for quantized weights gets them: quantized while loading.
        planned_for = load_preset(preset).quantization
        quantization = planned_for if planned_for in SCHEMES else None
    precision = folder_precision(folder, dtype, quantization)  # what the weights will really be
    preflight_plan(folder, memory_budget, resolution, precision, spot, preset, planned_device_kind(device),  # refuse
                   guidance)  # before reading

    loader = ModelLoader(folder, HOST, dtype, quantization, compute)  # the DiT built, none of its weights read yet
    conditioner, vae = loader.conditioner(), loader.vae()
    plan = plan_models(loader.dit, vae, conditioner, device, memory_budget, preset, resolution, precision, spot,
                       max_resident_blocks, guidance, compute)
    loader.fill(outside_blocks)
    for index in plan.dit.resident_blocks:
        loader.fill(in_block(index))
    runtime = OffloadRuntime(plan, loader.dit, vae, conditioner, device,
                             block_source=lambda index, _block: loader.fill(in_block(index)))
    return_freed_memory()  # what reading the checkpoint left in glibc's heaps
    return loader.dit, vae, conditioner, runtime
