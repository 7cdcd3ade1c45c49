"""The MM-DiT's joint attention over [image keys ; text keys] with right-padded text, without a mask.

Under classifier-free guidance the batch rows carry prompts of different lengths ([uncond ; cond],
right-padded to the longer one). A boolean key mask keeps SDPA off its flash kernel in every block
of every step, and deciding per forward whether a mask is needed reads it on the host (a device
sync). Instead the padding of each row is read once per edit, on the host (`TextPadding`), and
each run of rows with the same padding attends, unmasked, over its valid keys only: padded text
keys are the last keys of the row, so slicing drops them. A softmax over the valid keys is what
the mask computes (a masked key weighs exp(-inf) = 0); the queries are untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class TextPadding:
    """Padded (invalid) text tokens at the end of each batch row, known on the host."""

    pads: tuple[int, ...]

    @classmethod
    def from_mask(cls, mask: torch.Tensor) -> "TextPadding":
        """From a (B, L_txt) bool mask, True on valid tokens. Reads the mask on the host: once per
        edit (a mask on the compute device costs one sync here), never per forward."""
        host = mask.detach().to("cpu", torch.bool)
        if host.dim() != 2:
            raise ValueError(f"text mask must be (batch, text tokens), got {tuple(mask.shape)}")
        lengths = host.sum(dim=1)
        if not torch.equal(host, torch.arange(host.shape[1]) < lengths[:, None]):
            raise ValueError("text mask must be right-padded: each row's valid tokens first, then only padding")
        return cls(tuple(int(host.shape[1] - n) for n in lengths))

    def runs(self) -> list[tuple[int, int, int]]:
        """(first row, end row, padding) of each run of consecutive rows with the same padding."""
        runs: list[tuple[int, int, int]] = []
        for row, pad in enumerate(self.pads):
            if runs and runs[-1][2] == pad:
                runs[-1] = (runs[-1][0], row + 1, pad)
            else:
                runs.append((row, row + 1, pad))
        return runs


def joint_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, padding: Optional[TextPadding]
) -> torch.Tensor:
    """SDPA of q (B, H, Lq, D) over k, v (B, H, Lk, D) whose last keys are the text tokens, each row
    ignoring its padded text keys. Returns (B, Lq, H * Dv)."""
    if padding is None or not any(padding.pads):
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
    if len(padding.pads) != q.shape[0]:
        raise ValueError(f"text padding is for {len(padding.pads)} batch rows, attention has {q.shape[0]}")
    out = q.new_empty(q.shape[0], q.shape[2], q.shape[1], v.shape[3])  # (B, Lq, H, Dv)
    for start, end, pad in padding.runs():
        keys = k.shape[2] - pad
        rows = F.scaled_dot_product_attention(q[start:end], k[start:end, :, :keys], v[start:end, :, :keys])
        out[start:end].copy_(rows.transpose(1, 2))
        del rows
    return out.flatten(2)
