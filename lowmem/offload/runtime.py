"""OffloadRuntime: the pipeline's phases under a Plan (who is on the device when, VAE tiling, report).

    setup:        VAE on the device; the DiT's streamed blocks packed into their store; the DiT's
                  resident part and the conditioner placed for good when the plan keeps them together,
                  else each kept in a pinned host copy (see `device_part`).
    encode:       a run-then-evicted conditioner is copied onto the device, run, and released (its
                  tensors re-pointed to the host copy: no copy back); a "streamed" one places all but
                  its decoder layers, which stream through slots given back after the prompt;
                  when the plan says the DiT and the conditioner do not fit together, the DiT's device
                  part waits on the host until denoising starts and leaves after decoding, slots too.
    decode:       tiled with the plan's tile size.
`editing()` wraps one edit: whatever it placed leaves the device when the edit ends, also when it
ends in an exception or Ctrl-C, so a failed edit does not leave the next one without room.
The ledger records every placement; `report_items()` feeds RunReport.extra.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

import torch

from lowmem.offload.budget import format_bytes
from lowmem.offload.conditioner_placement import StreamedConditioner, WholeConditioner
from lowmem.offload.install import OffloadedDiT
from lowmem.offload.ledger import MemoryLedger
from lowmem.offload.plan import Plan
from lowmem.offload.streamer import BlockSource
from lowmem.offload.streams import Streams, streams_for


class OffloadRuntime:
    def __init__(self, plan: Plan, dit, vae, conditioner, device: torch.device, block_source: Optional[BlockSource] = None,
                 streams: Optional[Streams] = None):
        """`block_source(i, block)` makes streamed block i's tensors real just before it is packed into
        its store (see `planned_load`); without it the DiT must already be fully loaded. `streams`
        orders every copy (default: CUDA streams on a GPU, immediate elsewhere)."""
        self.plan = plan
        self.device = torch.device(device)
        self.streams = streams or streams_for(self.device)
        self.ledger = MemoryLedger(plan.budget, str(self.device))
        vae.to(self.device)
        self.ledger.place("vae weights", vae.weight_bytes())
        self.together = plan.vlm.placement == "resident"
        # Apart, the DiT's device part and the conditioner take turns: each keeps a pinned host copy.
        self.dit = OffloadedDiT(dit, plan, self.device, ledger=self.ledger, source=block_source, streams=self.streams,
                                evictable=not self.together)
        if plan.vlm.placement == "streamed":
            storage = plan.dit.storage if plan.dit.storage != "none" else "pinned"
            self.vlm = StreamedConditioner(conditioner, self.device, storage, self.streams)
        else:
            self.vlm = WholeConditioner(conditioner, self.device, self.streams, evictable=not self.together)
        if self.together:
            self.vlm.place()
            self.ledger.place("vlm weights", self.vlm.device_bytes())

    @property
    def host(self) -> torch.device:
        return torch.device("cpu")

    @contextmanager
    def editing(self) -> Iterator[None]:
        """One edit. On any exit the DiT's device part, when it takes turns with the conditioner, goes
        back to its host copy with the streamer's slots; each phase takes its own estimate off the ledger."""
        try:
            yield
        finally:
            if not self.together:
                self.dit.release()

    @contextmanager
    def encoding(self) -> Iterator[None]:
        """The conditioner on the device for the prompt, evicted right after (unless resident)."""
        try:
            if not self.together:
                self.vlm.place()
                self.ledger.place("vlm weights", self.vlm.device_bytes())
                self.ledger.place("vlm activations (estimate)",
                                  self.plan.estimate.phases.get("encode prompt", {}).get("vlm activations", 0))
            yield
        finally:
            self.ledger.release("vlm activations (estimate)")
            if not self.together:
                self.vlm.release()
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()  # one large free block, not split under the DiT's next allocations
                self.ledger.release("vlm weights")

    @contextmanager
    def denoising(self, spot: bool = False) -> Iterator[None]:
        """The DiT's device part placed (it leaves when the edit ends, see `editing`); with `spot`,
        SpotEdit's K/V caches counted where the plan put them."""
        try:
            if not self.dit.placed:
                self.dit.place()
            self.ledger.place("dit activations (estimate)", self.plan.estimate.phases["denoise"].get("dit activations", 0))
            if spot:
                self.ledger.place("spotedit caches (estimate)",
                                  self.plan.estimate.phases["denoise"].get("spotedit caches", 0))
            yield
        finally:
            self.ledger.release("dit activations (estimate)")
            self.ledger.release("spotedit caches (estimate)")

    @contextmanager
    def decoding(self) -> Iterator[None]:
        self.ledger.place("vae decode (estimate)", self.plan.estimate.phases["decode"].get("vae decode", 0))
        try:
            yield
        finally:
            self.ledger.release("vae decode (estimate)")

    def spot_cache_device(self) -> torch.device:
        """Where SpotEdit's K/V caches live: the compute device when the plan found room, else the host."""
        return self.host if self.plan.spotedit.cache_placement == "host" else self.device

    def decode_kwargs(self) -> dict:
        return {"tiled": True, "tile": self.plan.vae.tile} if self.plan.vae.tiled else {}

    def report_items(self) -> dict:
        stats = self.dit.stats()
        items = {
            "plan": self.plan.summary(),
            "bytes streamed": format_bytes(stats["bytes_streamed"]),
            **({"vlm bytes streamed": format_bytes(self.vlm.stats()["bytes_streamed"])}
               if isinstance(self.vlm, StreamedConditioner) else {}),
            "ledger peak": format_bytes(self.ledger.peak) + f" of budget {format_bytes(self.plan.budget)}",
        }
        return items

    def close(self) -> None:
        """Wait for copies in flight and give back the slots, the pinned host memory and the disk files."""
        self.dit.close()
        self.vlm.close()
