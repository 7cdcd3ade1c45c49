"""The whole tiny-model training: scenes -> VAE -> latents -> DiT -> a model folder in the official layout.

The output loads through the same code as a downloaded SpatialEdit (`lowmem.load`, `lowmem edit
--model`): `transformer/` (config + 2 bf16 safetensors shards + index), `vae/` (the Wan VAE with
its original key names as bf16 safetensors, plus `config.json` carrying the tiny width and the measured
latent statistics), `text_encoder/` (the seeded tiny Qwen3-VL, random and frozen: the DiT learns
to read it, as the real DiT reads the frozen Qwen3-VL-8B) and `training.json` (settings, losses,
phase times). The folder is built aside and renamed into place only when everything succeeded.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from lowmem.common.paths import staged_folder
from lowmem.models.conditioner import QwenVLConditioner
from lowmem.models.dit_config import DiTConfig
from lowmem.models.layout import DIT_INDEX
from lowmem.models.vae import WanVAE
from lowmem.models.wan_vae_keys import official_from_diffusers
from lowmem.tiny.qwen3vl import write_tiny_qwen3vl
from lowmem.tiny.random_model import write_sharded_safetensors
from lowmem.tiny.training.autoencoder import train_autoencoder
from lowmem.tiny.training.dataset import build_edit_set
from lowmem.tiny.training.flow_matching import LatentSet, train_dit
from lowmem.tiny.training.single_frame import single_frame_convolutions

# Wider and deeper than the random test model (TINY_DIT_CONFIG), still ~1.8M parameters (3.6 MB in bf16).
TRAINED_DIT_CONFIG = DiTConfig(hidden_size=128, heads_num=2, mm_double_blocks_depth=4, text_states_dim=64,
                               rope_dim_list=(16, 24, 24))
# Pairs of training seed s are rendered from seeds s * PAIRS_PER_SEED + i; no training seed below
# 1000 reaches scenes.HELD_OUT_SEEDS, where bench/quality.py draws its scenes.
PAIRS_PER_SEED = 1_000_000


@dataclass(frozen=True)
class TrainingSettings:
    seed: int = 0
    size: int = 64  # rendered images are size x size; the demo edits at this resolution
    pairs: int = 4000
    vae_width: int = 16  # AutoencoderKLWan base_dim (the real VAE: 96); width 4 decoded a blurred mean scene
    vae_steps: int = 4000  # 2000 left the colours shifted (held-out L1 0.108); 4000: 0.048, colours right
    vae_batch: int = 8
    vae_lr: float = 2e-3
    dit_steps: int = 14000
    dit_batch: int = 16
    dit_lr: float = 1e-3
    dit_config: DiTConfig = field(default=TRAINED_DIT_CONFIG)

    def training_seeds(self) -> range:
        start = self.seed * PAIRS_PER_SEED
        return range(start, start + self.pairs)


@torch.no_grad()
def encode_latents(vae: WanVAE, images: torch.Tensor, generator: torch.Generator, batch: int = 64) -> torch.Tensor:
    """Normalised latents of `images` exactly as the pipeline encodes a condition (posterior sample)."""
    with single_frame_convolutions():
        return torch.cat([vae.encode(images[i : i + batch], generator=generator) for i in range(0, len(images), batch)])


def train_tiny_model(out: str | Path, settings: TrainingSettings = TrainingSettings(), progress: bool = True) -> dict[str, Any]:
    """Train and write the tiny model folder at `out` (absent or empty); returns the training record."""
    record: dict[str, Any] = {"command": " ".join(sys.argv), "settings": asdict(settings), "seconds": {},
                              "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine()}
    config = settings.dit_config
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    with staged_folder(target) as staging:
        clock = time.perf_counter()
        write_tiny_qwen3vl(staging / "text_encoder", seed=settings.seed, hidden_size=config.text_states_dim)
        conditioner = QwenVLConditioner.from_folder(staging / "text_encoder", dtype=torch.float32, device="cpu")
        edits = build_edit_set(conditioner, settings.training_seeds(), settings.size, progress)
        record["seconds"]["render and encode prompts"] = round(time.perf_counter() - clock, 1)

        clock = time.perf_counter()
        autoencoder = train_autoencoder(torch.cat((edits.inputs, edits.targets)), settings.vae_width, settings.vae_steps, settings.vae_batch,
                                        settings.vae_lr, settings.seed, progress)
        vae_file = staging / "vae" / "Wan2.1_VAE.safetensors"
        vae_file.parent.mkdir()
        # bf16 halves the shipped file (14 -> 7 MB) and decodes within ~48 dB PSNR of fp32; the DiT is
        # trained on latents of the weights as read back from this file, so it never sees the fp32 ones.
        state = {k: v.to(torch.bfloat16).contiguous() for k, v in autoencoder.module.state_dict().items()}
        save_file(official_from_diffusers(state), vae_file, metadata={"format": "pt"})
        (vae_file.parent / "config.json").write_text(json.dumps(autoencoder.config, indent=2))
        record["seconds"]["train VAE"] = round(time.perf_counter() - clock, 1)
        record["vae_loss"] = autoencoder.losses

        clock = time.perf_counter()
        vae = WanVAE.from_file(vae_file, config=autoencoder.config)  # read back as inference reads it
        generator = torch.Generator().manual_seed(settings.seed)
        latents = LatentSet(encode_latents(vae, edits.inputs, generator), encode_latents(vae, edits.targets, generator))
        dit, losses = train_dit(config, latents, edits, settings.dit_steps, settings.dit_batch, settings.dit_lr,
                                settings.seed, progress)
        transformer = staging / "transformer"
        transformer.mkdir()
        (transformer / "config.json").write_text(config.to_json())
        weights = {k: v.to(torch.bfloat16).contiguous() for k, v in dit.state_dict().items()}
        write_sharded_safetensors(weights, transformer, shards=2, stem="diffusion_pytorch_model", index_name=DIT_INDEX)
        record["seconds"]["train DiT"] = round(time.perf_counter() - clock, 1)
        record["dit_loss"] = losses
        record["seconds"]["total"] = round(sum(record["seconds"].values()), 1)
        (staging / "training.json").write_text(json.dumps(record, indent=2))
    return record
