"""Refuse an impossible budget before any weight is read.

The real plan is made from the loaded models; this one is made from what the folder says about
itself (the DiT config, the precision it will load in, the conditioner's and VAE's file sizes),
so a budget that can never fit fails in a second instead of after reading tens of GB.
"""

from __future__ import annotations

from typing import Optional

import torch

from lowmem.models.dit_loading import read_dit_config
from lowmem.models.layout import ModelFolder
from lowmem.offload.plan import Plan
from lowmem.planning.planner import plan_for

DTYPE_PRECISION = {torch.bfloat16: "bf16", torch.float32: "fp32"}


def folder_precision(folder: ModelFolder, dtype: torch.dtype, quantization: Optional[str]) -> str:
    """The precision the DiT will be loaded in: the folder's quantization scheme, the requested one, or `dtype`."""
    if folder.is_quantized:
        from quantize import read_manifest

        return read_manifest(folder.root)["scheme"]
    return quantization or DTYPE_PRECISION.get(dtype, "bf16")


def preflight_plan(
    folder: ModelFolder,
    budget,
    resolution: int,
    precision: str,
    spot: bool,
    preset: Optional[str],
    device: str,
    guidance: float = 5.0,
) -> Plan:
    """The plan estimated from file sizes alone for a DiT in `precision` (see `folder_precision`);
    raises BudgetError exactly as the real planner would."""
    vlm_bytes = sum(f.stat().st_size for f in folder.text_encoder.glob("*.safetensors"))
    return plan_for(read_dit_config(folder), budget, resolution, precision, spot,
                    preset=preset, device=device, vlm_bytes=vlm_bytes, vae_bytes=folder.vae_file.stat().st_size,
                    guidance=guidance)
