"""RunReport: what one edit did (phase times, memory, sizes), as text for people and JSON for tools."""

from __future__ import annotations

import json
import resource
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

import torch
from tqdm.auto import tqdm


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


@dataclass
class RunReport:
    device: str
    dtype: str
    compute: str = "bf16"  # the GEMM mode of the DiT's large Linears (quantize.compute)
    width: int = 0
    height: int = 0
    steps: int = 0
    guidance: float = 0.0
    seed: int = 0
    phase_seconds: dict[str, float] = field(default_factory=dict)
    # On CUDA, per phase: the most bytes PyTorch's allocator handed out, and the most it held from the
    # device (the difference is its cache and fragmentation). Empty on the CPU.
    phase_peak_allocated: dict[str, int] = field(default_factory=dict)
    phase_peak_reserved: dict[str, int] = field(default_factory=dict)
    peak_device_bytes: int = 0  # the largest phase_peak_allocated (torch.cuda.max_memory_allocated); 0 on CPU
    peak_rss_bytes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @contextmanager
    def phase(self, name: str, announce: bool = False) -> Iterator[None]:
        """Time a phase; with `announce`, say when it starts and how long it took (long phases
        such as a 17 GB conditioner on the device or a tiled 1024 px decode show no bar of their own)."""
        if announce:
            tqdm.write(f"{name} ...", file=sys.stderr)
        cuda = torch.device(self.device) if self.device.startswith("cuda") else None
        if cuda is not None:
            torch.cuda.reset_peak_memory_stats(cuda)
        start = time.perf_counter()
        outcome = "done in"
        try:
            yield
        except BaseException as exc:  # a failed or interrupted phase is never reported as done
            outcome = "interrupted after" if isinstance(exc, KeyboardInterrupt) else "failed after"
            raise
        finally:
            seconds = time.perf_counter() - start
            self.phase_seconds[name] = self.phase_seconds.get(name, 0.0) + seconds
            if cuda is not None:
                self.phase_peak_allocated[name] = max(self.phase_peak_allocated.get(name, 0),
                                                      torch.cuda.max_memory_allocated(cuda))
                self.phase_peak_reserved[name] = max(self.phase_peak_reserved.get(name, 0),
                                                     torch.cuda.max_memory_reserved(cuda))
            if announce:
                tqdm.write(f"{name} {outcome} {seconds:.2f} s", file=sys.stderr)

    def warn_about_input(self, message: str) -> None:
        """Say `message` on the terminal now (stderr, above any progress bar) and keep it in the report
        (`extra["input_warnings"]`): what reading or fitting the input changed that the user should know."""
        tqdm.write(f"warning: {message}", file=sys.stderr)
        self.extra.setdefault("input_warnings", []).append(message)

    def finish(self) -> "RunReport":
        self.peak_device_bytes = max(self.phase_peak_allocated.values(), default=0)
        self.peak_rss_bytes = peak_rss_bytes()
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)

    def format(self) -> str:
        lines = [f"edit {self.width}x{self.height}, {self.steps} steps, guidance {self.guidance:g}, seed {self.seed} on {self.device} ({self.dtype}"
                 + (f", {self.compute} W8A8 GEMMs" if self.compute != "bf16" else "") + ")"]
        for name, seconds in self.phase_seconds.items():
            peak = self.phase_peak_allocated.get(name)
            memory = f"   peak {peak / 2**30:.2f} GiB (held {self.phase_peak_reserved[name] / 2**30:.2f})" if peak else ""
            lines.append(f"  {name:<14} {seconds:8.2f} s{memory}")
        if self.peak_device_bytes:
            lines.append(f"  peak device memory {self.peak_device_bytes / 2**30:.2f} GiB")
        lines.append(f"  peak host RSS      {self.peak_rss_bytes / 2**30:.2f} GiB")
        for key, value in self.extra.items():
            lines.append(f"  {key}: {'; '.join(value) if key == 'input_warnings' else value}")
        return "\n".join(lines)
