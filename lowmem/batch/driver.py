"""The batch driver: decides what is left to do, shows one progress bar, writes each finished image
atomically into the output folder and records every job in the report, whatever engine ran it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Union

from tqdm.auto import tqdm

from lowmem.batch.execute import JobOutcome
from lowmem.batch.jobs import BadJob, Job
from lowmem.batch.report import REPORT_NAME, BatchReport
from lowmem.common.images import save_image_atomic


def remove_leftover_temporaries(folder: Path, names: list[str]) -> None:
    """A batch killed while saving leaves a temporary (never a half-written output): remove those
    of this batch's outputs and report (the names `save_image_atomic` and `write_text_atomic` use)."""
    patterns = [f".{Path(name).stem}.*{Path(name).suffix}" for name in names] + [f".{REPORT_NAME}.*"]
    for pattern in patterns:
        for leftover in folder.glob(pattern):
            leftover.unlink(missing_ok=True)


class BatchDriver:
    def __init__(self, folder: Path, jobs: list[Union[Job, BadJob]]):
        self.folder = folder
        self.report = BatchReport(folder)
        remove_leftover_temporaries(folder, [job.name for job in jobs if isinstance(job, Job)])
        self.pending: list[Job] = []
        for job in jobs:
            if isinstance(job, BadJob):
                self.report.records[job.line] = {**job.describe(), "status": "failed", "error": job.error}
            elif self.report.is_complete(job):
                self.report.skip(job)
            else:
                self.pending.append(job)
        self.report.write()
        self.progress = None

    def __enter__(self) -> "BatchDriver":
        self.progress = tqdm(total=len(self.pending), desc="batch", unit="job", dynamic_ncols=True)
        return self

    def __exit__(self, *exc) -> None:
        self.progress.close()

    def finish(self, job: Job, outcome: JobOutcome, **details) -> None:
        """Save the job's image (atomically) and record it; a failed job is only recorded."""
        timing = {"seconds": round(outcome.seconds, 3), "worker": outcome.worker, **details}
        if outcome.error is not None:
            self.report.add(job, "failed", outcome.error, **timing)
            tqdm.write(f"line {job.line} failed: {outcome.error}", file=sys.stderr)
        else:
            save_image_atomic(outcome.image, self.folder / job.name, overwrite=True)
            self.report.add(job, "done", phases=outcome.phases, **timing)
        self.progress.set_postfix_str(f"{job.name} {outcome.seconds:.1f} s", refresh=False)
        self.progress.update(1)
