"""Image I/O for the pipeline: reading with clear errors, the official input buckets, tensors, atomic saving."""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

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


def load_image(path: str | Path) -> Image.Image:
    """An RGB image from `path`, or one InputImageError saying why it cannot be used."""
    path = Path(path)
    if not path.is_file():
        raise InputImageError(f"input image {path} does not exist")
    try:
        with warnings.catch_warnings():
            # PIL only warns between MAX_IMAGE_PIXELS and twice that: decoding it would take minutes and GBs.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                return img.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputImageError(f"{path} has too many pixels to decode safely ({exc}); resize it first") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputImageError(f"{path} is not a readable image ({exc}); pass a PNG, JPEG or WebP file") from exc


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
                f"to fit the {width}x{height} bucket (kept: x {left / sx:.0f}..{(left + width) / sx:.0f}, "
                f"y {top / sy:.0f}..{(top + height) / sy:.0f}); draw it inside that region")
        return mapped

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
