"""Phase 2: the DiT trained with the flow-matching objective, conditioned exactly as at inference.

A row is (condition latent, noisy target latent) as the two items of the in-context input, with
the condition first (the pipeline stacks them the same way), the timestep sigma * 1000, and the
frozen conditioner's states of the official prompt. Sigmas are drawn uniformly and shifted by the
sampler's shift, so training sees noise levels as often as sampling visits them:

    x_t = (1 - sigma) * x_0 + sigma * noise,     target velocity v = noise - x_0

(the Euler step of lowmem.models.scheduler integrates exactly this v). A fraction of the rows get
the unconditional prompt (empty instruction, same image), so classifier-free guidance has a
trained unconditional branch to push against.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from lowmem.models.dit import SpatialEditDiT, build_dit
from lowmem.models.dit_config import DiTConfig
from lowmem.models.scheduler import SHIFT, TRAIN_TIMESTEPS
from lowmem.tiny.training.dataset import EditSet
from lowmem.tiny.training.schedule import LossLog, warmup_cosine

UNCONDITIONAL_RATE = 0.1


@dataclass
class LatentSet:
    conditions: torch.Tensor  # (N, C, 1, h, w) normalised VAE latents of the model inputs
    targets: torch.Tensor  # (N, C, 1, h, w) of the targets


def shifted_sigmas(u: torch.Tensor, shift: float = SHIFT) -> torch.Tensor:
    """The scheduler's time shift applied to uniform draws u in [0, 1]."""
    return shift * u / (1 + (shift - 1) * u)


def flow_matching_loss(dit: SpatialEditDiT, latents: LatentSet, edits: EditSet, rows: list[int],
                       generator: torch.Generator, drop: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the predicted velocity on one batch of `rows`."""
    x0, condition = latents.targets[rows], latents.conditions[rows]
    # Drawn from the (CPU) generator, so a seed gives the same run on any device, then moved to the latents'.
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    sigma = shifted_sigmas(torch.rand(len(rows), generator=generator)).to(x0.device)
    s = sigma.view(-1, 1, 1, 1, 1)
    noisy = (1 - s) * x0 + s * noise
    states, mask = edits.text_batch(rows, drop)
    velocity = dit(torch.stack((condition, noisy), dim=1), sigma * TRAIN_TIMESTEPS, states, mask)
    return (velocity.float() - (noise - x0)).square().mean()


def train_dit(config: DiTConfig, latents: LatentSet, edits: EditSet, steps: int, batch: int, lr: float, seed: int,
              progress: bool = True) -> tuple[SpatialEditDiT, list[float]]:
    """A DiT of `config` (float32, default init from `seed`) trained for `steps` batches."""
    torch.manual_seed(seed)
    dit = build_dit(config, device="cpu", dtype=torch.float32).train().requires_grad_(True)
    optimizer = torch.optim.AdamW(dit.parameters(), lr=lr, weight_decay=0.01)
    schedule = warmup_cosine(optimizer, steps, warmup=max(1, steps // 20))
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    log = LossLog(every=max(1, steps // 20))
    bar = tqdm(range(steps), desc="train DiT", disable=not progress)
    for _ in bar:
        rows = rng.integers(0, len(edits), size=batch).tolist()
        drop = torch.rand(batch, generator=generator) < UNCONDITIONAL_RATE
        loss = flow_matching_loss(dit, latents, edits, rows, generator, drop)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(dit.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        log.add(loss.item())
        bar.set_postfix(loss=f"{loss.item():.4f}")
    return dit.eval().requires_grad_(False), log.finish()
