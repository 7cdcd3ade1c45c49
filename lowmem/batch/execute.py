"""What every engine does with one job: load the pipeline once per worker, run an edit, time it.

The engines (in-process, Ray) differ only in where `execute` runs; the image comes back to the
driver, which writes it atomically and records it, so every engine fills the same report."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

import torch
from PIL import Image

from lowmem.batch.jobs import Job
from lowmem.errors import LowmemError
from lowmem.pipeline import RunReport, SpatialEditPipeline, default_device


@dataclass(frozen=True)
class BatchSettings:
    """What is fixed for the whole batch: the model, how it is loaded and planned."""

    model: Path
    device: Optional[str] = None
    budget: Optional[str] = None
    preset: Optional[str] = None
    quantization: Optional[str] = None
    resolution: int = 1024
    spot: Union[bool, str] = False  # or "on" / "off" / "auto": decided when the pipeline is loaded (`pipe.spot`)
    compute: str = "auto"
    guidance: float = 5.0  # the largest guidance of the jobs: planned for the CFG batch when any job needs it

    def fingerprint_context(self) -> dict:
        """The settings that change an output image (the budget and preset only move weights)."""
        return {"model": str(self.model.resolve()), "quantization": self.quantization, "resolution": self.resolution,
                "spot": self.spot, "compute": self.compute, "device": self.device or default_device().type}


@dataclass
class JobOutcome:
    image: Optional[Image.Image]
    seconds: float
    error: Optional[str] = None
    phases: Optional[dict] = None
    worker: str = ""
    input_image: Optional[Image.Image] = None  # the input as the model saw it (its bucket, a move box drawn)
    measures: dict = field(default_factory=dict)  # `edit_measures` of the run report


def edit_measures(report: RunReport) -> dict:
    """What a many-edit report keeps of one edit's run report: peak memory, SpotEdit's share of tokens
    computed (the mean active fraction over all steps, full steps counting 1; None without SpotEdit) and
    any warning about the input."""
    fractions = report.extra.get("spot_active_fraction")
    measures = {"peak_device_bytes": report.peak_device_bytes, "peak_rss_bytes": report.peak_rss_bytes,
                "spot_active_fraction": round(sum(fractions) / len(fractions), 3) if fractions else None}
    if report.extra.get("input_warnings"):  # what reading or cropping the input changed (a crop of most of it...)
        measures["input_warnings"] = report.extra["input_warnings"]
    return measures


def load_pipeline(settings: BatchSettings) -> SpatialEditPipeline:
    """The pipeline of one worker; on a GPU under `--budget auto` unless a budget or preset is given."""
    device = torch.device(settings.device) if settings.device else default_device()
    budget = settings.budget
    if budget is None and settings.preset is None and device.type == "cuda":
        budget = "auto"
    return SpatialEditPipeline.from_folder(settings.model, device=device, memory_budget=budget, preset=settings.preset,
                                           resolution=settings.resolution, quantization=settings.quantization,
                                           spot=settings.spot, compute=settings.compute, guidance=settings.guidance)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def execute(pipe: SpatialEditPipeline, job: Job, settings: BatchSettings,
            on_progress: Optional[Callable[[str, int], None]] = None) -> JobOutcome:
    """Run one job; a job that fails (bad image, a plan it does not fit, ...) returns its error instead.
    `on_progress(phase, steps_done)`: the pipeline's hook, for a driver's bar in this process."""
    start = time.perf_counter()
    try:
        result = pipe.edit(job.image, resolution=settings.resolution, progress=False, on_progress=on_progress,
                           **job.spec.edit_arguments(pipe.spot))
    except LowmemError as exc:
        return JobOutcome(None, time.perf_counter() - start, str(exc), worker=worker_name())
    except Exception as exc:  # noqa: BLE001 - one broken job (out of memory, a bug) must not stop thousands of others
        return JobOutcome(None, time.perf_counter() - start, f"{type(exc).__name__}: {exc}", worker=worker_name())
    phases = {name: round(seconds, 3) for name, seconds in result.report.phase_seconds.items()}
    return JobOutcome(result.image, time.perf_counter() - start, phases=phases, worker=worker_name(),
                      input_image=result.input_image, measures=edit_measures(result.report))
