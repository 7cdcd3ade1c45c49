"""The `lowmem` command. Each subcommand lives in `lowmem/commands/`; this file only dispatches.

Bad input of any kind ends as one `error: ...` line on stderr and exit status 2; nothing on disk
is left half-written (every writer saves to a temporary name and renames).
"""

from __future__ import annotations

import argparse
import sys
from importlib import metadata
from typing import Optional, Sequence

import torch

from lowmem.commands import batch, demo, doctor, edit, import_official, plan, quantize, train_tiny
from lowmem.errors import LowmemError

COMMANDS = {
    "edit": edit, "batch": batch, "demo": demo, "plan": plan, "quantize": quantize, "doctor": doctor, "import": import_official,
    "train-tiny": train_tiny,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lowmem", description="SpatialEdit-16B geometric image editing on limited memory")
    parser.add_argument("--version", action="version", version=f"lowmem {metadata.version('lowmem')}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        module.add_arguments(sub.add_parser(name, help=module.HELP, description=module.HELP))
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command].run(args) or 0
    except LowmemError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except torch.OutOfMemoryError as exc:
        # The plan's estimate was short for this card or this input: say what to change, not a traceback.
        print(f"error: out of device memory ({str(exc).splitlines()[0]}); give a smaller --budget so more streams, "
              "a lower --resolution, or --quantization nf4", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; nothing half-written was left behind", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
