"""The DiT's device logic on `meta`: a tensor made on the CPU by default and mixed into device math
fails here exactly as it would on CUDA (issue 10, defect 1: RoPE tables built on the CPU)."""

from __future__ import annotations

import torch

from lowmem.models.dit import build_dit
from lowmem.models.dit_config import TINY_DIT_CONFIG
from lowmem.models.rope import grid_rope
from lowmem.spotedit import DiTSpotModel
from lowmem.spotedit.attention import frame_shift_rope

CFG = TINY_DIT_CONFIG


def meta_inputs(batch: int = 2, text_tokens: int = 5):
    latents = torch.empty(batch, 2, CFG.in_channels, 1, 8, 8, device="meta", dtype=torch.bfloat16)
    text = torch.empty(batch, text_tokens, CFG.text_states_dim, device="meta", dtype=torch.bfloat16)
    return latents, torch.empty(batch, device="meta"), text


def test_dit_forward_runs_on_meta():
    model = build_dit(CFG, device="meta")
    latents, t, text = meta_inputs()
    out = model(latents, t, text)
    assert out.is_meta and out.shape == (2, CFG.out_channels, 1, 8, 8)


def test_spot_full_forward_and_frame_shift_run_on_meta():
    model = build_dit(CFG, device="meta")
    latents, t, text = meta_inputs()
    spot = DiTSpotModel(model)
    cache = spot.new_cache()
    assert spot.full(latents, t, text, None, cache).is_meta and cache.ready
    shift = frame_shift_rope(CFG.rope_dim_list, CFG.theta, 1, 0, "meta")
    assert all(s.is_meta for s in shift)


def test_rope_tables_are_built_once_per_grid_and_device():
    cos, sin = grid_rope((2, 3, 4), CFG.rope_dim_list, CFG.theta, "meta")
    assert cos.is_meta and cos.shape == (24, CFG.head_dim)
    assert grid_rope((2, 3, 4), CFG.rope_dim_list, CFG.theta, torch.device("meta"))[0] is cos
    cpu_cos, cpu_sin = grid_rope((2, 3, 4), CFG.rope_dim_list, CFG.theta)
    assert cpu_cos is not cos and cpu_cos.device.type == "cpu"
    with torch.inference_mode():  # a table first built in inference mode still works outside it
        inside = grid_rope((5, 1, 1), CFG.rope_dim_list, CFG.theta)[0]
    assert not inside.is_inference() and torch.equal(inside, grid_rope((5, 1, 1), CFG.rope_dim_list, CFG.theta)[0])
