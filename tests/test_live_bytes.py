"""The live-bytes tracer against cases whose bytes are known by hand."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lowmem.planning.live_bytes import LiveBytes, trace_peak

META = "meta"


def test_counts_new_storages_while_they_live():
    with LiveBytes() as tracer:
        x = torch.empty(1000, device=META)  # 4,000 B
        y = x * 2  # 4,000 B
        z = y + 1  # 4,000 B: peak 12,000
        del y
        assert tracer.live == 8000
        x.add_(1)  # in place: nothing new
        x.view(10, 100).t()  # views share x's storage
        assert tracer.live == 8000
        del x, z
    assert tracer.peak == 12000
    assert tracer.live == 0


def test_inputs_and_weights_made_before_the_trace_are_not_counted():
    w = torch.empty(64, 64, device=META)
    x = torch.empty(8, 64, device=META)
    assert trace_peak(lambda: x @ w) == 8 * 64 * 4


def test_mlp_peak_is_hidden_activation_plus_its_gelu():
    d, h, tokens = 256, 1024, 300
    mlp = nn.Sequential(nn.Linear(d, h), nn.GELU(), nn.Linear(h, d)).to(META, torch.bfloat16)
    x = torch.empty(2, tokens, d, device=META, dtype=torch.bfloat16)
    # linear1's output and gelu's output live together; then gelu's output and linear2's output.
    expected = max(2 * h, h + d) * 2 * tokens * 2
    assert trace_peak(lambda: mlp(x)) == expected


def test_autograd_is_off_so_temporaries_are_freed():
    mlp = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64)).to(META)  # params require grad
    x = torch.empty(10, 64, device=META)
    assert trace_peak(lambda: mlp(x)) == max(2 * 256, 256 + 64) * 10 * 4


def test_attention_is_counted_as_the_fused_kernel_not_the_score_matrix():
    b, heads, n, dim = 2, 4, 4096, 64
    q = torch.empty(b, heads, n, dim, device=META, dtype=torch.bfloat16)
    peak = trace_peak(lambda: F.scaled_dot_product_attention(q, q, q))
    out, logsumexp = b * heads * n * dim * 2, b * heads * n * 4
    assert peak == out + logsumexp  # the (n, n) scores would be 268 MB
    mask = torch.ones(b, 1, 1, n, dtype=torch.bool, device=META)
    assert trace_peak(lambda: F.scaled_dot_product_attention(q, q, q, attn_mask=mask)) == out + logsumexp + b * n * 2


def test_full_size_dit_block_with_cfg_at_1024():
    from lowmem.models.dit_block import BlockContext, MMDoubleStreamBlock

    hidden, tokens = 4096, 2 * 64 * 64  # target + condition image at 1024²
    with torch.device(META):
        block = MMDoubleStreamBlock(hidden, 32, 4 * hidden).to(torch.bfloat16)
    img = torch.empty(2, tokens, hidden, device=META, dtype=torch.bfloat16)
    txt = torch.empty(2, 256, hidden, device=META, dtype=torch.bfloat16)
    cos = torch.empty(tokens, hidden // 32, device=META)
    ctx = BlockContext(vec=torch.empty(2, 6, hidden, device=META, dtype=torch.bfloat16), rope_cos=cos,
                       rope_sin=cos)
    peak = trace_peak(lambda: block(img, txt, ctx))
    mlp_hidden = 2 * tokens * 4 * hidden * 2  # one (B, N, 4*hidden) bf16 tensor
    assert 2 * mlp_hidden <= peak < 2 * tokens * tokens * 32 * 2  # holds the MLP, never the scores
