"""The SpatialEdit MM-DiT (the official `Transformer3DModel`), with the official state-dict keys.

Input is in-context: the latents of the condition image(s) and of the target being denoised are
items along a time-like axis. The target item is moved first, so its tokens are the first
`h*w` image tokens and each condition image is one more "frame" with its own temporal RoPE index.

The 40 blocks live in one `nn.ModuleList` (`double_blocks`); the loop over them is delegated to
`block_runner` so the offload streamer can run the very same blocks with streamed weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol

import torch
from diffusers.models.embeddings import PixArtAlphaTextProjection, TimestepEmbedding, Timesteps
from torch import nn

from lowmem.models.dit_block import BlockContext, KVHook, MMDoubleStreamBlock
from lowmem.models.dit_config import DiTConfig
from lowmem.models.joint_attention import TextPadding
from lowmem.models.rope import grid_rope


class BlockRunner(Protocol):
    def __call__(
        self, blocks: nn.ModuleList, img: torch.Tensor, txt: torch.Tensor, ctx: BlockContext
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


def run_blocks_in_order(
    blocks: nn.ModuleList, img: torch.Tensor, txt: torch.Tensor, ctx: BlockContext
) -> tuple[torch.Tensor, torch.Tensor]:
    """The resident runner: every block already sits on the compute device."""
    for index, block in enumerate(blocks):
        img, txt = block(img, txt, ctx, index)
    return img, txt


class ConditionEmbedder(nn.Module):
    """Wan-style: sinusoidal timestep -> MLP -> 6 x hidden modulation vector; text states -> hidden."""

    def __init__(self, hidden_size: int, time_freq_dim: int, text_states_dim: int):
        super().__init__()
        self.timesteps_proj = Timesteps(num_channels=time_freq_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedder = TimestepEmbedding(in_channels=time_freq_dim, time_embed_dim=hidden_size)
        self.act_fn = nn.SiLU()
        self.time_proj = nn.Linear(hidden_size, hidden_size * 6)
        self.text_embedder = PixArtAlphaTextProjection(text_states_dim, hidden_size, act_fn="gelu_tanh")

    def forward(self, timestep: torch.Tensor, text_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = self.timesteps_proj(timestep).to(text_states.dtype)
        temb = self.time_embedder(freqs)
        vec = self.time_proj(self.act_fn(temb)).unflatten(1, (6, -1))
        return vec, self.text_embedder(text_states)


@dataclass
class TokenGrid:
    """Shape of the image token grid of one forward: items x rows x columns."""

    items: int
    height: int
    width: int

    @property
    def per_item(self) -> int:
        return self.height * self.width


class SpatialEditDiT(nn.Module):
    """Reproduces the official `Transformer3DModel` (inference path, no REPA head)."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config
        d = config.hidden_size
        self.img_in = nn.Conv3d(config.in_channels, d, kernel_size=config.patch_size, stride=config.patch_size)
        self.condition_embedder = ConditionEmbedder(d, config.time_freq_dim, config.text_states_dim)
        self.double_blocks = nn.ModuleList(
            MMDoubleStreamBlock(d, config.heads_num, config.mlp_hidden) for _ in range(config.mm_double_blocks_depth)
        )
        self.norm_out = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.proj_out = nn.Linear(d, config.out_channels * config.patch_size[1] * config.patch_size[2])
        self.block_runner: BlockRunner = run_blocks_in_order

    @property
    def dtype(self) -> torch.dtype:
        return self.proj_out.bias.dtype

    def embed_image(self, latents: torch.Tensor) -> tuple[torch.Tensor, TokenGrid]:
        """latents (B, items, C, 1, H, W) with the target LAST -> tokens (B, items*h*w, hidden), target first."""
        if latents.dim() != 6 or latents.shape[3] != 1:
            raise ValueError(f"expected latents (B, items, C, 1, H, W), got {tuple(latents.shape)}")
        ordered = torch.cat((latents[:, -1:], latents[:, :-1]), dim=1)
        video = ordered.flatten(2, 3).transpose(1, 2)  # (B, C, items, H, W)
        tokens = self.img_in(video.to(self.img_in.weight.dtype))
        grid = TokenGrid(items=tokens.shape[2], height=tokens.shape[3], width=tokens.shape[4])
        return tokens.flatten(2).transpose(1, 2), grid

    def context(
        self,
        timestep: torch.Tensor,
        text_states: torch.Tensor,
        text_mask: Optional[torch.Tensor | TextPadding],
        grid: TokenGrid,
        kv_hook: Optional[KVHook] = None,
    ) -> tuple[torch.Tensor, BlockContext]:
        """Embedded text tokens and the per-forward context shared by all blocks. `text_mask` is the
        conditioner's (B, L_txt) bool mask or, in a sampling loop, its `TextPadding` read once per
        edit (a mask tensor is read on the host here: a device sync when it lives on the device)."""
        vec, txt = self.condition_embedder(timestep, text_states.to(self.dtype))
        cos, sin = grid_rope((grid.items, grid.height, grid.width), self.config.rope_dim_list, self.config.theta, txt.device)
        padding = TextPadding.from_mask(text_mask) if isinstance(text_mask, torch.Tensor) else text_mask
        return txt, BlockContext(vec=vec, rope_cos=cos, rope_sin=sin, text_padding=padding, kv_hook=kv_hook)

    def head(self, img_target: torch.Tensor, grid: TokenGrid) -> torch.Tensor:
        """Target tokens (B, h*w, hidden) -> velocity (B, C, 1, H, W), unpatchified as `unpatchify_new`."""
        out = self.proj_out(self.norm_out(img_target))
        _, ph, pw = self.config.patch_size
        c = self.config.out_channels
        out = out.reshape(out.shape[0], grid.height, grid.width, ph, pw, c)
        out = torch.einsum("bhwpqc->bchpwq", out)
        return out.reshape(out.shape[0], c, 1, grid.height * ph, grid.width * pw)

    def forward(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        text_states: torch.Tensor,
        text_mask: Optional[torch.Tensor | TextPadding] = None,
    ) -> torch.Tensor:
        """Velocity of the target item. timestep is in [0, 1000] (sigma * 1000), one per batch row."""
        img, grid = self.embed_image(latents)
        txt, ctx = self.context(timestep, text_states, text_mask, grid)
        img, _ = self.block_runner(self.double_blocks, img, txt, ctx)
        return self.head(img[:, : grid.per_item], grid)


def build_dit(config: DiTConfig, device: torch.device | str = "meta", dtype: torch.dtype = torch.bfloat16) -> SpatialEditDiT:
    """Build the DiT with no real allocation on `meta` (fill it with `load_state_dict(assign=True)`)."""
    with torch.device(device):
        model = SpatialEditDiT(config)
    return model.to(dtype=dtype).eval().requires_grad_(False)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

