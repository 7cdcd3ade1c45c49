"""`lowmem ui`: a web page (Gradio) for geometric edits, on one model loaded once."""

from __future__ import annotations

import argparse
from pathlib import Path

from lowmem.cli import option_types
from lowmem.common import validation
from lowmem.common.validation import cli_type
from lowmem.edits import COMPUTE_CHOICES, COMPUTE_HELP
from lowmem.edits.fields import SPOT_CHOICES

HELP = "serve a web page for geometric edits on 127.0.0.1 (on the shipped trained tiny model when no --model is given)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path,
                        help="model folder or downloaded Hub id (default: the shipped trained tiny model)")
    parser.add_argument("--budget", type=option_types.budget, help="memory budget of the compute device, e.g. 24GB, or 'auto' "
                                         "(default: auto on a GPU; the tiny model's own on the shipped one)")
    parser.add_argument("--preset", type=option_types.preset, help="hardware preset from offload_plans/ (e.g. rtx4090-24gb)")
    parser.add_argument("--compute", choices=COMPUTE_CHOICES, default="auto", help=COMPUTE_HELP)
    parser.add_argument("--resolution", type=cli_type(validation.resolution, "resolution"),
                        help="the largest working resolution the page offers, planned for "
                             "(default: 1024; 64 for the shipped tiny model)")
    parser.add_argument("--spot", choices=SPOT_CHOICES,
                        help="SpotEdit in the memory plan: on, off, or auto: where the time model says it pays; "
                             "the page's SpotEdit 'auto' follows it (default: auto; on for the shipped tiny model)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: %(default)s, this machine only; 0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: %(default)s)")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link (off unless asked)")


def run(args: argparse.Namespace) -> int:
    try:
        import gradio  # noqa: F401  (asked for first: the model takes a while to load)
    except ImportError:
        from lowmem.errors import LowmemError

        raise LowmemError("`lowmem ui` needs Gradio: pip install 'lowmem[ui]'") from None
    from lowmem.ui.app import build_app
    from lowmem.ui.server import ServerSettings, launch, load

    service, defaults = load(ServerSettings(model=args.model, budget=args.budget, preset=args.preset,
                                            resolution=args.resolution, spot=args.spot, compute=args.compute))
    launch(build_app(service, defaults), args.host, args.port, args.share)
    service.pipe.close()
    return 0
