"""Inside a denoising step the host never waits for the device (issue 24, item 6).

The loops run on the `meta` device, standing in for the GPU, under a dispatch mode that records
every operation that makes a CUDA host wait for the device: reading a device value (item, bool,
nonzero, a copy to the host) and copying pageable host memory to the device outside the stream
protocol (CUDA finishes the queued work before such a copy; the streamer's own copies are pinned
and asynchronous). The device's answers to reads are seeded random host tensors, so SpotEdit's
selector really chooses tokens. What a whole denoise waits for must not grow with its steps: the
timesteps go over once, and a selection reads its scores once and sends its token sets once.
"""

from __future__ import annotations

import threading

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from lowmem.models.joint_attention import TextPadding
from lowmem.offload.streams import Streams
from lowmem.pipeline import SpatialEditPipeline
from lowmem.spotedit import SpotConfig, spot_denoise

META = torch.device("meta")
READS = {"_local_scalar_dense", "is_nonzero", "nonzero", "item"}
SPOT = SpotConfig(threshold="auto", dilation=0, initial_steps=1, reset_steps=(), reference_steps=None)
streaming = threading.local()


class HostWaits(TorchDispatchMode):
    """Records (kind, op) for each host wait; answers reads of meta tensors with seeded host values."""

    def __init__(self):
        super().__init__()
        self.waits: list[tuple[str, str]] = []
        self.generator = torch.Generator().manual_seed(0)

    def _answer(self, like: torch.Tensor) -> torch.Tensor:
        if like.dtype == torch.bool:
            return torch.rand(like.shape, generator=self.generator) < 0.5
        return torch.rand(like.shape, generator=self.generator).to(like.dtype)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        on_meta = any(t.is_meta for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor))
        if name in READS and on_meta:
            self.waits.append(("read", name))
            return 0 if name != "nonzero" else torch.empty(0, args[0].dim(), dtype=torch.long, device=META)
        if name == "_to_copy":
            source, target = args[0], torch.device(kwargs.get("device") or args[0].device)
            if source.is_meta and target.type != "meta":
                self.waits.append(("read", "copy to the host"))
                return self._answer(source).to(kwargs.get("dtype") or source.dtype)
            if not source.is_meta and target.type == "meta" and not getattr(streaming, "on", False):
                self.waits.append(("pageable copy", "to the device"))
        if name == "copy_":
            target, source = args[0], args[1]
            if source.is_meta and not target.is_meta:
                self.waits.append(("read", "copy to the host"))
                return target.copy_(self._answer(source))
            if target.is_meta and not source.is_meta and not getattr(streaming, "on", False):
                self.waits.append(("pageable copy", "to the device"))
        return func(*args, **kwargs)


@pytest.fixture
def pinned_stream_copies(monkeypatch):
    """The stream protocol's copies are pinned and asynchronous on CUDA: not host waits."""
    real = Streams.copy

    def copy(self, *args, **kwargs):
        streaming.on = True
        try:
            return real(self, *args, **kwargs)
        finally:
            streaming.on = False

    monkeypatch.setattr(Streams, "copy", copy)


@pytest.fixture(scope="module")
def meta_pipeline(tiny_model):
    """The tiny model planned as for a GPU on `meta`, with a streamed block."""
    return SpatialEditPipeline.from_folder(tiny_model, device="meta", dtype=torch.bfloat16, resolution=64, spot=True,
                                           memory_budget="2GB", max_resident_blocks=1)


def inputs(pipe):
    text_dim = pipe.dit.config.text_states_dim
    return (torch.empty(1, 16, 1, 8, 8, device=META), torch.empty(2, 12, text_dim, device=META, dtype=torch.bfloat16),
            TextPadding((3, 0)))


def spot_waits(pipe, steps: int) -> list[tuple[str, str]]:
    condition, states, padding = inputs(pipe)
    with pipe.offload.editing(), pipe.offload.denoising(spot=True), HostWaits() as waits:
        spot_denoise(pipe.dit, pipe.vae, condition, states, padding, steps, 5.0, torch.Generator().manual_seed(0),
                     SPOT, META, torch.bfloat16, progress=False)
    return waits.waits


def plain_waits(pipe, steps: int) -> list[tuple[str, str]]:
    condition, states, padding = inputs(pipe)
    with pipe.offload.editing(), pipe.offload.denoising(), HostWaits() as waits:
        pipe.denoise(condition, states, padding, steps, 5.0, torch.Generator().manual_seed(0), progress=False)
    return waits.waits


def test_spotedit_denoise_waits_once_per_selection_whatever_its_steps(meta_pipeline, pinned_stream_copies):
    short, long = spot_waits(meta_pipeline, 4), spot_waits(meta_pipeline, 8)
    assert sorted(long) == sorted(short), "a step makes the host wait"
    # The one selection reads its scores once. Copies to the device: per edit the noise, the timesteps,
    # the VAE's latent mean and std for the selector, and at the end the region to paste; per selection
    # its three token sets.
    assert [w for w in short if w[0] == "read"] == [("read", "copy to the host")]
    assert len([w for w in short if w[0] == "pageable copy"]) <= 5 + 3, short


def test_plain_denoise_never_waits_in_a_step(meta_pipeline, pinned_stream_copies):
    short, long = plain_waits(meta_pipeline, 3), plain_waits(meta_pipeline, 9)
    assert sorted(long) == sorted(short), "a step makes the host wait"
    assert not [w for w in short if w[0] == "read"] and len(short) <= 2, short
