"""Builders for the prompt forms SpatialEdit was trained on, so users never hand-write them.

Object edits: rotation to one of 8 canonical views, translation into a red box drawn on the input
image, scaling. Camera edits: yaw in 45 degree steps, pitch in 15 degree steps, zoom in/out.
Anything outside what the model was trained on is an `InstructionError` that lists the allowed
values, because the model would silently produce something else.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral, Real
from typing import TYPE_CHECKING, Optional, Union

from PIL import Image, ImageDraw

from lowmem.common import validation
from lowmem.errors import InstructionError

if TYPE_CHECKING:
    from lowmem.common.images import BucketFit

VIEWS = ("front", "rear", "left", "right", "front left", "front right", "rear left", "rear right")
YAW_STEP, YAW_LIMIT = 45, 180
PITCH_STEP, PITCH_LIMIT = 15, 45
ALLOWED_YAWS = tuple(range(-YAW_LIMIT, YAW_LIMIT + 1, YAW_STEP))
ALLOWED_PITCHES = tuple(range(-PITCH_LIMIT, PITCH_LIMIT + 1, PITCH_STEP))
SCALE_RANGE = (0.25, 4.0)
BOX_OUTLINE = (255, 0, 0)


@dataclass(frozen=True)
class EditInstruction:
    """Prompt text, plus the red box to draw on the input for box-guided translation."""

    text: str
    box: Optional[tuple[int, int, int, int]] = None

    def __post_init__(self) -> None:
        # Born here for every face (flags, jobs files, the API): a blank prompt would edit with no instruction.
        if not isinstance(self.text, str):
            raise InstructionError(f"the instruction must be text, got {type(self.text).__name__} {self.text!r}; "
                                   "write what to edit, or build it with lowmem.instructions (rotate, move_to_box, ...)")
        if not self.text.strip():
            raise InstructionError("the instruction is empty (or only spaces); say what to edit, e.g. "
                                   "--instruction \"rotate the chair to face left\", or use --rotate/--move-box/...")
        if self.box is not None:
            object.__setattr__(self, "box", _pixel_box(self.box))

    def check_box_inside(self, image_size: tuple[int, int]) -> None:
        """Raise InstructionError when the box reaches outside an input image of `image_size` (w, h)."""
        if not (isinstance(image_size, (tuple, list)) and len(image_size) == 2):
            raise InstructionError(f"image_size is the input image's (width, height), got {image_size!r}")
        if self.box is not None and (self.box[2] > image_size[0] or self.box[3] > image_size[1]):
            raise InstructionError(f"box {self.box} reaches outside the {image_size[0]}x{image_size[1]} input image; "
                                   "give it in the input image's pixels")

    def prepare_image(self, image: Image.Image, fit: Optional["BucketFit"] = None) -> Image.Image:
        """The image the model sees: the input (already fitted to its bucket by `fit`), with the red
        target box drawn when there is one. The box is in the input image's pixels and goes through
        the same resize and crop as the image."""
        if self.box is None:
            return image
        box = self.box
        if fit is not None:
            self.check_box_inside(fit.source)
            box = fit.map_box(box)
        return draw_box(image, box)


def as_instruction(instruction: Union[str, EditInstruction]) -> EditInstruction:
    """What `SpatialEditPipeline.edit` takes as its instruction: text, or one this module built."""
    if isinstance(instruction, EditInstruction):
        return instruction
    if not isinstance(instruction, str):
        raise InstructionError(f"the instruction must be text or a lowmem.instructions.EditInstruction, got "
                               f"{type(instruction).__name__} {instruction!r}; e.g. instructions.rotate('chair', 'left')")
    return EditInstruction(instruction)


def _whole(value: object) -> bool:
    """Whether `value` is a whole number (2, numpy's int64, 2.0), not True or 2.5."""
    if isinstance(value, bool):
        return False
    return isinstance(value, Integral) or isinstance(value, Real) and float(value).is_integer()


def _pixel_box(box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """`box` as four whole pixel coordinates x0 < x1, y0 < y1, all >= 0."""
    try:
        values = tuple(box)
    except TypeError:
        raise InstructionError(f"a box is four pixel coordinates x0,y0,x1,y1, got {box!r}") from None
    if len(values) != 4 or not all(_whole(v) for v in values):
        raise InstructionError(f"a box is four whole pixel coordinates x0,y0,x1,y1, got {box!r}")
    x0, y0, x1, y1 = (int(v) for v in values)
    if x1 <= x0 or y1 <= y0 or min(x0, y0) < 0:
        raise InstructionError(f"box {box!r} is empty or negative: it needs x0 < x1 and y0 < y1, all >= 0")
    return x0, y0, x1, y1


def _subject(name: str) -> str:
    name = validation.text(name, "the object's name", InstructionError).strip()
    if not name:
        raise InstructionError("name the object to edit, e.g. 'the chair' -> object='chair'")
    return name


def rotate(obj: str, view: str) -> EditInstruction:
    """Rotate `obj` to a canonical view: front, rear, left, right or a diagonal such as 'front left'."""
    normalised = " ".join(validation.text(view, "the view", InstructionError).replace("-", " ").replace("_", " ").lower().split())
    normalised = normalised.replace("back", "rear")
    if normalised not in VIEWS:
        raise InstructionError(f"view {view!r} is not one of the 8 canonical views: {', '.join(VIEWS)}")
    return EditInstruction(f"Rotate the {_subject(obj)} to show the {normalised} side view.")


def move_to_box(obj: str, box: tuple[int, int, int, int], image_size: Optional[tuple[int, int]] = None) -> EditInstruction:
    """Move `obj` into the pixel box (x0, y0, x1, y1), which is drawn in red on the input image."""
    instruction = EditInstruction(f"Move the {_subject(obj)} into the red box.", box=_pixel_box(box))  # None too
    if image_size is not None:
        instruction.check_box_inside(image_size)
    return instruction


def scale(obj: str, factor: float) -> EditInstruction:
    """Scale `obj` by `factor` (0.25 .. 4); larger than 1 enlarges it."""
    factor = validation.finite(factor, "scale factor", InstructionError)
    low, high = SCALE_RANGE
    if not (low <= factor <= high) or factor == 1:
        raise InstructionError(f"scale factor {factor} must be in [{low}, {high}] and not 1")
    direction = "larger" if factor > 1 else "smaller"
    return EditInstruction(f"Scale the {_subject(obj)} by a factor of {factor:g}, making it {direction}.")


def camera(yaw: float = 0.0, pitch: float = 0.0) -> EditInstruction:
    """Orbit the camera: yaw in 45 degree steps (-180..180), pitch in 15 degree steps (-45..45)."""
    yaw = validation.finite(yaw, "camera yaw", InstructionError)
    pitch = validation.finite(pitch, "camera pitch", InstructionError)
    if yaw not in ALLOWED_YAWS:
        raise InstructionError(f"camera yaw {yaw:.10g} was not trained; use one of {', '.join(map(str, ALLOWED_YAWS))} degrees")
    if pitch not in ALLOWED_PITCHES:
        raise InstructionError(
            f"camera pitch {pitch:.10g} was not trained; use one of {', '.join(map(str, ALLOWED_PITCHES))} degrees"
        )
    if yaw == 0 and pitch == 0:
        raise InstructionError("a camera move needs a non-zero yaw or pitch")
    return EditInstruction(
        f"Move the camera. Camera rotation: Yaw {float(yaw):.1f}°, Pitch {float(pitch):.1f}°. Keep the 3D scene static."
    )


def zoom(direction: str) -> EditInstruction:
    """Change the focal length: 'in' or 'out'."""
    if direction not in ("in", "out"):
        raise InstructionError(f"zoom is 'in' or 'out', got {direction!r}")
    return EditInstruction(f"Move the camera. Camera zoom: {direction}. Keep the 3D scene static.")


def draw_box(image: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    """A copy of `image` with `box` outlined in red, line width scaled to the image size."""
    marked = image.convert("RGB").copy()
    width = max(2, round(min(marked.size) / 128))
    ImageDraw.Draw(marked).rectangle(box, outline=BOX_OUTLINE, width=width)
    return marked
