"""The `lowmem` command. Each subcommand lives in `lowmem/cli/`; this file only dispatches.

Bad input of any kind ends as one `error: ...` line on stderr and exit status 2; nothing on disk
is left half-written (every writer saves to a temporary name and renames), also when the run is
interrupted (Ctrl-C: exit status 130) or terminated (SIGTERM: 143).

Startup stays light: torch, transformers, diffusers and bitsandbytes are imported by a command's
`run` when it needs them, and only the chosen subcommand's arguments are built, so `lowmem --help`
and `lowmem --version` answer at once.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
from contextlib import contextmanager
from importlib import metadata
from typing import Iterator, Optional, Sequence

from lowmem.errors import LowmemError

COMMANDS = {  # name -> module in lowmem.cli
    "edit": "edit", "batch": "batch", "bench-run": "bench_run", "demo": "demo", "plan": "plan", "quantize": "quantize",
    "doctor": "doctor", "download": "download", "import": "import_official", "train-tiny": "train_tiny", "ui": "ui",
}


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad argument as one `error:` line (the usage is one --help away)."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see `{self.prog} --help`)\n")


def command_module(name: str):
    return importlib.import_module(f"lowmem.cli.{COMMANDS[name]}")


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """The parser; the subcommands' own arguments are added for `command` only (all when None)."""
    parser = OneLineParser(prog="lowmem", description="SpatialEdit-16B geometric image editing on limited memory")
    parser.add_argument("--version", action="version", version=f"lowmem {metadata.version('lowmem')}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        module = command_module(name)
        subparser = sub.add_parser(name, help=module.HELP, description=module.HELP)
        if command in (None, name):
            module.add_arguments(subparser)
    return parser


def chosen_command(argv: Sequence[str]) -> Optional[str]:
    """The subcommand named in `argv`: the top level takes no option with a value, so it is the
    first word that is not an option."""
    first = next((word for word in argv if not word.startswith("-")), None)
    return first if first in COMMANDS else ""


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, a job scheduler's stop) raised where the process was, so that every cleanup
    written for Ctrl-C runs too: staged folders and temporary files go, nothing is left half-written."""


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """While the block runs, SIGTERM raises Terminated (only the main thread may set a handler)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(chosen_command(argv)).parse_args(argv)
    try:
        with sigterm_raises():
            if getattr(args, "model", None) is not None:  # every command's --model (or MODEL) may be a Hub id
                from lowmem.hub.models import resolve_model

                args.model = resolve_model(args.model)
            return command_module(args.command).run(args) or 0
    except LowmemError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Terminated:
        print("terminated; nothing half-written was left behind", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("interrupted; nothing half-written was left behind", file=sys.stderr)
        return 130
    except Exception as exc:
        torch = sys.modules.get("torch")
        if torch is None or not isinstance(exc, torch.OutOfMemoryError):
            raise
        # The plan's estimate was short for this card or this input: say what to change, not a traceback.
        print(f"error: out of device memory ({str(exc).splitlines()[0]}); give a smaller --budget so more streams, "
              "a lower --resolution, or --quantization nf4", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
