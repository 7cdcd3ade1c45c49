"""The SpatialEdit DiT: official structure and key names, 16B at full size, attention semantics."""

from __future__ import annotations

import torch

from lowmem.models.dit import build_dit, parameter_count
from lowmem.models.dit_config import FULL_DIT_CONFIG, TINY_DIT_CONFIG
from lowmem.models.rope import apply_rope, grid_rope
from lowmem.tiny.random_model import tiny_dit_state_dict


def tiny_float_dit():
    model = build_dit(TINY_DIT_CONFIG, device="meta", dtype=torch.float32)
    model.load_state_dict({k: v.float() for k, v in tiny_dit_state_dict().items()}, assign=True)
    return model


def test_full_config_parameter_count_is_16b():
    model = build_dit(FULL_DIT_CONFIG, device="meta")
    count = parameter_count(model)
    print(f"\nSpatialEdit DiT (full config, meta device): {count:,} parameters = {count / 1e9:.2f}B")
    assert 15.5e9 < count < 16.6e9
    assert len(model.double_blocks) == 40
    assert all(p.is_meta for p in model.parameters())


def test_official_state_dict_keys():
    keys = set(build_dit(FULL_DIT_CONFIG, device="meta").state_dict())
    expected = {
        "img_in.weight",
        "condition_embedder.time_embedder.linear_1.weight",
        "condition_embedder.time_proj.weight",
        "condition_embedder.text_embedder.linear_2.bias",
        "double_blocks.39.img_mod.modulate_table",
        "double_blocks.0.img_attn_qkv.weight",
        "double_blocks.0.txt_attn_q_norm.weight",
        "double_blocks.0.img_attn_proj.bias",
        "double_blocks.0.img_mlp.net.0.proj.weight",
        "double_blocks.0.txt_mlp.net.2.weight",
        "proj_out.weight",
    }
    assert expected <= keys
    shapes = dict(build_dit(FULL_DIT_CONFIG, device="meta").state_dict())
    assert tuple(shapes["img_in.weight"].shape) == (4096, 16, 1, 2, 2)
    assert tuple(shapes["double_blocks.0.img_mod.modulate_table"].shape) == (1, 6, 4096)
    assert tuple(shapes["proj_out.weight"].shape) == (64, 4096)


def test_rope_is_relative():
    """q.k after RoPE depends on the position offset only, per axis."""
    cos, sin = grid_rope((2, 4, 4), TINY_DIT_CONFIG.rope_dim_list, TINY_DIT_CONFIG.theta)
    q = torch.randn(1, 1, 1, 32).expand(1, 32, 1, 32)
    k = torch.randn(1, 1, 1, 32).expand(1, 32, 1, 32)
    rq, rk = apply_rope(q, cos, sin)[0, :, 0], apply_rope(k, cos, sin)[0, :, 0]
    # tokens (t=0,h=0,w=0)->(0,0,1) and (0,1,1)->(0,1,2) are the same offset
    assert torch.allclose(rq[0] @ rk[1], rq[5] @ rk[6], atol=1e-5)
    assert not torch.allclose(rq[0] @ rk[1], rq[0] @ rk[2], atol=1e-3)
    assert torch.allclose(rq.norm(dim=-1), q[0, :, 0].norm(dim=-1), atol=1e-5)


def test_padded_text_tokens_do_not_change_the_output():
    model = tiny_float_dit()
    torch.manual_seed(0)
    latents = torch.randn(1, 2, 16, 1, 8, 8)
    text = torch.randn(1, 5, 64)
    t = torch.tensor([700.0])
    plain = model(latents, t, text, torch.ones(1, 5, dtype=torch.bool))
    padded_text = torch.cat((text, torch.randn(1, 3, 64)), dim=1)
    mask = torch.tensor([[True] * 5 + [False] * 3])
    padded = model(latents, t, padded_text, mask)
    assert torch.allclose(plain, padded, atol=1e-5)
    assert plain.shape == (1, 16, 1, 8, 8)


def test_condition_item_changes_the_prediction():
    model = tiny_float_dit()
    torch.manual_seed(1)
    latents = torch.randn(1, 2, 16, 1, 8, 8)
    text, t = torch.randn(1, 4, 64), torch.tensor([500.0])
    other = latents.clone()
    other[:, 0] = torch.randn(16, 1, 8, 8)  # a different condition image, same target
    assert not torch.allclose(model(latents, t, text), model(other, t, text), atol=1e-4)
