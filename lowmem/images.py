"""Image I/O for the pipeline: reading with clear errors, bucket resizing, tensors, atomic saving."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from lowmem.errors import InputImageError
from lowmem.paths import check_output_path

# VAE downsamples 8x and the DiT patches 2x2 latents: image sides must be multiples of 16.
SIDE_MULTIPLE = 16


def load_image(path: str | Path) -> Image.Image:
    """An RGB image from `path`, or one InputImageError saying why it cannot be used."""
    path = Path(path)
    if not path.is_file():
        raise InputImageError(f"input image {path} does not exist")
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise InputImageError(f"{path} is not a readable image ({exc}); pass a PNG, JPEG or WebP file") from exc


def bucket_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """(w, h) with about resolution^2 pixels, the input's aspect ratio, sides multiples of 16."""
    scale = (resolution * resolution / (width * height)) ** 0.5
    w = max(SIDE_MULTIPLE, round(width * scale / SIDE_MULTIPLE) * SIDE_MULTIPLE)
    h = max(SIDE_MULTIPLE, round(height * scale / SIDE_MULTIPLE) * SIDE_MULTIPLE)
    return w, h


def resize_to_bucket(image: Image.Image, resolution: int) -> Image.Image:
    size = bucket_size(*image.size, resolution)
    return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)


def to_model_tensor(image: Image.Image) -> torch.Tensor:
    """(1, 3, H, W) float32 in [-1, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)


def to_pil(image: torch.Tensor) -> Image.Image:
    """(3, H, W) or (1, 3, H, W) in [0, 1] -> RGB image."""
    if image.dim() == 4:
        image = image[0]
    array = (image.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)


def save_image_atomic(image: Image.Image, path: str | Path, overwrite: bool = False) -> Path:
    """Save to a temporary name in the same folder, then rename: a crash never leaves half a file."""
    path = Path(path)
    check_output_path(path, overwrite)
    suffix = path.suffix or ".png"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        image.save(tmp, format=Image.registered_extensions().get(suffix.lower(), "PNG"))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
