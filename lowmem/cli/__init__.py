"""The `lowmem` command: `dispatch` parses the command line and runs one subcommand; every other
module here is one subcommand (`add_arguments(parser)`, `run(args) -> int`, `HELP`)."""

from lowmem.cli.dispatch import main

__all__ = ["main"]
