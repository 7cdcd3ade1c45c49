"""Phase 1: the tiny Wan VAE (diffusers' AutoencoderKLWan) trained as an autoencoder on rendered images.

Loss: L1 reconstruction of the posterior sample's decode plus a small KL term that keeps the
latents near a unit Gaussian. Afterwards the per-channel mean and std of latent samples of the training
images become the config's `latents_mean` / `latents_std`, the normalisation `WanVAE` applies, so
the DiT sees latents of unit scale as SpotEdit and the sampler expect.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKLWan
from tqdm.auto import tqdm

from lowmem.models.vae import TINY_VAE_CONFIG
from lowmem.tiny.training.schedule import LossLog, warmup_cosine
from lowmem.tiny.training.single_frame import single_frame_convolutions

KL_WEIGHT = 1e-6
INITIAL_LOG_VARIANCE = -10.0  # posterior std e^-5 ~ 0.007 at the start


@dataclass
class AutoencoderResult:
    module: AutoencoderKLWan
    config: dict[str, Any]  # AutoencoderKLWan kwargs, with the measured latents_mean / latents_std
    losses: list[float]


def train_autoencoder(images: torch.Tensor, width: int, steps: int, batch: int, lr: float, seed: int,
                      progress: bool = True) -> AutoencoderResult:
    """Train an AutoencoderKLWan of `base_dim` `width` on `images` (N, 3, H, W) in [-1, 1]."""
    torch.manual_seed(seed)
    architecture = {**copy.deepcopy(TINY_VAE_CONFIG), "base_dim": width}
    module = AutoencoderKLWan(**architecture).train()
    start_with_quiet_posterior(module)
    optimizer = torch.optim.Adam(module.parameters(), lr=lr)
    schedule = warmup_cosine(optimizer, steps, warmup=max(1, steps // 20))
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    log = LossLog(every=max(1, steps // 20))
    bar = tqdm(range(steps), desc="train VAE", disable=not progress)
    with single_frame_convolutions():
        for _ in bar:
            x = images[rng.integers(0, len(images), size=batch)].unsqueeze(2)
            posterior = module.encode(x).latent_dist
            decoded = module.decode(posterior.sample(generator=generator)).sample
            loss = (decoded - x).abs().mean() + KL_WEIGHT * posterior.kl().mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            log.add(loss.item())
            bar.set_postfix(loss=f"{loss.item():.4f}")
        module.eval().requires_grad_(False)
        config = {**architecture, **latent_statistics(module, images, seed)}
    return AutoencoderResult(module=module, config=config, losses=log.finish())


@torch.no_grad()
def start_with_quiet_posterior(module: AutoencoderKLWan, log_variance: float = INITIAL_LOG_VARIANCE) -> None:
    """Make the posterior's log-variance start at `log_variance` for every input.

    With diffusers' default init the encoder's means are small and its log-variance is about 0, so a
    posterior sample is mostly unit noise: the decoder learns to ignore the latents and draws the
    mean scene (a 400-batch run did exactly that), and the pipeline, which encodes a sample, would
    see noise as large as the signal. Starting the noise small lets the reconstruction loss use the
    latents from the first batch; the KL term may still raise it."""
    z_dim = module.config.z_dim
    module.quant_conv.weight[z_dim:].zero_()
    module.quant_conv.bias[z_dim:].fill_(log_variance)


@torch.no_grad()
def latent_statistics(module: AutoencoderKLWan, images: torch.Tensor, seed: int, batch: int = 64) -> dict[str, list[float]]:
    """Per-channel mean and std of posterior samples of `images`: the pipeline encodes a sample, so
    these are the statistics of what the DiT will see."""
    generator = torch.Generator().manual_seed(seed)
    latents = torch.cat([module.encode(images[i : i + batch].unsqueeze(2)).latent_dist.sample(generator=generator)
                         for i in range(0, len(images), batch)])
    channels = latents.transpose(0, 1).flatten(1)
    return {"latents_mean": channels.mean(1).tolist(), "latents_std": channels.std(1).clamp_min(1e-3).tolist()}
