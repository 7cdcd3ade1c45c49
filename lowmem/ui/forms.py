"""The page's fields -> what lowmem edits with: an image read as every face reads one, an `EditSpec`
built through `lowmem.instructions` (its messages are the ones the page shows)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from lowmem import instructions
from lowmem.common import validation
from lowmem.edits import EditSpec
from lowmem.errors import InputImageError, InstructionError
from lowmem.instructions import EditInstruction

if TYPE_CHECKING:
    from PIL import Image

NO_ZOOM = "none"
ZOOM_CHOICES = (NO_ZOOM, "in", "out")


@dataclass(frozen=True)
class Sampling:
    """The page's advanced settings, checked as the command line checks its flags."""

    steps: int
    guidance: float
    seed: int
    resolution: int
    spot: str  # auto | on | off

    @classmethod
    def from_page(cls, steps: float, guidance: float, seed: float, resolution: float, spot: str) -> "Sampling":
        return cls(validation.steps(whole(steps)), validation.guidance(guidance), validation.seed(whole(seed)),
                   validation.resolution(whole(resolution)), spot)


@dataclass(frozen=True)
class SpotSettings:
    """SpotEdit's threshold and dilation for every edit of this server (the model's, not the page's)."""

    threshold: float | str = 0.15
    dilation: int = 1


def whole(value: Optional[float]) -> Optional[int | float]:
    """A number field's value as an int when it is one (an API client may send 16 as 16.0); others are
    left for the check to refuse by name."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def read_image(path: Optional[str]) -> "Image.Image":
    """The uploaded image, opened as the command line opens --image (upright, in its own mode: the edit reads
    it as RGB and reports what that changed; too many pixels, not an image: one message)."""
    if path is None:
        raise InputImageError("upload an image first: drop it on the Input image, or click there to choose one")
    from lowmem.common.images import open_image

    try:
        return open_image(path)
    except InputImageError as exc:  # named as the user named it, not by the server's upload folder
        raise InputImageError(str(exc).replace(path, Path(path).name)) from None


def spec(instruction: EditInstruction, sampling: Sampling, spot: SpotSettings) -> EditSpec:
    return EditSpec(instruction, steps=sampling.steps, guidance=sampling.guidance, seed=sampling.seed,
                    spot_threshold=spot.threshold, spot_dilation=spot.dilation)


def move_instruction(object_name: str, box: tuple[Optional[float], ...], image_size: tuple[int, int]) -> EditInstruction:
    """Move into the dragged box (input pixels); a box not drawn yet is named as such."""
    if any(value is None for value in box):
        raise InstructionError("drag the target box on the image in the Move tab first (from one corner to the other)")
    return instructions.move_to_box(object_name, tuple(int(round(value)) for value in box), image_size)


def camera_instruction(yaw: float, pitch: float, zoom: str) -> EditInstruction:
    """An orbit (yaw, pitch) or a zoom: the model was trained on one camera move per edit."""
    if zoom == NO_ZOOM:
        return instructions.camera(yaw, pitch)
    if yaw or pitch:
        raise InstructionError(f"zoom {zoom} or orbit (yaw {yaw:g}, pitch {pitch:g}), not both in one edit: "
                               "set yaw and pitch to 0 to zoom, or zoom to none to orbit")
    return instructions.zoom(zoom)
