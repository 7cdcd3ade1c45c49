"""`lowmem bench-run`: SpatialEdit-Bench's meta file in, the official output tree out, on one card
within its budget (or over Ray), resumable; the official `eval_inference.py`'s flags and defaults."""

from __future__ import annotations

import argparse
from pathlib import Path

from lowmem.cli import option_types
from lowmem.cli.quantize import SCHEME_CHOICES
from lowmem.common import validation
from lowmem.common.validation import cli_type
from lowmem.edits import COMPUTE_CHOICES, COMPUTE_HELP
from lowmem.edits.fields import SPOT_CHOICES
from lowmem.common.paths import check_output_folder
from lowmem.errors import ArgumentError

HELP = "run SpatialEdit-Bench: its meta file in, the official output tree (fullset/<type>/en/...) out, resumable"

# The official run's settings (SpatialEdit-Bench/scripts/dist_inference.sh): facts, pinned by a test.
OFFICIAL_STEPS = 50
OFFICIAL_GUIDANCE = 5.0
OFFICIAL_SEED = 42
OFFICIAL_BASESIZE = 1024
OFFICIAL_NEG_PROMPT = ""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # Each flag also takes the official script's name, so its command line carries over.
    parser.add_argument("--meta", "--meta-file", dest="meta", required=True, type=Path,
                        help="the benchmark's meta file (a JSON list of items)")
    parser.add_argument("--data", "--bench-data-dir", dest="data", required=True, type=Path,
                        help="the benchmark's data folder (items' image_path is relative to it)")
    parser.add_argument("--out", "--save-path", dest="out", required=True, type=Path,
                        help="where the tree goes: OUT/fullset/<type>/en/<image_id>/<edit_id>.png ... (created; resumed "
                             "when it holds finished items)")
    parser.add_argument("--model", required=True, type=Path, help="model folder or Hub id (`lowmem download`)")
    knobs = parser.add_argument_group("sampling (defaults: the official run's)")
    knobs.add_argument("--steps", "--num-inference-steps", dest="steps", type=cli_type(validation.steps, "steps"),
                       default=OFFICIAL_STEPS, help="denoising steps (default: %(default)s)")
    knobs.add_argument("--guidance", "--guidance-scale", dest="guidance", type=cli_type(validation.guidance, "guidance"),
                       default=OFFICIAL_GUIDANCE, help="classifier-free guidance (default: %(default)s)")
    knobs.add_argument("--seed", type=cli_type(validation.seed, "seed"), default=OFFICIAL_SEED,
                       help="every item's generator is seeded with it afresh (default: %(default)s)")
    knobs.add_argument("--neg-prompt", default=OFFICIAL_NEG_PROMPT, help="negative prompt (default: empty)")
    knobs.add_argument("--basesize", type=cli_type(validation.resolution, "basesize"), default=OFFICIAL_BASESIZE,
                       help="base size of the input buckets (default: %(default)s)")
    run = parser.add_argument_group("how it runs")
    run.add_argument("--device", type=option_types.device, help="compute device (default: cuda when available, else cpu)")
    run.add_argument("--budget", type=option_types.budget, help="memory budget of each worker's device, e.g. 24GB or 'auto' (default on a GPU: auto)")
    run.add_argument("--preset", type=option_types.preset, help="hardware preset from offload_plans/ (e.g. rtx4090-24gb)")
    run.add_argument("--quantization", choices=SCHEME_CHOICES, help="quantize an original model folder while loading")
    run.add_argument("--compute", choices=COMPUTE_CHOICES, default="auto", help=COMPUTE_HELP)
    run.add_argument("--spot", nargs="?", const="on", default="off", choices=SPOT_CHOICES, metavar="on|off|auto",
                     help="SpotEdit: recompute only the edited tokens after a few full steps (default: off, as the "
                          "official run; --spot alone: on)")
    run.add_argument("--shard", metavar="K/N", help="run only items K, K+N, K+2N, ... (0-based, the official ranks' "
                                                     "split), e.g. one machine of N sharing OUT")
    run.add_argument("--engine", choices=option_types.ENGINE_CHOICES, default="local",
                     help="local: one pipeline in this process (default); ray: one worker per GPU of a Ray cluster")
    run.add_argument("--address", help="Ray: address of a running cluster (default: start a local one)")
    run.add_argument("--workers", type=int, help="Ray: number of workers (default: one per GPU of the cluster)")


def parse_shard(text: str | None) -> tuple[int, int]:
    """"K/N" -> (K, N) with 0 <= K < N; None -> (0, 1)."""
    if text is None:
        return 0, 1
    try:
        rank, world = (int(part, 10) for part in text.split("/"))
    except ValueError:
        raise ArgumentError(f"--shard takes K/N (this machine's number from 0, of N), got {text!r}") from None
    if not 0 <= rank < world:
        raise ArgumentError(f"--shard {text}: K must be 0..{world - 1} and N at least 1")
    return rank, world


def run(args: argparse.Namespace) -> int:
    from lowmem.bench_run.meta import BenchItem, read_meta
    from lowmem.models.layout import open_model_folder

    rank, world = parse_shard(args.shard)
    check_output_folder(args.out)
    open_model_folder(args.model)  # a wrong --model is refused before any item is read
    items = read_meta(args.meta, args.data, args.out)[rank::world]

    from lowmem.batch import BatchSettings  # not at the top: it imports torch
    from lowmem.batch.engines import run_engine
    from lowmem.bench_run.driver import BenchDriver
    from lowmem.bench_run.report import BenchReport
    from lowmem.edits import EditSpec
    from lowmem.instructions import EditInstruction

    settings = BatchSettings(model=args.model.resolve(), device=args.device, budget=args.budget, preset=args.preset,
                             quantization=args.quantization, resolution=args.basesize, spot=args.spot,
                             compute=args.compute, guidance=args.guidance)
    # What changes an output, under the flags' names: a resumed run must have the same.
    record = {**settings.fingerprint_context(), "steps": args.steps, "guidance": args.guidance, "seed": args.seed,
              "neg_prompt": args.neg_prompt}
    record["basesize"] = record.pop("resolution")
    args.out.mkdir(exist_ok=True)
    report = BenchReport(args.out, record, shard=None if world == 1 else (rank, world))

    def spec_for(item: BenchItem) -> EditSpec:  # the free-text prompt inside the official template, every item the same settings
        return EditSpec(EditInstruction(item.prompt), steps=args.steps, guidance=args.guidance, seed=args.seed,
                        negative_prompt=args.neg_prompt)

    driver = BenchDriver(items, report, spec_for)
    before = report.counts()
    print(f"{len(items)} items{f' (shard {rank}/{world})' if world > 1 else ''}: {before['failed']} invalid (see the report), "
          f"{before['skipped']} already in the tree, {len(driver.pending)} to run")
    run_engine(args.engine, driver, settings, address=args.address, workers=args.workers)
    print(report.format())
    counts = report.counts()
    print(f"{counts['done']} done, {counts['skipped']} skipped (already in the tree), {counts['failed']} failed; "
          f"report: {report.path}")
    return 1 if counts["failed"] else 0
