"""JOBS.jsonl -> jobs: each line one `lowmem edit`, its fields named as the edit's flags.

A line such as {"image": "a.png", "rotate": "back", "seed": 3, "name": "a-back.png"} is turned into
the flags `--image a.png --rotate back --seed 3` and read into an `EditSpec` by the same fields as
`lowmem edit` (lowmem/edits/fields.py), so a job accepts and refuses exactly what the command does.
Flags given to `lowmem batch` itself are every job's defaults.
A line that cannot become a job is kept as a `BadJob` with its error: it is reported, not fatal.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from lowmem.common.json_files import read_text
from lowmem.edits import EditSpec, add_edit_arguments, edit_spec
from lowmem.errors import LowmemError

# Chosen when the pipeline is loaded (the plan depends on them), so set once per batch, not per job.
BATCH_ONLY_FIELDS = ("resolution", "spot")
OUTPUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


class JobError(LowmemError, ValueError):
    """One line of a jobs file that cannot be run as an edit."""


class _RaisingParser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print usage and exit the whole batch
        raise JobError(message)


@dataclass(frozen=True)
class Job:
    line: int  # 1-based line of the jobs file
    name: str  # output file name inside the batch folder
    image: Path
    spec: EditSpec
    fingerprint: str  # changes when anything that changes the output image changes

    def describe(self) -> dict:
        return {"line": self.line, "name": self.name, "image": str(self.image), "instruction": self.spec.instruction.text,
                "steps": self.spec.steps, "guidance": self.spec.guidance, "seed": self.spec.seed}


@dataclass(frozen=True)
class BadJob:
    line: int
    name: Optional[str]
    error: str

    def describe(self) -> dict:
        return {"line": self.line, "name": self.name}


def job_parser() -> argparse.ArgumentParser:
    parser = _RaisingParser(prog="job", add_help=False, allow_abbrev=False)
    parser.add_argument("--image", type=Path)
    parser.add_argument("--name")
    add_edit_arguments(parser)
    return parser


def job_fields(parser: argparse.ArgumentParser) -> list[str]:
    """The field names a job line may use."""
    names = {action.dest for action in parser._actions if action.option_strings}  # noqa: SLF001 (argparse has no public list)
    return sorted(names - set(BATCH_ONLY_FIELDS))


def _field_to_flags(key: str, value) -> list[str]:
    flag = "--" + key.replace("_", "-")
    if isinstance(value, bool) or value is None:
        raise JobError(f"field {key!r} needs a value, got {json.dumps(value)}")
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)  # "move_box": [x0, y0, x1, y1]
    return [flag, str(value)]


def _output_name(given: Optional[str], line: int, image: Path) -> str:
    if given is None:
        return f"{line:05d}-{image.stem}.png"
    if Path(given).name != given or given in (".", "..") or given.startswith("."):
        raise JobError(f"name {given!r} must be a plain file name inside the output folder (no folders, not hidden)")
    if Path(given).suffix.lower() not in OUTPUT_SUFFIXES:
        raise JobError(f"name {given!r} must end in one of {', '.join(OUTPUT_SUFFIXES)}")
    return given


def _fingerprint(fields: dict, image: Path, context: dict) -> str:
    stat = image.stat() if image.is_file() else None
    identity = {"job": fields, "image_bytes": stat and stat.st_size, "image_mtime_ns": stat and stat.st_mtime_ns, **context}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def parse_job(text: str, line: int, defaults: argparse.Namespace, base: Path, context: dict) -> Job:
    """One jobs-file line -> a Job; JobError (or the edit's own LowmemError) says what is wrong.

    `defaults`: the batch command's arguments; `base`: the folder relative image paths start from;
    `context`: batch-wide settings that change the output (model, resolution, ...), for the fingerprint."""
    try:
        fields = json.loads(text)
    except json.JSONDecodeError as exc:
        raise JobError(f"not a JSON object ({exc.msg} at column {exc.colno})") from None
    if not isinstance(fields, dict):
        raise JobError(f"not a JSON object but {type(fields).__name__}")
    parser = job_parser()
    known = job_fields(parser)
    fields = {key.replace("-", "_"): value for key, value in fields.items()}
    unknown = sorted(set(fields) - set(known))
    if unknown:
        where = "set them on the `lowmem batch` command line" if set(unknown) <= set(BATCH_ONLY_FIELDS) else f"known fields: {', '.join(known)}"
        raise JobError(f"unknown or per-batch field(s) {', '.join(unknown)}; {where}")
    if "image" not in fields:
        raise JobError("no 'image' field (the input image path)")
    parser.set_defaults(**{key: value for key, value in vars(defaults).items() if key in known})
    argv = [flag for key, value in fields.items() for flag in _field_to_flags(key, value)]
    args = parser.parse_args(argv)
    if args.steps < 1:
        raise JobError(f"steps must be at least 1, got {args.steps}")
    spec = edit_spec(args)
    image = args.image if args.image.is_absolute() else base / args.image
    name = _output_name(args.name, line, image)
    return Job(line=line, name=name, image=image, spec=spec,
               fingerprint=_fingerprint({k: v for k, v in vars(args).items() if k != "image"}, image, context))


def read_jobs(path: Path, defaults: argparse.Namespace, context: dict) -> list[Union[Job, BadJob]]:
    """Every non-blank line of `path` as a Job or a BadJob; relative image paths start at the file's folder
    (made absolute: a Ray worker's working directory is not this one).
    Two jobs writing the same output name: the later one is a BadJob."""
    if not path.is_file():
        raise JobError(f"jobs file {path} does not exist")
    jobs: list[Union[Job, BadJob]] = []
    owners: dict[str, int] = {}
    text_of_file = read_text(path, "save it as UTF-8 text: one JSON object per line", JobError)
    for line, text in enumerate(text_of_file.splitlines(), start=1):
        if not text.strip():
            continue
        try:
            job = parse_job(text, line, defaults, path.resolve().parent, context)
        except LowmemError as exc:
            jobs.append(BadJob(line, _given_name(text), str(exc)))
            continue
        if job.name in owners:
            jobs.append(BadJob(line, None, f"output name {job.name} is already used by line {owners[job.name]}"))
            continue
        owners[job.name] = line
        jobs.append(job)
    if not jobs:
        raise JobError(f"jobs file {path} has no jobs (one JSON object per line)")
    return jobs


def _given_name(text: str) -> Optional[str]:
    try:
        fields = json.loads(text)
    except json.JSONDecodeError:
        return None
    return fields.get("name") if isinstance(fields, dict) and isinstance(fields.get("name"), str) else None
