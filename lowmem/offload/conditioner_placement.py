"""How the conditioner gets onto the compute device for the prompt: whole, or its decoder layers
streamed through device slots (when Qwen3-VL does not fit beside the runtime).

Both placements answer `place()` before encoding, `release()` after it, and `device_bytes()` for
the ledger. Streaming reuses the DiT's BlockStreamer on the Qwen3-VL decoder layers: transformers
owns that loop, so the streamer is driven by forward hooks, and its slots are given back after each
prompt so they do not sit on the device through denoising.
"""

from __future__ import annotations

import torch
from torch import nn

from lowmem.offload.device_part import DevicePart
from lowmem.offload.streamer import BlockStreamer
from lowmem.offload.streams import Streams

VLM_SLOTS, VLM_PREFETCH = 3, 2


def modules_outside(root: nn.Module, excluded: nn.Module) -> list[nn.Module]:
    """The largest submodules of `root` that neither are nor contain `excluded`."""
    found = []
    for child in root.children():
        if child is excluded:
            continue
        if any(m is excluded for m in child.modules()):
            found.extend(modules_outside(child, excluded))
        else:
            found.append(child)
    return found


class WholeConditioner:
    """The whole conditioner moves onto the device for the prompt and (when evictable) back afterwards."""

    def __init__(self, conditioner, device: torch.device, streams: Streams, evictable: bool):
        self.conditioner = conditioner
        self.part = DevicePart([conditioner.model], device, streams, "vlm", evictable)

    def place(self) -> None:
        self.part.place()

    def release(self) -> None:
        self.part.release()

    def device_bytes(self) -> int:
        return self.conditioner.weight_bytes()

    def close(self) -> None:
        self.part.close()


class StreamedConditioner:
    """Everything but the decoder layers moves onto the device; the layers stream through slots."""

    def __init__(self, conditioner, device: torch.device, storage: str, streams: Streams):
        layers = conditioner.decoder_layers
        own = list(conditioner.model.parameters(recurse=False)) + list(conditioner.model.buffers(recurse=False))
        if own:
            raise ValueError("the conditioner keeps tensors outside its submodules; it cannot be streamed by layer")
        self.streamer = BlockStreamer(layers, resident=(), device=device, slots=VLM_SLOTS, depth=VLM_PREFETCH,
                                      storage=storage, streams=streams, name="vlm")
        self.part = DevicePart(modules_outside(conditioner.model, layers), device, streams, "vlm outside layers",
                               evictable=True)
        self.hooks = self.streamer.attach()

    def place(self) -> None:
        self.part.place()

    def release(self) -> None:
        self.streamer.free_slots()
        self.part.release()

    def device_bytes(self) -> int:
        return self.part.nbytes + self.streamer.slot_bytes * self.streamer.num_slots

    def stats(self) -> dict:
        return self.streamer.stats()

    def close(self) -> None:
        self.streamer.close()
        self.part.close()
