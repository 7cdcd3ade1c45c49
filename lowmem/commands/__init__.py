"""One module per `lowmem` subcommand: `add_arguments(parser)`, `run(args) -> int`, `HELP`."""
