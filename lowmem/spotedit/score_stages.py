"""The Wan VAE decoder stages SpotEdit's token score reads, cut down to what one frame needs.

The score compares features of `post_quant_conv -> conv_in -> mid_block -> up_blocks[0]` for a
single latent frame. Every causal 3-D convolution there pads its input with two frames of zeros
in front, so on one frame only the last temporal tap of each (3, k, k) kernel ever meets data:
each becomes a 2-D convolution with that tap alone (`FrameConv`), the same features with a third
of the convolution work, and on the CPU the fast 2-D kernels instead of the im2col 3-D one. The stages
are copied once per edit into the compute dtype (bf16 on a GPU, instead of the VAE's float32) on
the compute device, with the latent statistics held as device tensors: nothing is rebuilt per call.
"""

from __future__ import annotations

import copy

import torch
from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d
import torch.nn.functional as F
from torch import Tensor, nn

from lowmem.models.vae import WanVAE


class FrameConv(nn.Module):
    """A causal `WanCausalConv3d` applied to one frame: a 2-D convolution with its last temporal tap."""

    def __init__(self, conv: WanCausalConv3d, dtype: torch.dtype) -> None:
        super().__init__()
        self.weight = nn.Parameter(conv.weight[:, :, -1].detach().to(dtype).clone(), requires_grad=False)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().to(dtype).clone(), requires_grad=False)
        pad_w, _, pad_h, _ = conv._padding[:4]
        self.padding = (pad_h, pad_w)
        self.stride = tuple(conv.stride[1:])

    def forward(self, x: Tensor, cache_x: Tensor | None = None) -> Tensor:
        return F.conv2d(x[:, :, 0], self.weight, self.bias, self.stride, self.padding).unsqueeze(2)


class ScoreStages(nn.Module):
    """post_quant_conv, conv_in, mid_block and up_blocks[0] of a Wan VAE for one frame, in `dtype`."""

    def __init__(self, vae: WanVAE, dtype: torch.dtype, device: torch.device | str | None = None) -> None:
        super().__init__()
        source = vae.module
        stages = nn.ModuleDict({
            "post_quant_conv": source.post_quant_conv,
            "conv_in": source.decoder.conv_in,
            "mid_block": source.decoder.mid_block,
            "up_block": source.decoder.up_blocks[0],
        })
        # deepcopy through a memo that already maps each causal conv to its one-frame form: the
        # full (3, k, k) kernels are never copied.
        memo: dict[int, object] = {id(m): FrameConv(m, dtype) for m in stages.modules() if isinstance(m, WanCausalConv3d)}
        self.stages = copy.deepcopy(stages, memo)
        device = device if device is not None else vae.device
        self.stages.to(device=device, dtype=dtype).eval().requires_grad_(False)
        config = source.config
        shape = (1, len(config.latents_mean), 1, 1, 1)
        self.register_buffer("mean", torch.tensor(config.latents_mean, dtype=dtype).view(shape).to(device), persistent=False)
        self.register_buffer("std", torch.tensor(config.latents_std, dtype=dtype).view(shape).to(device), persistent=False)
        self.dtype = dtype

    @torch.no_grad()
    def forward(self, latents: Tensor) -> list[Tensor]:
        """Normalised latents (B, 16, 1, h, w) -> [conv_in, mid_block, up_blocks[0]] features, frame
        axis dropped: (B, 4d, h, w), (B, 4d, h, w), (B, 2d, 2h, 2w), as `WanVAE.decoder_features`."""
        x = self.stages["post_quant_conv"](latents.to(self.dtype) * self.std + self.mean)
        first = self.stages["conv_in"](x)
        middle = self.stages["mid_block"](first)
        last = self.stages["up_block"](middle)
        return [f[:, :, 0] for f in (first, middle, last)]
