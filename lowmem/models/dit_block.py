"""One MM double-stream block of the SpatialEdit DiT, with the official parameter names.

Image and text streams keep their own weights (`img_*`, `txt_*`) and meet in one joint attention
over [image tokens ; text tokens]. RoPE rotates image queries/keys only. Residuals are gated with
Wan-style modulation: a learned per-block table added to the network-wide time vector.

`BlockContext.kv_hook` is the one extension point SpotEdit needs: it sees each block's image K/V
(after RoPE) and may record them or return them extended with cached keys/values of tokens that
were left out of this forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from diffusers.models.attention import FeedForward
from torch import nn

from lowmem.models.joint_attention import TextPadding, joint_attention
from lowmem.models.rope import apply_rope

# (block_index, image_k, image_v) -> (keys, values) to attend over in place of the image K/V.
KVHook = Callable[[int, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class RMSNorm(nn.Module):
    """RMSNorm over the last dim computed in float32, affine (key `weight`), as the official QK-norm."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # One float32 copy of x alive at a time (squared in place); x * r promotes to float32 exactly
        # as the float32 copy would, so the numbers are those of the textbook form.
        mean_square = x.to(torch.float32, copy=True).pow_(2).mean(-1, keepdim=True)
        normed = (x * torch.rsqrt(mean_square + self.eps)).type_as(x)
        return normed * self.weight


class WanModulation(nn.Module):
    """shift/scale/gate x2 = per-block `modulate_table` + the shared (B, 6, hidden) time vector."""

    def __init__(self, hidden_size: int, factor: int = 6):
        super().__init__()
        self.factor = factor
        self.modulate_table = nn.Parameter(torch.zeros(1, factor, hidden_size))

    def forward(self, vec: torch.Tensor) -> list[torch.Tensor]:
        return list((self.modulate_table + vec).unbind(dim=1))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


@dataclass
class BlockContext:
    """What every block of one forward shares."""

    vec: torch.Tensor  # (B, 6, hidden) time modulation vector
    rope_cos: torch.Tensor  # (L_img, head_dim) or (B, L_img, head_dim)
    rope_sin: torch.Tensor
    text_padding: Optional[TextPadding] = None  # padded text tokens per row (host), None: no padding
    kv_hook: Optional[KVHook] = None


class MMDoubleStreamBlock(nn.Module):
    def __init__(self, hidden_size: int, heads_num: int, mlp_hidden: int):
        super().__init__()
        self.heads_num = heads_num
        head_dim = hidden_size // heads_num
        for stream in ("img", "txt"):
            setattr(self, f"{stream}_mod", WanModulation(hidden_size))
            setattr(self, f"{stream}_norm1", nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6))
            setattr(self, f"{stream}_attn_qkv", nn.Linear(hidden_size, hidden_size * 3, bias=True))
            setattr(self, f"{stream}_attn_q_norm", RMSNorm(head_dim))
            setattr(self, f"{stream}_attn_k_norm", RMSNorm(head_dim))
            setattr(self, f"{stream}_attn_proj", nn.Linear(hidden_size, hidden_size, bias=True))
            setattr(self, f"{stream}_norm2", nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6))
            setattr(self, f"{stream}_mlp", FeedForward(hidden_size, inner_dim=mlp_hidden, activation_fn="gelu-approximate"))

    def _qkv(self, stream: str, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor):
        """q, k (normed) and v (B, L, H, D); v is a view of the qkv projection, which lives as long as v."""
        h = modulate(getattr(self, f"{stream}_norm1")(x), shift, scale)
        qkv = getattr(self, f"{stream}_attn_qkv")(h)
        del h
        q, k, v = qkv.unflatten(-1, (3, self.heads_num, -1)).unbind(dim=2)
        q = getattr(self, f"{stream}_attn_q_norm")(q).to(v.dtype)
        k = getattr(self, f"{stream}_attn_k_norm")(k).to(v.dtype)
        return q, k, v

    def _attention(
        self, img: torch.Tensor, txt: torch.Tensor, img_mods: list, txt_mods: list, ctx: BlockContext, index: int
    ) -> torch.Tensor:
        """Joint attention output (B, L_img + L_txt, hidden). Every q/k/v and both qkv projections are
        dropped as soon as the joint q/k/v hold them, so none is alive past the attention."""
        n_img = img.shape[1]
        txt_q, txt_k, txt_v = self._qkv("txt", txt, txt_mods[0], txt_mods[1])
        img_q, img_k, img_v = self._qkv("img", img, img_mods[0], img_mods[1])
        q = img_q.new_empty(img_q.shape[0], n_img + txt_q.shape[1], *img_q.shape[2:])
        apply_rope(img_q, ctx.rope_cos, ctx.rope_sin, out=q[:, :n_img])  # RoPE'd straight into the joint q
        q[:, n_img:] = txt_q
        del img_q, txt_q
        img_k = apply_rope(img_k, ctx.rope_cos, ctx.rope_sin)
        if ctx.kv_hook is not None:
            img_k, img_v = ctx.kv_hook(index, img_k, img_v)
        k = torch.cat((img_k, txt_k), dim=1)
        del img_k, txt_k
        v = torch.cat((img_v, txt_v), dim=1)
        del img_v, txt_v  # the last views of the qkv projections
        return joint_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), ctx.text_padding)

    def _attention_residual(self, stream: str, x: torch.Tensor, attn: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        return x + getattr(self, f"{stream}_attn_proj")(attn) * gate.unsqueeze(1)

    def _mlp_residual(self, stream: str, x: torch.Tensor, mods: list[torch.Tensor]) -> torch.Tensor:
        _, _, _, shift2, scale2, gate2 = mods
        mlp_in = modulate(getattr(self, f"{stream}_norm2")(x), shift2, scale2)
        return x + getattr(self, f"{stream}_mlp")(mlp_in) * gate2.unsqueeze(1)

    def forward(
        self, img: torch.Tensor, txt: torch.Tensor, ctx: BlockContext, index: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        img_mods = self.img_mod(ctx.vec)
        txt_mods = self.txt_mod(ctx.vec)
        attn = self._attention(img, txt, img_mods, txt_mods, ctx, index)
        n_img = img.shape[1]
        img = self._attention_residual("img", img, attn[:, :n_img], img_mods[2])
        txt = self._attention_residual("txt", txt, attn[:, n_img:], txt_mods[2])
        del attn  # both streams' MLPs run without the attention output alive
        return self._mlp_residual("img", img, img_mods), self._mlp_residual("txt", txt, txt_mods)
