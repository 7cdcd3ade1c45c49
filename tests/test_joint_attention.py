"""Joint attention without a mask (issue 10, defect 8): the same numbers as the masked SDPA, flash-
eligible calls only (no mask reaches SDPA), and no host read of the mask in a forward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from lowmem.models.dit import build_dit
from lowmem.models.dit_config import TINY_DIT_CONFIG
from lowmem.models.joint_attention import TextPadding, joint_attention
from lowmem.spotedit import DiTSpotModel
from lowmem.tiny.random_model import tiny_dit_state_dict

CFG = TINY_DIT_CONFIG


def masked_reference(q, k, v, text_mask):
    image_keys = text_mask.new_ones(k.shape[0], k.shape[2] - text_mask.shape[1])
    mask = torch.cat((image_keys, text_mask), dim=1)[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).flatten(2)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
@pytest.mark.parametrize("queries", [40, 13])  # 13: a SpotEdit partial step (fewer queries than keys)
def test_equals_the_masked_attention(dtype, tol, queries):
    torch.manual_seed(0)
    text_mask = torch.tensor([[True] * 4 + [False] * 5, [True] * 9, [True] * 9, [True] * 2 + [False] * 7])
    b, heads, keys, dim = 4, 3, 32 + 9, 16
    q = torch.randn(b, heads, queries, dim, dtype=dtype)
    k, v = torch.randn(2, b, heads, keys, dim, dtype=dtype)
    padding = TextPadding.from_mask(text_mask)
    assert padding.pads == (5, 0, 0, 7) and padding.runs() == [(0, 1, 5), (1, 3, 0), (3, 4, 7)]
    out = joint_attention(q, k, v, padding)
    reference = masked_reference(q, k, v, text_mask)
    assert out.shape == reference.shape == (b, queries, heads * dim)
    assert (out - reference).abs().max() <= tol
    assert torch.equal(joint_attention(q, k, v, TextPadding((0,) * b)), joint_attention(q, k, v, None))


def test_rejects_a_mask_that_is_not_right_padded():
    with pytest.raises(ValueError, match="right-padded"):
        TextPadding.from_mask(torch.tensor([[True, False, True]]))


class SDPACalls(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.masks = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            self.masks.append(args[3] if len(args) > 3 else kwargs.get("attn_mask"))
        return func(*args, **kwargs)


def tiny_float_dit():
    model = build_dit(CFG, device="meta", dtype=torch.float32)
    model.load_state_dict({k: v.float() for k, v in tiny_dit_state_dict().items()}, assign=True)
    return model


def test_cfg_forward_passes_no_mask_to_sdpa_and_equals_the_per_prompt_forwards():
    """[uncond ; cond] with the uncond prompt shorter: every SDPA call is unmasked, and each row equals
    that prompt run alone without padding."""
    model = tiny_float_dit()
    torch.manual_seed(3)
    latents = torch.randn(1, 2, 16, 1, 8, 8).expand(2, -1, -1, -1, -1, -1)
    text = torch.randn(2, 6, CFG.text_states_dim)
    mask = torch.tensor([[True] * 3 + [False] * 3, [True] * 6])
    t = torch.tensor([400.0, 400.0])
    with SDPACalls() as calls:
        both = model(latents, t, text, TextPadding.from_mask(mask))
    assert len(calls.masks) == 2 * len(model.double_blocks) and all(m is None for m in calls.masks)
    assert torch.allclose(both[:1], model(latents[:1], t[:1], text[:1, :3]), atol=1e-5)
    assert torch.allclose(both[1:], model(latents[1:], t[1:], text[1:]), atol=1e-5)
    assert torch.equal(both, model(latents, t, text, mask))  # a mask tensor is read into the same padding


def test_cfg_forward_and_spot_step_read_no_mask_on_the_host():
    """On `meta` any host read of device data raises; the padded forward must not need one."""
    model = build_dit(CFG, device="meta")
    latents = torch.empty(2, 2, CFG.in_channels, 1, 8, 8, device="meta", dtype=torch.bfloat16)
    text = torch.empty(2, 6, CFG.text_states_dim, device="meta", dtype=torch.bfloat16)
    t = torch.empty(2, device="meta")
    padding = TextPadding((3, 0))
    assert model(latents, t, text, padding).is_meta
    spot = DiTSpotModel(model)
    cache = spot.new_cache()
    assert spot.full(latents, t, text, padding, cache).is_meta
