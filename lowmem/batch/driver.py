"""The drivers: what every engine hands its outcomes to. A driver decides what is left to do, shows one
progress bar, and stores each finished job (its outputs written atomically, its record in a report),
whatever engine ran it. `BatchDriver` is `lowmem batch`'s; `lowmem bench-run` has its own."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Union

from tqdm.auto import tqdm

from lowmem.batch.execute import JobOutcome
from lowmem.batch.jobs import BadJob, Job
from lowmem.batch.report import REPORT_NAME, BatchReport
from lowmem.common.images import save_image_atomic
from lowmem.common.paths import remove_temporaries


class JobDriver:
    """The pending jobs, one progress bar over them, and `finish` for each; subclasses `store` a job."""

    progress_label = "batch"

    def __init__(self) -> None:
        self.pending: list[Job] = []
        self.progress = None

    def __enter__(self) -> "JobDriver":
        self.progress = tqdm(total=len(self.pending), desc=self.progress_label, unit="job", dynamic_ncols=True)
        return self

    def __exit__(self, *exc) -> None:
        self.progress.close()

    def finish(self, job: Job, outcome: JobOutcome, **details) -> None:
        """Store the job's outcome (a failed job is only recorded) and move the progress bar."""
        timing = {"seconds": round(outcome.seconds, 3), "worker": outcome.worker, **details}
        if outcome.error is not None:
            tqdm.write(f"{self.describe(job)} failed: {outcome.error}", file=sys.stderr)
        self.store(job, outcome, timing)
        self.progress.set_postfix_str(f"{job.name} {outcome.seconds:.1f} s", refresh=False)
        self.progress.update(1)

    def show_progress(self, job: Job) -> Callable[[str, int], None]:
        """The pipeline's `on_progress` hook for `job`: its phase and step on the bar, beside the job count."""
        def show(phase: str, steps_done: int) -> None:
            step = f" {steps_done}/{job.spec.steps}" if phase == "denoise" else ""
            self.progress.set_postfix_str(f"{job.name}: {phase}{step}")

        return show

    def describe(self, job: Job) -> str:
        return f"line {job.line}"

    def store(self, job: Job, outcome: JobOutcome, timing: dict) -> None:
        raise NotImplementedError


class BatchDriver(JobDriver):
    def __init__(self, folder: Path, jobs: list[Union[Job, BadJob]]):
        super().__init__()
        self.folder = folder
        self.report = BatchReport(folder)
        # A batch killed while saving leaves a temporary, never a half-written output: remove them.
        for name in [job.name for job in jobs if isinstance(job, Job)] + [REPORT_NAME]:
            remove_temporaries(folder / name)
        for job in jobs:
            if isinstance(job, BadJob):
                self.report.records[job.line] = {**job.describe(), "status": "failed", "error": job.error}
            elif self.report.is_complete(job):
                self.report.skip(job)
            else:
                self.pending.append(job)
        self.report.write()

    def store(self, job: Job, outcome: JobOutcome, timing: dict) -> None:
        """Save the job's image (atomically) and record it; a failed job is only recorded."""
        if outcome.error is not None:
            self.report.add(job, "failed", outcome.error, **timing)
        else:
            save_image_atomic(outcome.image, self.folder / job.name, overwrite=True)
            self.report.add(job, "done", phases=outcome.phases, **outcome.measures, **timing)
