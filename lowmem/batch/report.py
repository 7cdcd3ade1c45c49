"""DIR/report.jsonl: one JSON record per job of the jobs file, in file order, rewritten atomically after
every job, so a killed batch leaves a report of what it finished and the next run knows what to skip.

A job counts as complete when its output file exists and the report holds a finished record with the
same fingerprint (a changed job, or an output written but not yet recorded when the batch was killed,
is run again)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

from PIL import Image, UnidentifiedImageError

from lowmem.batch.jobs import BadJob, Job
from lowmem.common.paths import write_text_atomic

REPORT_NAME = "report.jsonl"
FINISHED = ("done", "skipped")


class BatchReport:
    def __init__(self, folder: Path):
        self.folder = folder
        self.path = folder / REPORT_NAME
        self.previous = self._read_previous()
        self.records: dict[int, dict] = {}

    def _read_previous(self) -> dict[str, dict]:
        """Finished records of an earlier run, by output name; unreadable lines are ignored."""
        if not self.path.is_file():
            return {}
        finished = {}
        for text in self.path.read_text().splitlines():
            try:
                record = json.loads(text)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and record.get("status") in FINISHED and record.get("name"):
                finished[record["name"]] = record
        return finished

    def is_complete(self, job: Job) -> bool:
        earlier = self.previous.get(job.name)
        output = self.folder / job.name
        if earlier is None or earlier.get("fingerprint") != job.fingerprint or not output.is_file():
            return False
        try:
            with Image.open(output) as image:
                image.verify()
        except (UnidentifiedImageError, OSError, SyntaxError):
            return False
        return True

    def skip(self, job: Job) -> None:
        earlier = self.previous[job.name]
        self.records[job.line] = {**earlier, **job.describe(), "status": "skipped", "fingerprint": job.fingerprint}

    def add(self, job: Union[Job, BadJob], status: str, error: Optional[str] = None, **details) -> dict:
        record = {**job.describe(), "status": status, **details}
        if error is not None:
            record["error"] = error
        if isinstance(job, Job):
            record["fingerprint"] = job.fingerprint
        self.records[job.line] = record
        self.write()
        return record

    def write(self) -> None:
        write_text_atomic(self.path, "".join(json.dumps(self.records[line]) + "\n" for line in sorted(self.records)))

    def counts(self) -> dict[str, int]:
        counts = {"done": 0, "skipped": 0, "failed": 0}
        for record in self.records.values():
            counts[record["status"]] += 1
        return counts
