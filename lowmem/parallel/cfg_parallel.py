"""CFG parallel over torch.distributed: rank 0 runs the unconditional row, rank 1 the conditional one.

Each step both ranks run the DiT on their own row (half the activations, and at equal speed half the
step time), then all-gather the two velocities and combine them exactly as one process combines its
batch of two (`step_velocity`), so both ranks hold the same latents and the image equals the
single-process image for the same seed. Each rank loads and plans its own pipeline (its own budget;
streaming happens per rank, unchanged). The conditioner encodes both prompts on both ranks, so the
text rows and their padding are the ones a single process would use. SpotEdit composes: each rank
caches the K/V of its own row, and since the guided velocity is shared the selector picks the same
tokens on both ranks. NCCL on GPUs, gloo on the CPU; launched by `torchrun --nproc-per-node 2`.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import timedelta
from typing import Iterator, Optional

import torch
import torch.distributed as dist

from lowmem.errors import LowmemError
from lowmem.models.guidance import guidance_batch, step_velocity
from lowmem.models.joint_attention import TextPadding

RANKS = 2  # [uncond ; cond]


class ParallelError(LowmemError, RuntimeError):
    """A parallel run that cannot start as asked."""


class CFGParallel:
    """The pipeline's CFG strategy (see `lowmem.models.guidance.BatchedGuidance`) for one rank of two."""

    def __init__(self, rank: int, group: dist.ProcessGroup, device: torch.device):
        self.rank = rank  # also the row of [uncond ; cond] this rank runs
        self.group = group
        self.device = device

    def rows(self, guidance: float) -> int:
        check_guidance(guidance)
        return 1

    def select(self, states: torch.Tensor, padding: TextPadding) -> tuple[torch.Tensor, TextPadding]:
        row = slice(self.rank, self.rank + 1)
        return states[row], TextPadding(padding.pads[row])

    def velocity(self, v: torch.Tensor, guidance: float) -> torch.Tensor:
        both = [torch.empty_like(v) for _ in range(RANKS)]
        dist.all_gather(both, v.contiguous(), group=self.group)
        return step_velocity(torch.cat(both), guidance)


def check_guidance(guidance: float) -> None:
    if guidance_batch(guidance) != RANKS:
        raise ParallelError(f"--parallel cfg splits classifier-free guidance, and guidance {guidance:g} <= 1 runs the "
                            "conditional prompt alone (no unconditional branch); use --guidance above 1, or run one "
                            "process without --parallel")


def launched_ranks() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the torchrun environment, or a ParallelError saying how to launch."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise ParallelError("--parallel cfg runs one process per CFG branch: launch it with "
                            "`torchrun --nproc-per-node 2 -m lowmem edit ... --parallel cfg`")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if world != RANKS:
        raise ParallelError(f"--parallel cfg needs exactly {RANKS} processes (unconditional and conditional), got {world}; "
                            f"use torchrun --nproc-per-node {RANKS}")
    return rank, world, int(os.environ.get("LOCAL_RANK", rank))


def rank_device(requested: str | None, local_rank: int) -> torch.device:
    """This rank's compute device: its own GPU (cuda:LOCAL_RANK) when there are GPUs, else the CPU."""
    if requested is not None:
        device = torch.device(requested)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", local_rank)
        return device
    return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")


@contextmanager
def cfg_parallel(requested_device: Optional[str], guidance: float, timeout_s: float = 600) -> Iterator[CFGParallel]:
    """This process's rank of a CFG-parallel edit launched by torchrun: checks the launch and the guidance
    first, joins the process group (NCCL between GPUs, gloo on the CPU) and leaves it at the end."""
    check_guidance(guidance)
    rank, world, local_rank = launched_ranks()
    device = rank_device(requested_device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s))
    try:
        yield CFGParallel(rank, dist.group.WORLD, device)
    finally:
        dist.destroy_process_group()
