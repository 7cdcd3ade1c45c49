"""The default engine: one pipeline in this process, the jobs in sequence (the bar shows each one's steps)."""

from __future__ import annotations

from lowmem.batch.driver import JobDriver
from lowmem.batch.execute import BatchSettings, execute, load_pipeline


def run_in_process(driver: JobDriver, settings: BatchSettings) -> None:
    if not driver.pending:
        return
    with load_pipeline(settings) as pipe, driver:
        if pipe.offload is not None:
            print(f"plan: {pipe.offload.plan.summary()}")
        for job in driver.pending:
            driver.finish(job, execute(pipe, job, settings, on_progress=driver.show_progress(job)))
