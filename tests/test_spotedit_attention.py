"""SpotEdit partial attention: same numbers as full attention for the queries it keeps."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lowmem.models.dit import build_dit
from lowmem.models.dit_block import BlockContext
from lowmem.models.dit_config import TINY_DIT_CONFIG
from lowmem.models.rope import apply_rope, grid_rope
from lowmem.spotedit import DiTSpotModel, SpotHook, SpotKVCache, fusion_alpha, gather_rope
from lowmem.spotedit.attention import frame_shift_rope
from lowmem.tiny.random_model import tiny_dit_state_dict

CFG = TINY_DIT_CONFIG


def tiny_float_dit():
    model = build_dit(CFG, device="meta", dtype=torch.float32)
    model.load_state_dict({k: v.float() for k, v in tiny_dit_state_dict().items()}, assign=True)
    return model


def test_partial_attention_equals_full_attention_on_the_kept_queries():
    torch.manual_seed(0)
    h = w = 4
    n = h * w
    heads, dim = 2, CFG.head_dim
    cos, sin = grid_rope((2, h, w), CFG.rope_dim_list, CFG.theta)
    q, k, v = (torch.randn(2, 2 * n, heads, dim) for _ in range(3))
    txt_q, txt_k, txt_v = (torch.randn(2, 3, heads, dim) for _ in range(3))
    # full: every image token with its RoPE, joint attention with the text
    rq, rk = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    full = F.scaled_dot_product_attention(
        torch.cat((rq, txt_q), 1).transpose(1, 2), torch.cat((rk, txt_k), 1).transpose(1, 2),
        torch.cat((v, txt_v), 1).transpose(1, 2),
    ).transpose(1, 2)
    # partial: target tokens at `active` recomputed with gathered RoPE rows, the rest from a cache
    active = torch.tensor([1, 5, 6, 7, 14])
    cache = SpotKVCache(1)
    cache.record(0, rk, v, n)
    pcos, psin = gather_rope(cos, sin, active)
    aq = apply_rope(q.index_select(1, active), pcos, psin)
    ak = apply_rope(k.index_select(1, active), pcos, psin)
    reused = torch.tensor([i for i in range(n) if i not in active.tolist()])
    keys, values = SpotHook(cache, active, reused, alpha=None, shift=None)(0, ak, v.index_select(1, active))
    part = F.scaled_dot_product_attention(
        torch.cat((aq, txt_q), 1).transpose(1, 2), torch.cat((keys, txt_k), 1).transpose(1, 2),
        torch.cat((values, txt_v), 1).transpose(1, 2),
    ).transpose(1, 2)
    assert torch.allclose(part[:, : len(active)], full[:, active], atol=1e-5)
    assert torch.allclose(part[:, len(active):], full[:, 2 * n:], atol=1e-5)  # the text queries too


def test_frame_shift_moves_a_condition_key_to_the_target_frame():
    torch.manual_seed(1)
    cos, sin = grid_rope((2, 3, 3), CFG.rope_dim_list, CFG.theta)
    k = torch.randn(1, 9, 2, CFG.head_dim)
    as_condition = apply_rope(k, cos[9:], sin[9:])
    shift = frame_shift_rope(CFG.rope_dim_list, CFG.theta, 1, 0, "cpu")
    assert shift[0].shape == (1, CFG.rope_dim_list[0])  # only the temporal channels turn
    shifted = as_condition.clone()
    shifted[..., : CFG.rope_dim_list[0]] = apply_rope(as_condition[..., : CFG.rope_dim_list[0]], *shift)
    assert torch.allclose(shifted, apply_rope(k, cos[:9], sin[:9]), atol=1e-5)


def _inputs(seed: int = 0):
    torch.manual_seed(seed)
    latents = torch.randn(1, 2, 16, 1, 8, 8).expand(2, -1, -1, -1, -1, -1).contiguous()
    text = torch.randn(2, 5, CFG.text_states_dim)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    return latents, torch.tensor([600.0, 600.0]), text, mask


def test_full_forward_with_recording_equals_the_dit_forward():
    model = tiny_float_dit()
    latents, t, text, mask = _inputs()
    spot = DiTSpotModel(model)
    cache = spot.new_cache()
    assert torch.equal(spot.full(latents, t, text, mask, cache), model(latents, t, text, mask))
    assert cache.ready and cache.nbytes == 2 * 2 * 2 * 16 * 2 * CFG.hidden_size * 4  # blocks*(cond+target)*KV*B*n*hidden*fp32


def test_partial_dit_forward_equals_full_forward_on_active_tokens():
    """With caches of this very step and no fusion, the kept tokens see exactly what they saw in full."""
    model = tiny_float_dit()
    latents, t, text, mask = _inputs(2)
    spot = DiTSpotModel(model)
    cache = spot.new_cache()
    full = spot.full(latents, t, text, mask, cache)
    for active in (torch.tensor([0, 3, 4, 9, 10, 15]), torch.arange(16)):
        part = spot.partial(latents, t, text, mask, active, cache, alpha=None)
        grid = torch.zeros(16, dtype=torch.bool)
        grid[active] = True
        pix = grid.reshape(4, 4).repeat_interleave(2, 0).repeat_interleave(2, 1)
        assert torch.allclose(part[..., pix], full[..., pix], atol=1e-5)


def test_partial_forward_goes_through_the_block_runner():
    model = tiny_float_dit()
    latents, t, text, mask = _inputs(3)
    spot = DiTSpotModel(model)
    cache = spot.new_cache()
    spot.full(latents, t, text, mask, cache)
    seen = []

    def runner(blocks, img, txt, ctx: BlockContext):
        seen.append((img.shape[1], ctx.rope_cos.shape[0]))
        for index, block in enumerate(blocks):
            img, txt = block(img, txt, ctx, index)
        return img, txt

    model.block_runner = runner
    spot.partial(latents, t, text, mask, torch.tensor([2, 3]), cache, alpha=fusion_alpha(0.6))
    assert seen == [(2, 2)]


def test_fusion_moves_reused_tokens_toward_the_condition():
    assert fusion_alpha(0.0) == 1.0 and abs(fusion_alpha(1.0)) < 1e-12
    model = tiny_float_dit()
    latents, t, text, mask = _inputs(4)
    spot = DiTSpotModel(model)
    cache = spot.new_cache()
    spot.full(latents, t, text, mask, cache)
    before = cache.view(0).clone()
    spot.partial(latents, t, text, mask, torch.tensor([0]), cache, alpha=0.0)  # alpha 0: take the condition
    kv = cache.view(0)
    target, cond = kv[:, :, :16], kv[:, :, 16:]
    assert torch.equal(cond, before[:, :, 16:])  # the condition cache is read-only in spot steps
    assert torch.allclose(target[1, :, 1:], cond[1, :, 1:])
    # keys: the condition key re-rotated from frame 1 to frame 0 (rows/columns unchanged)
    cos, sin = grid_rope((2, 4, 4), CFG.rope_dim_list, CFG.theta)
    unrotated = apply_rope(cond[0, :, 1:], cos[17:], -sin[17:])
    assert torch.allclose(target[0, :, 1:], apply_rope(unrotated, cos[1:16], sin[1:16]), atol=1e-5)
    assert not torch.allclose(target, before[:, :, :16])
