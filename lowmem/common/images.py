"""Image I/O for the pipeline: reading with clear errors, the official input buckets, tensors, atomic saving."""

from __future__ import annotations

import io
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lowmem.common.paths import check_output_path, write_bytes_atomic
from lowmem.errors import InputImageError, InstructionError, ResolutionError

# The official demo's input rule (`_dynamic_resize_from_bucket` in the public SpatialEdit code): pick
# the bucket of closest aspect ratio from a table built around the base size, scale the image with
# PIL bilinear (antialiased) until it covers the bucket, centre-crop. It is part of the model's input
# interface, reproduced exactly; tests/test_images.py pins the table. The official table exists for
# base sizes 256, 512, 768 and 1024 (the demo uses 1024).
# VAE downsamples 8x and the DiT patches 2x2 latents: image sides must be multiples of 16.
SIDE_MULTIPLE = 16
MAX_ASPECT = 4.0

# What a transparent pixel shows once the image is read: white, as viewers and web pages show a cut-out
# product photo. The model takes RGB only; the run says so when it composites.
TRANSPARENT_BACKGROUND = (255, 255, 255)
TRANSPARENT_BACKGROUND_NAME = "white"
# A centre crop that cuts away more than this share of the (resized) input is worth a warning: within the
# buckets' 4:1 aspect ratios the crop cuts at most a few percent, so more means a strip-shaped image.
CROP_WARNING_SHARE = 0.10
# Modes with an alpha channel (premultiplied RGBa too); "P" and the others carry transparency in info.
ALPHA_MODES = ("RGBA", "RGBa", "LA", "PA")


def open_image(path: str | Path) -> Image.Image:
    """The image in `path` decoded and turned upright by its EXIF orientation, in its own mode (read it
    as RGB with `to_rgb`), or one InputImageError saying why it cannot be used."""
    path = Path(path)
    if path.is_dir():
        raise InputImageError(f"input image {path} is a folder; give an image file")
    if not path.is_file():
        raise InputImageError(f"input image {path} does not exist")
    try:
        with warnings.catch_warnings():
            # PIL only warns between MAX_IMAGE_PIXELS and twice that: decoding it would take minutes and GBs.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                return ImageOps.exif_transpose(img)  # a copy, upright, without the orientation tag
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputImageError(f"{path} has too many pixels to decode safely ({exc}); resize it first") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputImageError(f"{path} is not a readable image ({exc}); pass a PNG, JPEG or WebP file") from exc


def load_image(path: str | Path) -> Image.Image:
    """The image in `path` as RGB, read as `to_rgb` reads it."""
    return to_rgb(open_image(path))[0]


def read_input(image: str | Path | Image.Image) -> tuple[Image.Image, list[str]]:
    """An edit's input, a path or a PIL image, as RGB with what reading it changed that the user should
    know (see `to_rgb`)."""
    if isinstance(image, (str, os.PathLike)):
        image = open_image(image)
    elif not isinstance(image, Image.Image):
        raise InputImageError(f"image must be a path or a PIL image, got {type(image).__name__} {image!r:.60}")
    return to_rgb(image)


def to_rgb(image: Image.Image) -> tuple[Image.Image, list[str]]:
    """`image` upright (EXIF orientation) and in RGB, every mode read by its real range, and the notes
    (for the terminal and the run report) on what changed what the image shows.

    PIL's own `convert("RGB")` clips what does not fit 8 bits: a 16-bit gray ramp becomes white, a
    float image in 0..1 black; and it drops alpha, so cut-out pixels show whatever colour they hid."""
    image = ImageOps.exif_transpose(image)  # a no-op for an image already upright (open_image's)
    if image.mode.startswith("I") or image.mode == "F":
        return _wide_gray_to_rgb(image)
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        return _composite(image)
    try:
        # 1, L, RGB; P without transparency; CMYK by PIL's plain inversion (an ICC profile is not applied);
        # YCbCr, LAB, HSV by PIL's conversions.
        return image.convert("RGB"), []
    except ValueError as exc:
        raise InputImageError(f"images of PIL mode {image.mode} cannot be read ({exc}); save it as an RGB PNG") from None


def _composite(image: Image.Image) -> tuple[Image.Image, list[str]]:
    """Transparent pixels over TRANSPARENT_BACKGROUND (alpha-blended); a note only when some pixel is not opaque."""
    try:
        rgba = image.convert("RGBA")  # a palette's or a single colour's transparency becomes alpha here
    except ValueError as exc:
        raise InputImageError(f"images of PIL mode {image.mode} cannot be read ({exc}); save it as an RGBA PNG") from None
    if rgba.getchannel("A").getextrema()[0] == 255:
        return rgba.convert("RGB"), []
    background = Image.new("RGBA", rgba.size, (*TRANSPARENT_BACKGROUND, 255))
    return Image.alpha_composite(background, rgba).convert("RGB"), [
        f"the input has transparent pixels: they were composited over {TRANSPARENT_BACKGROUND_NAME} "
        f"{TRANSPARENT_BACKGROUND}; flatten it over another colour yourself if that matters"]


