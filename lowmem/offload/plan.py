"""Plan: one serialisable decision about where every byte of one run lives.

A plan names, per component (conditioner `vlm`, `dit`, `vae`), its precision and placement
(`resident`, `streamed`, or `run-then-evicted`), which DiT blocks stay resident, how many device
slots the streamed blocks rotate through, how far ahead they are prefetched, where streamed
weights wait (pinned host RAM or per-block files on disk), the VAE tile size and where SpotEdit's
K/V caches live, the DiT's GEMM mode (`compute`: bf16, or W8A8 in fp8 / int8; see
`quantize.compute`), plus an itemised memory estimate per phase. `lowmem.planning.planner.plan_for`
makes them; this package runs them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from lowmem.offload.budget import format_bytes

PLACEMENTS = ("resident", "streamed", "run-then-evicted")
STORAGE_TIERS = ("none", "pinned", "pageable", "disk")


@dataclass
class ComponentPlan:
    precision: str
    placement: str
    weight_bytes: int
    host_copy_bytes: int = 0  # pinned host copy of the device part, kept while the part is evicted between uses


@dataclass
class DiTPlan(ComponentPlan):
    num_blocks: int = 0
    block_bytes: int = 0  # largest block, in its stored precision (the slot size)
    other_bytes: int = 0  # embedders and head: always resident
    resident_blocks: list[int] = field(default_factory=list)
    prefetch_depth: int = 0
    slots: int = 0
    storage: str = "none"  # where streamed blocks wait: pinned | pageable | disk
    pinned_host_bytes: int = 0

    @property
    def streamed_blocks(self) -> list[int]:
        keep = set(self.resident_blocks)
        return [i for i in range(self.num_blocks) if i not in keep]

    @property
    def streamed_bytes_per_step(self) -> int:
        return len(self.streamed_blocks) * self.block_bytes


@dataclass
class VAEPlan(ComponentPlan):
    tiled: bool = False
    tile: Optional[int] = None


@dataclass
class SpotEditPlan:
    enabled: bool = False
    cache_placement: str = "none"  # device | host (streamed with its block) | none
    cache_bytes: int = 0  # all blocks together
    pinned_host_bytes: int = 0  # the host arena the caches live in when placed on the host


@dataclass
class MemoryEstimate:
    """Bytes on the compute device, item by item, for each phase of a run, and the peaks traced on
    `meta` behind each phase's activations (phase -> {what ran: peak live bytes})."""

    phases: dict[str, dict[str, int]] = field(default_factory=dict)
    traced: dict[str, dict[str, int]] = field(default_factory=dict)

    def phase_total(self, phase: str) -> int:
        return sum(self.phases[phase].values())

    @property
    def peak(self) -> int:
        return max((self.phase_total(p) for p in self.phases), default=0)

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=self.phase_total) if self.phases else ""


