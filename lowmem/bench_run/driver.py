"""The benchmark's driver for the batch engines: an item is pending while its `<edit_id>.png` is not in
the tree (the official resume rule); a finished item's files are written atomically, the edit last,
and recorded in the run report."""

from __future__ import annotations

from typing import Callable, Union

from lowmem.batch import Job
from lowmem.batch.driver import JobDriver
from lowmem.batch.execute import JobOutcome
from lowmem.bench_run.meta import BadItem, BenchItem
from lowmem.bench_run.report import BenchReport
from lowmem.common.images import save_image_atomic
from lowmem.common.paths import copy_atomic, remove_temporaries, write_text_atomic
from lowmem.edits import EditSpec
from lowmem.errors import OutputPathError


class BenchDriver(JobDriver):
    progress_label = "bench"

    def __init__(self, items: list[Union[BenchItem, BadItem]], report: BenchReport,
                 spec_for: Callable[[BenchItem], EditSpec]):
        super().__init__()
        self.report = report
        self.items: dict[int, BenchItem] = {}
        complete = []
        for item in items:
            if isinstance(item, BadItem):
                report.add(item, "failed", item.error)
            elif item.outputs.edit.is_file():
                complete.append(item)
            else:
                self.items[item.number] = item
        report.check_settings(len(complete))
        for item in complete:
            report.skip(item)
        for item in self.items.values():
            for path in item.outputs.written():  # a run killed while saving leaves temporaries, never half a file
                remove_temporaries(path)
            self.pending.append(Job(line=item.number, name=report.output_name(item), image=item.image,
                                    spec=spec_for(item), fingerprint=""))
        report.write()

    def describe(self, job: Job) -> str:
        item = self.items[job.line]
        return f"item {item.number} ({item.task} {item.edit_id})"

    def store(self, job: Job, outcome: JobOutcome, timing: dict) -> None:
        item = self.items[job.line]
        if outcome.error is not None:
            self.report.add(item, "failed", outcome.error, **timing)
        else:
            write_outputs(item, outcome)
            self.report.add(item, "done", phases=outcome.phases, **outcome.measures, **timing)
        self.report.write()


def write_outputs(item: BenchItem, outcome: JobOutcome) -> None:
    """The item's files in the official tree; the edit last, so its presence means the item is complete."""
    outputs = item.outputs
    target = outputs.edit.parent
    try:
        target.mkdir(parents=True, exist_ok=True)
        save_image_atomic(outcome.input_image, outputs.source, overwrite=True)
        write_text_atomic(outputs.prompt, item.prompt)
        for destination, source in outputs.copies.items():
            copy_atomic(source, destination)
        save_image_atomic(outcome.image, outputs.edit, overwrite=True)
    except OutputPathError:
        raise
    except OSError as exc:  # a full disk or a folder taken away: every later item would fail the same way
        raise OutputPathError(f"could not write item {item.number}'s outputs in {target}: "
                              f"{exc.strerror or exc}; the items finished before it are kept") from None


