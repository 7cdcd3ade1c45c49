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


def test_rope_keeps_two_half_size_float32_temporaries_at_most():
    """Issue 11: RoPE of a 1024² CFG image query used to hold five full-size float32 temporaries."""
    from lowmem.models.rope import apply_rope
    from lowmem.planning.live_bytes import trace_peak

    x = torch.empty(2, 8192, 32, 128, device="meta", dtype=torch.bfloat16)
    cos = torch.empty(8192, 128, device="meta")
    size = x.numel() * x.element_size()
    assert trace_peak(lambda: apply_rope(x, cos, cos)) == 3 * size  # the result + two half-size float32
    out = torch.empty_like(x)
    assert trace_peak(lambda: apply_rope(x, cos, cos, out=out)) == 2 * size


def test_full_size_block_peak_is_its_image_mlp_with_nothing_of_the_attention_alive():
    """Issue 11: at 1024² with CFG and ~1,100 text tokens (uncond row padded) the block peaked at 2.53 GiB
    because q/k/v, the qkv projections and the attention output stayed alive to the end of the block.
    Now its peak is the image MLP: new image stream, MLP input, MLP hidden and its GELU, new text stream."""
    from lowmem.models.dit_block import BlockContext, MMDoubleStreamBlock
    from lowmem.models.joint_attention import TextPadding
    from lowmem.planning.live_bytes import trace_peak

    hidden, tokens, text, batch = 4096, 2 * 64 * 64, 1100, 2
    with torch.device("meta"):
        block = MMDoubleStreamBlock(hidden, 32, 4 * hidden).to(torch.bfloat16)
    img = torch.empty(batch, tokens, hidden, device="meta", dtype=torch.bfloat16)
    txt = torch.empty(batch, text, hidden, device="meta", dtype=torch.bfloat16)
    cos = torch.empty(tokens, hidden // 32, device="meta")
    ctx = BlockContext(vec=torch.empty(batch, 6, hidden, device="meta", dtype=torch.bfloat16), rope_cos=cos,
                       rope_sin=cos, text_padding=TextPadding((60, 0)))
    stream = batch * tokens * hidden * 2
    mlp_phase = 2 * stream + 2 * 4 * stream + batch * text * hidden * 2
    peak = trace_peak(lambda: block(img, txt, ctx))
    assert mlp_phase <= peak <= mlp_phase + 2**20
    print(f"\nfull-size block, 1024² CFG, {text} text tokens: traced peak {peak / 2**30:.3f} GiB (was 2.526 GiB)")
