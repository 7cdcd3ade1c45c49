"""Scoring an edit of a rendered scene against its ground truth: image metrics and "did it do what was asked".

Used by `bench/quality.py` (the quality table of a model trained by `lowmem train-tiny`).
The object is found by comparing an image with the same view rendered without the block
(`scenes.empty_view`), passed through the model's VAE first when one is given: a tiny VAE blurs a
checkered ground, and comparing against the sharp empty view would count that blur as object.

An edit succeeds when the drawn object is where the target's is (IoU of the silhouettes >= 0.5,
area within 2x, so a smear or an empty image never passes) and, per kind:
- move: the object's centre lies inside the red box, and it overlaps where it should be more than
  where it was;
- rotate: the shares of the face colours on it are at most half as far from the target's as the
  source's were (the named side turned into view);
- scale, zoom: its area moved at least halfway (in log scale) from the source's to the target's;
- camera: the image is closer to the target (PSNR) than the unedited source is.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image

from lowmem.common.image_metrics import psnr
from lowmem.tiny.scenes import FACE_COLOURS, EditPair, Scene, empty_view

OBJECT_THRESHOLD = 40  # a channel differing by more than this from the empty view is object
PLAUSIBLE_AREA = 2.0
PLACED_IOU = 0.5
TURNED = 0.5

Roundtrip = Callable[[Image.Image], Image.Image]  # what the model's VAE makes of an image


def object_pixels(image: Image.Image, scene: Scene, roundtrip: Optional[Roundtrip] = None) -> np.ndarray:
    """(H, W) bool: where `image` shows an object that `scene` without its block does not."""
    empty = empty_view(scene, image.width)
    if roundtrip is not None:
        empty = roundtrip(empty)
    difference = np.abs(np.asarray(image.convert("RGB"), dtype=np.int16) - np.asarray(empty, dtype=np.int16))
    return difference.max(axis=-1) > OBJECT_THRESHOLD


def vae_roundtrip(vae) -> Roundtrip:
    """Encode (posterior mean) and decode through `vae` (a lowmem WanVAE)."""
    from lowmem.common.images import to_model_tensor, to_pil

    def run(image: Image.Image) -> Image.Image:
        with torch.inference_mode():
            latents = vae.encode(to_model_tensor(image))  # no generator: the posterior mean
            return to_pil(vae.decode(latents))

    return run


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 0.0


def face_shares(image: Image.Image, mask: np.ndarray) -> np.ndarray:
    """Share of `mask`'s pixels nearest in colour to each face (FACE_COLOURS order): what side shows."""
    colours = np.array(list(FACE_COLOURS.values()), dtype=np.float32)
    pixels = np.asarray(image.convert("RGB"))[mask].astype(np.float32)
    if not len(pixels):
        return np.zeros(len(colours))
    nearest = np.argmin(((pixels[:, None] - colours[None]) ** 2).sum(-1), axis=1)
    return np.bincount(nearest, minlength=len(colours)) / len(pixels)


def edit_succeeded(pair: EditPair, output: Image.Image, roundtrip: Optional[Roundtrip] = None) -> bool:
    """Whether `output` did what `pair`'s instruction asks (see the module docstring)."""
    drawn = object_pixels(output, pair.target_scene, roundtrip)
    target, source = pair.target.mask, pair.source.mask
    area = max(int(drawn.sum()), 1)
    if not 1 / PLAUSIBLE_AREA <= area / target.sum() <= PLAUSIBLE_AREA or _iou(drawn, target) < PLACED_IOU:
        return False
    if pair.kind == "move":
        ys, xs = np.nonzero(drawn)
        x0, y0, x1, y1 = pair.instruction.box
        return bool(x0 <= xs.mean() <= x1 and y0 <= ys.mean() <= y1) and _iou(drawn, target) > _iou(drawn, source)
    if pair.kind == "rotate":
        wanted = face_shares(pair.target.image, target)
        before = np.abs(face_shares(pair.source.image, source) - wanted).sum()
        return bool(np.abs(face_shares(output, drawn) - wanted).sum() < TURNED * before)
    if pair.kind in ("scale", "zoom"):
        wanted = math.log(target.sum() / source.sum())
        return math.log(area / source.sum()) / wanted >= 0.5
    output_psnr = psnr(np.asarray(output.convert("RGB")), np.asarray(pair.target.image))
    return output_psnr > psnr(np.asarray(pair.source.image), np.asarray(pair.target.image))
