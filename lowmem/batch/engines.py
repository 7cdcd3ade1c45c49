"""The engines by name: `--engine local` (this process) or `ray` (a Ray cluster), for every face that
hands its jobs to a driver (`lowmem batch`, `lowmem bench-run`)."""

from __future__ import annotations

from typing import Optional

from lowmem.batch.driver import JobDriver
from lowmem.batch.execute import BatchSettings

def run_engine(engine: str, driver: JobDriver, settings: BatchSettings, address: Optional[str] = None,
               workers: Optional[int] = None) -> None:
    """Run `driver`'s pending jobs on `engine`; Ray is imported only when asked for."""
    if engine == "ray":
        from lowmem.batch.ray_engine import run_on_ray

        run_on_ray(driver, settings, address=address, workers=workers)
    else:
        from lowmem.batch.in_process import run_in_process

        run_in_process(driver, settings)
