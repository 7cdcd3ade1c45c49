"""The SpotEdit denoising loop for the SpatialEdit pipeline.

Steps: the first `initial` steps and the reset steps run in full and record the K/V caches; before
the first spot step of each segment (after the initial steps, after each reset) the selector turns
the step before's X0_hat into the active-token mask, kept for the segment; a spot step runs
the DiT on the active tokens only (CFG rows [uncond ; cond] share the set), and the non-edited
tokens follow the velocity that carries them straight to the condition latent, v = (x - y) / sigma.
A step whose mask holds every token runs in full, so a threshold that skips nothing gives exactly
the full path. At the end the non-edited tokens are replaced by the condition's (`replace_tokens`).

The host never waits for the device inside a step: the timesteps go to the device once, and the
token sets a selection decides (which tokens run, which are reused, the reuse mask over the
latents) are made on the host and sent to the device once per selection (`Selection`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from lowmem.models.dit import SpatialEditDiT
from lowmem.models.guidance import BatchedGuidance
from lowmem.models.scheduler import make_scheduler
from lowmem.models.vae import WanVAE
from lowmem.spotedit.attention import fusion_alpha
from lowmem.spotedit.cache import SpotKVCache
from lowmem.spotedit.config import SpotConfig
from lowmem.spotedit.model import DiTSpotModel, token_indices
from lowmem.spotedit.replace import replace_tokens
from lowmem.spotedit.selector import SpotSelector, tokens_to_latent


@dataclass
class SpotOutcome:
    active_fraction: list[float] = field(default_factory=list)  # per step; 1.0 for full steps
    full_steps: list[int] = field(default_factory=list)
    cache_bytes: int = 0
    cache_device: str = ""
    cache_bytes_moved: int = 0  # host <-> device copies of a host-placed cache, whole edit
    edited_mask: Optional[torch.Tensor] = None  # (h, w) bool token mask of the final edited region

    def report_items(self) -> dict:
        """RunReport.extra entries: active-token fraction per step (1.0 = full step), K/V cache size."""
        return {
            "spot_active_fraction": [round(f, 3) for f in self.active_fraction],
            "spot_full_steps": self.full_steps,
            "spot_cache_bytes": self.cache_bytes,
            "spot_cache_device": self.cache_device or "-",
            "spot_cache_bytes_moved": self.cache_bytes_moved,
        }

    def mask_image(self, size: tuple[int, int]) -> Optional[Image.Image]:
        """The edited region as a black/white image of `size` (width, height); None without a mask."""
        if self.edited_mask is None:
            return None
        pixels = self.edited_mask.cpu().numpy().astype(np.uint8) * 255
        return Image.fromarray(pixels, mode="L").resize(size, Image.NEAREST)


class SpotVelocityModel:
    """What the loop needs from the network; `DiTSpotModel` is the real one (tests may fake it)."""

    def new_cache(self, device) -> SpotKVCache: ...
    def full(self, latents, timestep, text_states, text_mask, cache=None) -> torch.Tensor: ...
    def partial(self, latents, timestep, text_states, text_mask, active, cache, alpha, reused=None) -> torch.Tensor: ...


@dataclass(frozen=True)
class Selection:
    """One selection's token sets, decided on the host and sent to the device once."""

    mask: torch.Tensor  # (h, w) bool on the host: the edited tokens
    everything: bool  # every token edited: the steps run in full
    fraction: float  # edited tokens / all tokens
    active: torch.Tensor  # flat indices of the edited tokens, on the device
    reused: torch.Tensor  # flat indices of the others, on the device
    reuse: torch.Tensor  # (1, 1, 1, H, W) bool over the latents: where the reused tokens lie, on the device

    @classmethod
    def of(cls, mask: torch.Tensor, device: torch.device) -> "Selection":
        flat = mask.flatten()
        active, reused = token_indices(flat.nonzero().squeeze(1), flat.numel(), device)
        return cls(mask, bool(flat.all()), int(flat.sum()) / flat.numel(), active, reused,
                   tokens_to_latent(~mask).to(device))