def _wide_gray_to_rgb(image: Image.Image) -> tuple[Image.Image, list[str]]:
    """A gray image of more than 8 bits (I;16*, I, F) to RGB by its real range.

    16-bit modes use their type range, 0..65535: a 16-bit file stores its samples over the whole range
    by definition (PNG, TIFF), so a dark image stays dark; stretching its own min..max would change it.
    I (32-bit int) and F (32-bit float) have no range of their own: PIL gives I to 32-bit TIFFs and to
    arrays of any integers, F to float TIFFs (0..1 by convention) and float arrays. They take the
    smallest usual range that holds every value (F: 0..1, then 0..255, then 0..65535; I: 0..255, then
    0..65535), and only values beyond those are stretched from their own min..max, with a note."""
    values = np.asarray(image, dtype=np.float64)
    notes = []
    finite = np.isfinite(values)
    if not finite.all():
        notes.append(f"the input has {int((~finite).sum())} pixels that are not finite (nan, inf): they were read as black")
        values = np.where(finite, values, 0.0)
    if image.mode.startswith("I;16"):
        low, high = 0.0, 65535.0
    else:
        usual = (1.0, 255.0, 65535.0) if image.mode == "F" else (255.0, 65535.0)
        low, high = 0.0, next((top for top in usual if values.min() >= 0 and values.max() <= top), None)
        if high is None:
            low, high = float(values.min()), float(values.max())
            notes.append(f"the input's {image.mode} values span {low:g}..{high:g}, beyond 16 bits: they were "
                         "stretched to black..white")
    gray = np.round((values - low) / max(high - low, 1e-12) * 255).clip(0, 255).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB"), notes


def bucket_table(base_size: int = 1024) -> tuple[tuple[int, int], ...]:
    """The buckets (width, height) for `base_size`, in the official order (ties go to the first).

    Officially: a staircase of sizes on a 16 px grid with at most 256^2 pixels and aspect ratio at
    most 4, scaled by base_size // 256. The staircase is scale invariant, so this walks it directly
    on a base_size / 16 grid, which gives the same table. Base sizes that are not multiples of 256
    (the tiny test models use 64) have no official table; they walk the finest grid the model
    accepts (16 px) with the same rule.
    """
    if base_size < 64 or base_size % SIDE_MULTIPLE:
        raise ResolutionError(f"resolution must be a multiple of {SIDE_MULTIPLE} and at least 64, got {base_size}")
    step = base_size // 16 if base_size % 256 == 0 else SIDE_MULTIPLE
    target = base_size * base_size
    height, width = target // step, step
    table = []
    while height >= step:
        if max(height, width) / min(height, width) <= MAX_ASPECT:
            table.append((width, height))
        if height * (width + step) <= target:
            width += step
        else:
            height -= step
    return tuple(table)


