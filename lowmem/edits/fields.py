"""The fields of an edit, as flags: `lowmem edit`, `lowmem demo` and `lowmem batch` (whose jobs-file
lines are turned into these flags) add them to their parsers and read them back as an `EditSpec`."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Optional

from lowmem import instructions
from lowmem.common import validation
from lowmem.common.validation import cli_type
from lowmem.edits.spec import EditSpec
from lowmem.errors import InstructionError
from lowmem.instructions import EditInstruction

SPOT_CHOICES = ("on", "off", "auto")
COMPUTE_CHOICES = ("auto", "bf16", "fp8", "int8")  # quantize.compute.COMPUTE_MODES and auto (no torch import here)
COMPUTE_HELP = ("GEMM of the DiT's large Linears: bf16, or W8A8 fp8 (CUDA sm_89+) / int8 (CUDA sm_80+, the CPU) "
                "with per-token activation scales; auto: the fastest the device runs, as measured per device and "
                "DiT width (default: %(default)s)")
DEFAULTS = {field.name: field.default for field in dataclasses.fields(EditSpec) if field.name != "instruction"}


def add_edit_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_argument_group("the edit (one of)")
    what.add_argument("--instruction", help="free instruction text")
    what.add_argument("--rotate", metavar="VIEW", help=f"rotate the object to a view: {', '.join(instructions.VIEWS)}")
    what.add_argument("--move-box", metavar="X0,Y0,X1,Y1", help="move the object into this box, in the input image's pixels (drawn in red)")
    what.add_argument("--scale", type=float, metavar="F", help="scale the object by F (0.25..4)")
    what.add_argument("--camera-yaw", type=float, metavar="DEG", help="orbit the camera: yaw in 45 degree steps")
    what.add_argument("--camera-pitch", type=float, metavar="DEG", help="orbit the camera: pitch in 15 degree steps")
    what.add_argument("--zoom", choices=("in", "out"), help="zoom the camera in or out")
    what.add_argument("--object", default="object", help="what to rotate/move/scale (default: %(default)s)")
    knobs = parser.add_argument_group("sampling")
    knobs.add_argument("--steps", type=cli_type(validation.steps, "steps"), default=DEFAULTS["steps"], help="denoising steps (default: %(default)s)")
    knobs.add_argument("--guidance", type=cli_type(validation.guidance, "guidance"), default=DEFAULTS["guidance"], help="classifier-free guidance (default: %(default)s)")
    knobs.add_argument("--seed", type=cli_type(validation.seed, "seed"), default=DEFAULTS["seed"], help="random seed (default: %(default)s)")
    knobs.add_argument("--neg-prompt", "--negative-prompt", dest="negative_prompt", default=DEFAULTS["negative_prompt"], metavar="TEXT",
                       help="negative prompt: the unconditional text under guidance (default: empty, as trained)")
    knobs.add_argument("--resolution", type=cli_type(validation.resolution, "resolution"), default=1024, help="working resolution, about N x N pixels (default: %(default)s)")
    spot = parser.add_argument_group("SpotEdit (recompute only the edited tokens)")
    spot.add_argument("--spot", nargs="?", const="on", default="off", choices=SPOT_CHOICES, metavar="on|off|auto",
                      help="skip non-edited tokens after a few full steps; auto: only where the time model says it pays "
                           "(large edits on a GPU) (default: off; --spot alone: on)")
    spot.add_argument("--no-spot", dest="spot", action="store_const", const="off", help="SpotEdit off")
    spot.add_argument("--spot-threshold", type=cli_type(validation.spot_threshold, "threshold"), default=DEFAULTS["spot_threshold"], metavar="TAU",
                      help="perceptual score under which a token is non-edited, or 'auto' to split each step's "
                           "scores in two clusters (default: %(default)s)")
    spot.add_argument("--spot-dilation", type=cli_type(validation.spot_dilation, "dilation"), default=DEFAULTS["spot_dilation"], metavar="R",
                      help="grow the edited region by R tokens on every side (default: %(default)s)")


def edit_spec(args: argparse.Namespace, instruction: Optional[EditInstruction] = None) -> EditSpec:
    """The edit the flags ask for; its instruction from the edit flags (exactly one) unless given."""
    return EditSpec(instruction if instruction is not None else instruction_from_args(args), steps=args.steps,
                    guidance=args.guidance, seed=args.seed, spot_threshold=args.spot_threshold,
                    spot_dilation=args.spot_dilation, negative_prompt=args.negative_prompt)


def instruction_from_args(args: argparse.Namespace) -> EditInstruction:
    """Exactly one of the edit flags (yaw and pitch count as one camera move) -> the prompt."""
    chosen = []
    if args.instruction is not None:
        chosen.append(EditInstruction(args.instruction))  # "" or spaces: refused as empty, with what to write
    if args.rotate:
        chosen.append(instructions.rotate(args.object, args.rotate))
    if args.move_box:
        try:
            box = tuple(int(v) for v in args.move_box.split(","))
        except ValueError:
            raise InstructionError(f"--move-box takes four integers x0,y0,x1,y1, got {args.move_box!r}") from None
        chosen.append(instructions.move_to_box(args.object, box))
    if args.scale is not None:
        chosen.append(instructions.scale(args.object, args.scale))
    if args.camera_yaw is not None or args.camera_pitch is not None:
        chosen.append(instructions.camera(args.camera_yaw or 0.0, args.camera_pitch or 0.0))
    if args.zoom:
        chosen.append(instructions.zoom(args.zoom))
    if len(chosen) != 1:
        raise InstructionError(
            "give exactly one edit: --instruction, --rotate, --move-box, --scale, --camera-yaw/--camera-pitch or --zoom"
        )
    return chosen[0]
