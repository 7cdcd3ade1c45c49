"""The pictures the page shows around an edit: the input on the box canvas, the red box the model
will see, and the regenerated region over the result."""

from __future__ import annotations

import base64
import io
from typing import Optional

from PIL import Image

from lowmem.common.images import fit_bucket, to_rgb
from lowmem.instructions import draw_box

CANVAS_SIZE = (384, 288)  # the canvas shows the input scaled (up or down) to fit this; boxes stay in its pixels
REGION_TINT = (255, 64, 0)


def canvas_value(image: Optional[Image.Image]) -> dict:
    """What the box canvas draws: a display copy of `image` as a data URL, the input's own size (a
    dragged box is mapped back to it), the size it is shown at, and no box yet. None: an empty canvas."""
    if image is None:
        return {"src": "", "width": 0, "height": 0, "shown": [0, 0], "box": None}
    scale = min(CANVAS_SIZE[0] / image.width, CANVAS_SIZE[1] / image.height)
    shown = [max(1, round(image.width * scale)), max(1, round(image.height * scale))]
    copy = to_rgb(image)[0]
    if scale < 1:  # a large photo travels as the copy the page shows, not whole
        copy = copy.resize(shown, Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    copy.save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    return {"src": url, "width": image.width, "height": image.height, "shown": shown, "box": None}


def model_input(image: Image.Image, box: tuple[int, int, int, int], resolution: int) -> Image.Image:
    """What the model will see: `image` fitted to its bucket at `resolution`, with the red box (in
    `image`'s pixels) drawn where the fit puts it, as the pipeline draws it."""
    fit = fit_bucket(*image.size, base_size=resolution)
    return draw_box(fit.apply(to_rgb(image)[0]), fit.map_box(box))


def regenerated_region(result: Image.Image, mask: Optional[Image.Image]) -> Optional[Image.Image]:
    """`result` with SpotEdit's regenerated region (white in `mask`) tinted; None without SpotEdit,
    where every token was regenerated."""
    if mask is None:
        return None
    tinted = Image.blend(result.convert("RGB"), Image.new("RGB", result.size, REGION_TINT), 0.45)
    return Image.composite(tinted, result.convert("RGB"), mask.convert("L").resize(result.size, Image.NEAREST))