@dataclass(frozen=True)
class BucketFit:
    """How one input size maps onto its bucket: resize to `resized` (covering), then crop at `offset`."""

    source: tuple[int, int]  # (width, height) of the input
    bucket: tuple[int, int]  # (width, height) the model sees
    resized: tuple[int, int]  # (width, height) after the covering resize
    offset: tuple[int, int]  # (left, top) of the centre crop in the resized image
    base_size: int

    def apply(self, image: Image.Image) -> Image.Image:
        """`image` (of size `source`) resized and cropped to the bucket."""
        if image.size != self.source:
            raise ValueError(f"this fit is for a {self.source[0]}x{self.source[1]} image, got {image.size[0]}x{image.size[1]}")
        if self.resized != self.source:
            image = image.resize(self.resized, Image.Resampling.BILINEAR)
        left, top = self.offset
        return image.crop((left, top, left + self.bucket[0], top + self.bucket[1]))

    def map_box(self, box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        """A box (x0, y0, x1, y1) in input pixels -> the same region in bucket pixels, clipped to it.

        Raises InstructionError when the box lies wholly in the part the centre crop removes."""
        sx, sy = self.resized[0] / self.source[0], self.resized[1] / self.source[1]
        left, top = self.offset
        width, height = self.bucket
        x0, y0, x1, y1 = box
        mapped = (min(max(round(x0 * sx) - left, 0), width), min(max(round(y0 * sy) - top, 0), height),
                  min(max(round(x1 * sx) - left, 0), width), min(max(round(y1 * sy) - top, 0), height))
        if mapped[2] <= mapped[0] or mapped[3] <= mapped[1]:
            raise InstructionError(
                f"box {tuple(box)} lies in the part of the {self.source[0]}x{self.source[1]} image that is cropped away "
                f"to fit the {width}x{height} bucket ({self.kept_region()}); draw it inside that region")
        return mapped

    def kept_region(self) -> str:
        """The part of the input the centre crop keeps, in input pixels, as words."""
        sx, sy = self.resized[0] / self.source[0], self.resized[1] / self.source[1]
        (left, top), (width, height) = self.offset, self.bucket
        return f"kept: x {left / sx:.0f}..{(left + width) / sx:.0f}, y {top / sy:.0f}..{(top + height) / sy:.0f}"

    @property
    def cropped_share(self) -> float:
        """The share of the input the centre crop cuts away (0: the whole image is kept)."""
        return 1 - self.bucket[0] * self.bucket[1] / (self.resized[0] * self.resized[1])

    def crop_warning(self) -> Optional[str]:
        """A warning when the crop cuts away more than CROP_WARNING_SHARE of the input, else None."""
        if self.cropped_share <= CROP_WARNING_SHARE:
            return None
        (w, h), (bw, bh) = self.source, self.bucket
        return (f"the {w}x{h} input is centre-cropped to its {bw}x{bh} bucket (aspect ratios up to {MAX_ASPECT:g}:1): "
                f"{self.cropped_share:.1%} of it is cut away, more than {CROP_WARNING_SHARE:.0%} ({self.kept_region()}); "
                f"crop it yourself to the part that matters, within {MAX_ASPECT:g}:1")

    def describe(self) -> str:
        """One line for the run report."""
        (w, h), (bw, bh) = self.source, self.bucket
        crop = "" if self.resized == self.bucket else f", resized to {self.resized[0]}x{self.resized[1]} and centre-cropped"
        return f"{w}x{h} -> {bw}x{bh} (closest-aspect bucket at base {self.base_size}{crop})"


def fit_bucket(width: int, height: int, base_size: int = 1024) -> BucketFit:
    """The official bucket choice and covering resize for a `width` x `height` input."""
    if width < 1 or height < 1:
        raise InputImageError(f"the input image is {width}x{height}; it needs at least one pixel each way")
    aspect = height / width
    # min() keeps the first of equally close buckets, as the official code does.
    bw, bh = min(bucket_table(base_size), key=lambda b: abs(b[1] / b[0] - aspect))
    # The same float expressions as the official code, so ceil() rounds the same way.
    scale = max(bh / height, bw / width)
    rw, rh = math.ceil(width * scale), math.ceil(height * scale)
    # torchvision's centre crop: round() half to even, as Python's round does.
    offset = (int(round((rw - bw) / 2.0)), int(round((rh - bh) / 2.0)))
    return BucketFit(source=(width, height), bucket=(bw, bh), resized=(rw, rh), offset=offset, base_size=base_size)


def resize_to_bucket(image: Image.Image, base_size: int = 1024) -> Image.Image:
    """`image` resized and centre-cropped to its official bucket (see `fit_bucket`)."""
    return fit_bucket(*image.size, base_size).apply(image)


def to_model_tensor(image: Image.Image) -> torch.Tensor:
    """(1, 3, H, W) float32 in [-1, 1]."""
    import torch  # here, not at the top: reading an image must not cost the torch import

    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)


def to_pil(image: torch.Tensor) -> Image.Image:
    """(3, H, W) or (1, 3, H, W) in [0, 1] -> RGB image."""
    if image.dim() == 4:
        image = image[0]
    import torch

    array = (image.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)


def encode_image(image: Image.Image, suffix: str = ".png") -> bytes:
    """The file bytes of `image` in the format its file name's `suffix` says (PNG when unknown),
    encoded in memory: their size is known before the disk is asked for it."""
    buffer = io.BytesIO()
    image.save(buffer, format=Image.registered_extensions().get(suffix.lower(), "PNG"))
    return buffer.getvalue()


def save_image_atomic(image: Image.Image, path: str | Path, overwrite: bool = False) -> Path:
    """Save to a temporary name in the same folder, then rename: a crash never leaves half a file."""
    path = Path(path)
    check_output_path(path, overwrite)
    suffix = path.suffix or ".png"
    return write_bytes_atomic(path, encode_image(image, suffix), prefix=f".{path.stem}.", suffix=suffix)
