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
    width: int = 0
    height: int = 0
    steps: int = 0
    guidance: float = 0.0
    seed: int = 0
    phase_seconds: dict[str, float] = field(default_factory=dict)
    peak_device_bytes: int = 0  # torch.cuda.max_memory_allocated on CUDA; 0 on CPU
    peak_rss_bytes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @contextmanager
    def phase(self, name: str, announce: bool = False) -> Iterator[None]:
        """Time a phase; with `announce`, say when it starts and how long it took (long phases
        such as a 17 GB conditioner on the device or a tiled 1024 px decode show no bar of their own)."""
        if announce:
            tqdm.write(f"{name} ...", file=sys.stderr)
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
            if announce:
                tqdm.write(f"{name} {outcome} {seconds:.2f} s", file=sys.stderr)

    def finish(self) -> "RunReport":
        if self.device.startswith("cuda"):
            self.peak_device_bytes = torch.cuda.max_memory_allocated()
        self.peak_rss_bytes = peak_rss_bytes()
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)

    def format(self) -> str:
        lines = [f"edit {self.width}x{self.height}, {self.steps} steps, guidance {self.guidance:g}, seed {self.seed} on {self.device} ({self.dtype})"]
        for name, seconds in self.phase_seconds.items():
            lines.append(f"  {name:<14} {seconds:8.2f} s")
        if self.peak_device_bytes:
            lines.append(f"  peak device memory {self.peak_device_bytes / 2**30:.2f} GiB")
        lines.append(f"  peak host RSS      {self.peak_rss_bytes / 2**30:.2f} GiB")
        for key, value in self.extra.items():
            lines.append(f"  {key}: {value}")
        return "\n".join(lines)
