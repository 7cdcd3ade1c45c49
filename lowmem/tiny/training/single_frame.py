"""Training speed for the Wan VAE on still images: causal 3D convolutions run as the 2D ones they are.

For a single frame with no cache, `WanCausalConv3d` pads two zero frames in front and convolves
three frames to produce one: only the last temporal slice of its kernel ever meets data. Running
that slice as a `conv2d` gives the same numbers (to float rounding; tests/test_training.py checks
it) and, on a CPU, trains the tiny VAE about 2.4x faster. Every other call (videos, cached chunks)
goes through diffusers' own forward unchanged.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d


def _single_frame_forward(stock):
    def forward(self: WanCausalConv3d, x: torch.Tensor, cache_x: torch.Tensor | None = None) -> torch.Tensor:
        if x.shape[2] != 1 or cache_x is not None or self.stride[0] != 1 or self.dilation[0] != 1:
            return stock(self, x, cache_x)
        left, right, top, bottom = self._padding[:4]
        frame = F.pad(x[:, :, 0], (left, right, top, bottom))
        out = F.conv2d(frame, self.weight[:, :, -1], self.bias, self.stride[1:], 0, self.dilation[1:], self.groups)
        return out.unsqueeze(2)

    return forward


@contextmanager
def single_frame_convolutions() -> Iterator[None]:
    """Within the block, every WanCausalConv3d runs a lone uncached frame as a 2D convolution."""
    stock = WanCausalConv3d.forward
    WanCausalConv3d.forward = _single_frame_forward(stock)
    try:
        yield
    finally:
        WanCausalConv3d.forward = stock