@dataclass
class Plan:
    device: str  # "cuda" or "cpu" (then the budget bounds RAM and the storage tier is disk)
    budget: int
    resolution: int
    image_tokens: int  # per item
    text_tokens: int
    batch: int  # rows per DiT forward: 2 under classifier-free guidance, 1 without
    vlm: ComponentPlan
    dit: DiTPlan
    vae: VAEPlan
    spotedit: SpotEditPlan
    estimate: MemoryEstimate
    preset: Optional[str] = None
    notes: list[str] = field(default_factory=list)
    compute: str = "bf16"  # the DiT's large Linears' GEMMs: bf16 | fp8 | int8 (W8A8, quantize.compute)

    @property
    def fits(self) -> bool:
        return self.estimate.peak <= self.budget

    @property
    def streams(self) -> bool:
        return bool(self.dit.streamed_blocks)

    # -- serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["dit"]["streamed_blocks"] = self.dit.streamed_blocks
        data["estimate"]["peak"] = self.estimate.peak
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Plan":
        data = dict(data)
        dit = dict(data.pop("dit"))
        dit.pop("streamed_blocks", None)
        estimate = dict(data.pop("estimate"))
        estimate.pop("peak", None)
        return cls(
            vlm=ComponentPlan(**data.pop("vlm")),
            dit=DiTPlan(**dit),
            vae=VAEPlan(**data.pop("vae")),
            spotedit=SpotEditPlan(**data.pop("spotedit")),
            estimate=MemoryEstimate(**estimate),
            **data,
        )

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        return cls.from_dict(json.loads(text))

    # -- for people ------------------------------------------------------------------------
    @property
    def pinned_host(self) -> dict[str, int]:
        """Page-locked host RAM the run takes, by what it holds (empty when computing on the CPU)."""
        items = {"dit streamed blocks" if self.dit.storage == "pinned" else "dit disk staging": self.dit.pinned_host_bytes,
                 "dit device part copy": self.dit.host_copy_bytes, "vlm copy": self.vlm.host_copy_bytes,
                 "spotedit caches": self.spotedit.pinned_host_bytes}
        return {k: v for k, v in items.items() if v}

    def summary(self) -> str:
        d = self.dit
        stream = (
            f"{len(d.streamed_blocks)} streamed from {d.storage} through {d.slots} slots (prefetch {d.prefetch_depth})"
            if self.streams
            else "no streaming"
        )
        gemm = f" ({self.compute} GEMMs)" if self.compute != "bf16" else ""
        return (
            f"dit {d.precision}{gemm} {len(d.resident_blocks)}/{d.num_blocks} blocks resident, {stream}; "
            f"vlm {self.vlm.placement}; vae {'tile ' + str(self.vae.tile) if self.vae.tiled else 'untiled'}; "
            f"peak {format_bytes(self.estimate.peak)} of {format_bytes(self.budget)}"
        )

    def format_table(self) -> str:
        d = self.dit
        title = f"plan for {self.resolution}x{self.resolution} on {self.device}, budget {format_bytes(self.budget)}"
        if self.preset:
            title += f" (preset {self.preset})"
        if self.compute != "bf16":
            title += f", DiT GEMMs in {self.compute} (W8A8)"
        rows = [
            ("component", "precision", "placement", "weights", "detail"),
            ("vlm", self.vlm.precision, self.vlm.placement, format_bytes(self.vlm.weight_bytes), "runs before denoising"),
            (
                "dit", d.precision, d.placement, format_bytes(d.weight_bytes),
                f"{len(d.resident_blocks)}/{d.num_blocks} blocks resident, block {format_bytes(d.block_bytes)}",
            ),
            ("vae", self.vae.precision, self.vae.placement, format_bytes(self.vae.weight_bytes),
             f"decode tiled {self.vae.tile}px" if self.vae.tiled else "decode untiled"),
        ]
        lines = [title, text_table(rows)]
        if self.streams:
            lines.append(
                f"streaming: blocks {_ranges(d.streamed_blocks)} from {d.storage} "
                f"({format_bytes(d.pinned_host_bytes)} pinned host RAM), {d.slots} device slots, prefetch depth "
                f"{d.prefetch_depth}, {format_bytes(d.streamed_bytes_per_step)} per step"
            )
        if d.resident_blocks and self.streams:
            lines.append(f"resident blocks: {_ranges(d.resident_blocks)}")
        if self.spotedit.enabled:
            where = self.spotedit.cache_placement
            if where == "host":
                where += f" ({format_bytes(self.spotedit.pinned_host_bytes)} pinned arena, through device slots)"
            lines.append(f"spotedit K/V caches: {format_bytes(self.spotedit.cache_bytes)} on {where}")
        if self.pinned_host:
            parts = ", ".join(f"{k} {format_bytes(v)}" for k, v in self.pinned_host.items())
            lines.append(f"pinned host RAM: {format_bytes(sum(self.pinned_host.values()))} ({parts})")
        guidance = "CFG batch 2" if self.batch == 2 else f"batch {self.batch} (no guidance)"
        lines.append(f"tokens per forward: 2 x {self.image_tokens} image + {self.text_tokens} text, {guidance}")
        phases = list(self.estimate.phases)
        items = sorted({k for p in phases for k in self.estimate.phases[p]}, key=_item_order)
        est = [("memory", *phases)]
        for item in items:
            est.append((item, *(format_bytes(self.estimate.phases[p][item]) if item in self.estimate.phases[p] else "-"
                                for p in phases)))
        est.append(("total", *(format_bytes(self.estimate.phase_total(p)) for p in phases)))
        lines.append(text_table(est))
        if self.estimate.traced:
            traced = [("phase", "traced on meta (peak live bytes)", "")]
            for phase, items in self.estimate.traced.items():
                for what, nbytes in items.items():
                    traced.append((phase, what, format_bytes(nbytes)))
            lines.append(text_table(traced))
        verdict = "fits" if self.fits else "DOES NOT FIT"
        lines.append(f"peak {format_bytes(self.estimate.peak)} ({self.estimate.peak_phase}) of budget "
                     f"{format_bytes(self.budget)}: {verdict}")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


_ORDER = ["runtime reserve", "vlm weights", "vlm activations", "dit other weights", "dit resident blocks",
          "dit slots", "spotedit caches", "dit activations", "vae weights", "vae encode", "vae decode",
          "allocator slack"]


def _item_order(name: str) -> int:
    return _ORDER.index(name) if name in _ORDER else len(_ORDER)


def text_table(rows: list[tuple]) -> str:
    """`rows` (the first one the header) as aligned columns, a dashed rule under the header."""
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    out = []
    for j, row in enumerate(rows):
        out.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def _ranges(indices: list[int]) -> str:
    """[0,1,2,5,7,8] -> '0-2,5,7-8'."""
    parts, start, prev = [], None, None
    for i in indices:
        if start is None:
            start = prev = i
        elif i == prev + 1:
            prev = i
        else:
            parts.append(f"{start}-{prev}" if prev != start else str(start))
            start = prev = i
    if start is not None:
        parts.append(f"{start}-{prev}" if prev != start else str(start))
    return ",".join(parts)
