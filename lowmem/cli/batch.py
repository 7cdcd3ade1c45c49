"""`lowmem batch`: the edits of a jobs file, in this process (default) or over a Ray cluster."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from lowmem.cli import option_types
from lowmem.cli.quantize import SCHEME_CHOICES
from lowmem.edits import COMPUTE_CHOICES, COMPUTE_HELP, add_edit_arguments
from lowmem.common.paths import check_output_folder

HELP = "run many edits from a JSON-lines jobs file (resumable; in this process or with --engine ray)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("jobs", type=Path, help='jobs file: one JSON object per line, the `lowmem edit` flags as fields, '
                                                'e.g. {"image": "a.png", "rotate": "back", "seed": 1, "name": "a-back.png"}')
    parser.add_argument("--out", required=True, type=Path, help="output folder (created; holds the images and the batch report)")
    parser.add_argument("--model", required=True, type=Path, help="model folder (official layout or `lowmem quantize` output)")
    parser.add_argument("--device", type=option_types.device, help="compute device (default: cuda when available, else cpu)")
    parser.add_argument("--budget", type=option_types.budget, help="memory budget of each worker's device, e.g. 24GB or 'auto' (default on a GPU: auto)")
    parser.add_argument("--preset", type=option_types.preset, help="hardware preset from offload_plans/ (e.g. rtx4090-24gb)")
    parser.add_argument("--quantization", choices=SCHEME_CHOICES, help="quantize an original model folder while loading")
    parser.add_argument("--compute", choices=COMPUTE_CHOICES, default="auto", help=COMPUTE_HELP)
    parser.add_argument("--engine", choices=option_types.ENGINE_CHOICES, default="local",
                        help="local: one pipeline in this process (default); ray: one worker per GPU of a Ray cluster "
                             "(pip install 'lowmem[ray]')")
    parser.add_argument("--address", help="Ray: address of a running cluster (default: start a local one)")
    parser.add_argument("--workers", type=int, help="Ray: number of workers (default: one per GPU of the cluster; "
                                                    "required on a cluster without GPUs)")
    add_edit_arguments(parser)  # every job's defaults


def run(args: argparse.Namespace) -> int:
    from lowmem.models.layout import open_model_folder

    check_output_folder(args.out)
    open_model_folder(args.model)  # a wrong --model is refused before any job is read
    from lowmem.batch import BatchDriver, BatchSettings, Job, read_jobs  # not at the top: it imports torch
    from lowmem.batch.engines import run_engine

    settings = BatchSettings(model=args.model.resolve(), device=args.device, budget=args.budget, preset=args.preset,
                             quantization=args.quantization, resolution=args.resolution, spot=args.spot,
                             compute=args.compute)
    jobs = read_jobs(args.jobs, args, settings.fingerprint_context())
    guidances = [job.spec.guidance for job in jobs if isinstance(job, Job)]
    settings = replace(settings, guidance=max(guidances, default=args.guidance))
    args.out.mkdir(exist_ok=True)
    driver = BatchDriver(args.out, jobs)
    before = driver.report.counts()
    print(f"{len(jobs)} jobs: {before['failed']} invalid (see the report), {before['skipped']} already complete, "
          f"{len(driver.pending)} to run")
    run_engine(args.engine, driver, settings, address=args.address, workers=args.workers)
    counts = driver.report.counts()
    print(f"{counts['done']} done, {counts['skipped']} skipped (already complete), {counts['failed']} failed; "
          f"report: {driver.report.path}")
    return 1 if counts["failed"] else 0