def spot_denoise(
    dit: SpatialEditDiT | SpotVelocityModel,
    vae: WanVAE,
    condition: torch.Tensor,
    states: torch.Tensor,
    mask: torch.Tensor,
    steps: int,
    guidance: float,
    generator: torch.Generator,
    config: SpotConfig,
    device: torch.device,
    dtype: torch.dtype,
    progress: bool = True,
    cfg: Optional[BatchedGuidance] = None,
    cache: Optional[SpotKVCache] = None,
    on_step: Optional[Callable[[int], None]] = None,
) -> tuple[torch.Tensor, SpotOutcome]:
    """`SpatialEditPipeline.denoise` with SpotEdit; same noise and full steps as the plain loop. `cfg`: where
    the CFG rows run (default: both here); under CFG parallel each rank caches the K/V of its own row,
    and the guided velocity, hence the selector's mask, is the same on every rank. `cache`: the caller's,
    kept from edit to edit (its device memory is given back after this one, its host arena is not);
    None: caches made for this edit, given back whole after it. `on_step(steps_done)` after each step."""

    model = dit if hasattr(dit, "partial") and hasattr(dit, "new_cache") else DiTSpotModel(dit)
    scheduler = make_scheduler(steps)
    x = torch.randn(condition.shape, generator=generator, dtype=torch.float32).to(device)
    condition = condition.float()
    initial, resets = config.schedule(steps)
    selector = SpotSelector(vae, condition, config.threshold, config.dilation, dtype=dtype)
    selections = config.selection_steps(steps)
    kept = cache is not None
    edited: Optional[Selection] = None  # the tokens of the coming steps
    timesteps = scheduler.timesteps.to(device, torch.float32)
    outcome = SpotOutcome()
    cfg = cfg or BatchedGuidance()
    batch = cfg.rows(guidance)  # [uncond ; cond], or one of them (guidance <= 1, CFG parallel)

    try:
        for i, t in enumerate(tqdm(scheduler.timesteps, desc="denoise (spot)", disable=not progress, leave=False)):
            sigma = float(scheduler.sigmas[i])
            items = torch.stack((condition, x), dim=1).expand(batch, -1, -1, -1, -1, -1)
            timestep = timesteps[i].expand(batch)
            spot_step = (
                cache is not None and cache.ready and edited is not None and i >= initial and i not in resets
                and not edited.everything
            )
            if spot_step:
                v = model.partial(items.to(dtype), timestep, states, mask, edited.active, cache, fusion_alpha(sigma),
                                  reused=edited.reused).float()
                v = cfg.velocity(v, guidance)
                v = torch.where(edited.reuse, (x - condition) / sigma, v)
                outcome.active_fraction.append(edited.fraction)
            else:
                record = i + 1 < steps and i + 1 >= initial and (i + 1) not in resets
                if record and cache is None:
                    cache = model.new_cache(config.cache_device)
                v = model.full(items.to(dtype), timestep, states, mask, cache if record else None).float()
                v = cfg.velocity(v, guidance)
                outcome.active_fraction.append(1.0)
                outcome.full_steps.append(i)
            last_chance = i + 1 == steps and edited is None and i + 1 >= initial  # no segment chose a region
            if i + 1 in selections or last_chance:
                chosen = selector.select(x - sigma * v)  # for the coming segment; after the last: the region
                edited = Selection.of(chosen, device) if chosen is not None else None
            x = scheduler.step(v, t, x).prev_sample
            if on_step is not None:
                on_step(i + 1)

        if edited is not None and not edited.everything:
            x = replace_tokens(x, condition, edited.mask.to(x.device))
        outcome.edited_mask = edited.mask if edited is not None else None
        if cache is not None:
            outcome.cache_bytes, outcome.cache_device = cache.nbytes, str(cache.device)
            outcome.cache_bytes_moved = cache.bytes_loaded + cache.bytes_written_back
    finally:  # however the loop ends (an exception, Ctrl-C): the caches' device memory goes back
        if cache is not None:
            cache.release(keep_host=kept)
    return x, outcome
