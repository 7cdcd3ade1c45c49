"""Seeded 3D scenes rendered to (source, instruction, target) pairs for every geometric edit kind.

The tiny SpatialEdit is trained on these, and `bench/quality.py` scores it against them. A scene is
one block (a box whose six faces have distinct colours; the front also carries a white panel, so
the front is recognisable from any side) standing on a plain or checkered ground, seen by a
pinhole camera orbiting the origin. Each edit changes exactly the quantity its instruction names:

- rotate: the block turns about its vertical axis until the named view faces the camera;
- move: the block slides along the ground into the red box (the box is drawn on the model input
  by `EditInstruction.prepare_image`, as at inference; the rendered source has no box);
- scale: the block grows or shrinks about its footprint centre;
- camera: the camera orbits (yaw: azimuth, positive to the camera's right; pitch: elevation,
  positive upward) around the scene's centre;
- zoom: the focal length changes (in: x1.6, out: /1.6).

Rendering is numpy + PIL only: faces are projected, back faces culled, drawn at 4x and box-filtered
down, so edges are anti-aliased. Every random choice comes from one `numpy.random.Generator`
seeded with the pair's seed, so the same seed gives byte-identical images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw

from lowmem import instructions
from lowmem.instructions import EditInstruction

EDIT_KINDS = ("rotate", "move", "scale", "camera", "zoom")
# Object yaw, relative to the camera's azimuth, that shows each canonical view. The object's own
# right side is its local -x (a block facing the viewer has its right on the viewer's left).
VIEW_YAWS = {
    "front": 0.0, "front right": 45.0, "right": 90.0, "rear right": 135.0,
    "rear": 180.0, "rear left": -135.0, "left": -90.0, "front left": -45.0,
}
FACES = ("front", "rear", "left", "right", "top")
# Local outward normals of the block's faces (x right of the viewer facing the front, y up, z front).
FACE_NORMALS = {
    "front": (0.0, 0.0, 1.0), "rear": (0.0, 0.0, -1.0), "left": (1.0, 0.0, 0.0),
    "right": (-1.0, 0.0, 0.0), "top": (0.0, 1.0, 0.0),
}
FACE_COLOURS = {
    "front": (205, 45, 40), "rear": (40, 70, 200), "left": (45, 160, 60),
    "right": (230, 190, 30), "top": (235, 235, 230),
}
FRONT_PANEL = (250, 250, 250)
SCALE_FACTORS = (0.5, 0.75, 1.5, 2.0)
ZOOM_FACTOR = 1.6
OBJECT_NAME = "block"
# Seeds from here on are held out: training renders pairs from seed * 1,000,000 + i (seeds < 1000).
HELD_OUT_SEEDS = 1_000_000_000
_SUPERSAMPLE = 4
_SKY = (196, 212, 232)
_GROUND_HALF = 3.0  # the ground is a square of +-3 units around the origin
_LOOK_AT = np.array([0.0, 0.35, 0.0])


@dataclass(frozen=True)
class Camera:
    yaw: float  # azimuth in degrees around the vertical axis
    pitch: float  # elevation in degrees above the ground
    distance: float
    focal: float  # focal length as a fraction of the image width

    def position(self) -> np.ndarray:
        yaw, pitch = math.radians(self.yaw), math.radians(self.pitch)
        offset = np.array([math.cos(pitch) * math.sin(yaw), math.sin(pitch), math.cos(pitch) * math.cos(yaw)])
        return _LOOK_AT + self.distance * offset


@dataclass(frozen=True)
class Block:
    x: float  # footprint centre on the ground
    z: float
    yaw: float  # degrees; 0 faces +z
    size: tuple[float, float, float]  # width, height, depth at scale 1
    scale: float = 1.0


@dataclass(frozen=True)
class Scene:
    block: Block
    camera: Camera
    ground: tuple[tuple[int, int, int], tuple[int, int, int]]  # two equal colours: plain ground
    tiles: int = 3  # large checks: a tiny VAE keeps them (at 6 per side it blurred them away)


@dataclass(frozen=True)
class Rendering:
    image: Image.Image  # RGB
    labels: np.ndarray  # (H, W) uint8: 0 background, 1 + FACES.index(face) where that face is seen

    @property
    def mask(self) -> np.ndarray:
        """(H, W) bool: where the block is."""
        return self.labels > 0

    def centroid(self) -> tuple[float, float]:
        """(x, y) pixel centre of the block's silhouette."""
        ys, xs = np.nonzero(self.mask)
        return float(xs.mean()), float(ys.mean())

    def face_area(self, face: str) -> int:
        return int((self.labels == 1 + FACES.index(face)).sum())


@dataclass(frozen=True)
class EditPair:
    kind: str
    source: Rendering
    instruction: EditInstruction
    target: Rendering
    source_scene: Scene
    target_scene: Scene

    @property
    def model_input(self) -> Image.Image:
        """What the model sees: the source with the red box when the edit has one (as at inference)."""
        return self.instruction.prepare_image(self.source.image)


class _Projector:
    def __init__(self, camera: Camera, size: int):
        self.size = size
        self.eye = camera.position()
        forward = _LOOK_AT - self.eye
        self.forward = forward / np.linalg.norm(forward)
        right = np.cross(self.forward, np.array([0.0, 1.0, 0.0]))
        self.right = right / np.linalg.norm(right)
        self.up = np.cross(self.right, self.forward)
        self.focal = camera.focal * size

    def __call__(self, points: np.ndarray) -> list[tuple[float, float]]:
        d = points - self.eye
        x, y, z = d @ self.right, d @ self.up, np.maximum(d @ self.forward, 1e-3)
        half = self.size / 2
        return list(zip((half + self.focal * x / z).tolist(), (half - self.focal * y / z).tolist()))


def _rotation(yaw_degrees: float) -> np.ndarray:
    """Rotation about +y by `yaw_degrees` (turns +z toward +x)."""
    a = math.radians(yaw_degrees)
    return np.array([[math.cos(a), 0.0, math.sin(a)], [0.0, 1.0, 0.0], [-math.sin(a), 0.0, math.cos(a)]])


def _face_quads(block: Block) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """face -> (4 world corners in drawing order, world outward normal)."""
    w, h, d = (s * block.scale / 2 for s in block.size)
    rot = _rotation(block.yaw)
    centre = np.array([block.x, h, block.z])
    quads = {}
    for face, normal in FACE_NORMALS.items():
        n = np.array(normal)
        # Two in-face axes: any unit vector not parallel to n, and their cross product.
        a = np.array([0.0, 1.0, 0.0]) if abs(n[1]) < 0.5 else np.array([1.0, 0.0, 0.0])
        b = np.cross(n, a)
        half = np.array([w, h, d])
        corners = [n * half + (sa * a + sb * b) * half for sa, sb in ((1, 1), (1, -1), (-1, -1), (-1, 1))]
        quads[face] = (np.array([centre + rot @ c for c in corners]), rot @ n)
    return quads


def render(scene: Scene, size: int = 64) -> Rendering:
    """Draw `scene` as a `size` x `size` image, with its per-pixel face labels."""
    big = size * _SUPERSAMPLE
    project = _Projector(scene.camera, big)
    image = Image.new("RGB", (big, big), _SKY)
    labels = Image.new("L", (big, big), 0)
    draw, label_draw = ImageDraw.Draw(image), ImageDraw.Draw(labels)
    edge = np.linspace(-_GROUND_HALF, _GROUND_HALF, scene.tiles + 1)
    for i in range(scene.tiles):
        for j in range(scene.tiles):
            quad = np.array([[edge[i], 0, edge[j]], [edge[i + 1], 0, edge[j]], [edge[i + 1], 0, edge[j + 1]], [edge[i], 0, edge[j + 1]]])
            draw.polygon(project(quad), fill=scene.ground[(i + j) % 2])
    visible = [(face, corners) for face, (corners, normal) in _face_quads(scene.block).items()
               if normal @ (project.eye - corners.mean(axis=0)) > 1e-9]
    # A convex block: its front-facing faces never overlap, so no depth sort is needed.
    for face, corners in visible:
        points = project(corners)
        draw.polygon(points, fill=FACE_COLOURS[face])
        label_draw.polygon(points, fill=1 + FACES.index(face))
        if face == "front":  # a white panel in the middle of the front: the front reads from any side
            centre = corners.mean(axis=0)
            draw.polygon(project(centre + 0.45 * (corners - centre)), fill=FRONT_PANEL)
    small = image.resize((size, size), Image.Resampling.BOX)
    small_labels = np.asarray(labels.resize((size, size), Image.Resampling.NEAREST))
    return Rendering(image=small, labels=small_labels)


def empty_view(scene: Scene, size: int = 64) -> Image.Image:
    """`scene` rendered without its block: what an edit's output shows where there is no object."""
    return render(replace(scene, block=replace(scene.block, scale=1e-6)), size).image


def random_scene(rng: np.random.Generator) -> Scene:
    """A block of random proportions somewhere near the centre, seen from a random orbit."""
    camera = Camera(yaw=float(rng.uniform(-180, 180)), pitch=float(rng.uniform(20, 45)), distance=6.0,
                    focal=float(rng.uniform(1.3, 1.7)))
    block = Block(x=float(rng.uniform(-0.6, 0.6)), z=float(rng.uniform(-0.6, 0.6)), yaw=float(rng.uniform(-180, 180)),
                  size=(float(rng.uniform(1.0, 1.4)), float(rng.uniform(0.7, 1.1)), float(rng.uniform(0.5, 0.8))),
                  scale=float(rng.uniform(0.8, 1.2)))
    base = rng.integers(60, 170, size=3)
    if rng.random() < 0.5:
        ground = (tuple(int(v) for v in base),) * 2
    else:
        ground = (tuple(int(v) for v in base), tuple(int(v) for v in np.clip(base + rng.integers(30, 60), 0, 255)))
    return Scene(block=block, camera=camera, ground=ground)  # type: ignore[arg-type]


def _box_around(rendering: Rendering, margin: int = 2) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(rendering.mask)
    h, w = rendering.labels.shape
    return (max(int(xs.min()) - margin, 0), max(int(ys.min()) - margin, 0),
            min(int(xs.max()) + 1 + margin, w), min(int(ys.max()) + 1 + margin, h))


def _edit(kind: str, scene: Scene, rng: np.random.Generator, size: int) -> tuple[Scene, Scene, EditInstruction]:
    """(source scene, target scene, instruction) for one edit of `kind`."""
    block, camera = scene.block, scene.camera
    if kind == "rotate":
        view, start = rng.choice(len(VIEW_YAWS), size=2, replace=False)
        views = list(VIEW_YAWS)
        source = replace(scene, block=replace(block, yaw=camera.yaw + VIEW_YAWS[views[start]]))
        target = replace(scene, block=replace(block, yaw=camera.yaw + VIEW_YAWS[views[view]]))
        return source, target, instructions.rotate(OBJECT_NAME, views[view])
    if kind == "move":
        while True:
            x, z = rng.uniform(-1.3, 1.3, size=2)
            if math.hypot(x - block.x, z - block.z) > 1.0:
                break
        target = replace(scene, block=replace(block, x=float(x), z=float(z)))
        box = _box_around(render(target, size))
        return scene, target, instructions.move_to_box(OBJECT_NAME, box, (size, size))
    if kind == "scale":
        factor = float(rng.choice(SCALE_FACTORS))
        low, high = max(0.5, 0.5 / factor), min(1.6, 1.6 / factor)
        start = float(rng.uniform(low, high))
        source = replace(scene, block=replace(block, scale=start))
        target = replace(scene, block=replace(block, scale=start * factor))
        return source, target, instructions.scale(OBJECT_NAME, factor)
    if kind == "camera":
        while True:
            yaw = float(rng.choice(instructions.ALLOWED_YAWS))
            pitch = float(rng.choice(instructions.ALLOWED_PITCHES))
            if yaw or pitch:
                break
        elevation = float(rng.uniform(max(10.0, 10.0 - pitch), min(70.0, 70.0 - pitch)))
        source = replace(scene, camera=replace(camera, pitch=elevation))
        target = replace(scene, camera=replace(camera, pitch=elevation + pitch, yaw=camera.yaw + yaw))
        return source, target, instructions.camera(yaw, pitch)
    if kind == "zoom":
        direction = "in" if rng.random() < 0.5 else "out"
        factor = ZOOM_FACTOR if direction == "in" else 1 / ZOOM_FACTOR
        focal = float(rng.uniform(1.0, 1.5)) if direction == "in" else float(rng.uniform(1.6, 2.4))
        source = replace(scene, camera=replace(camera, focal=focal))
        target = replace(scene, camera=replace(camera, focal=focal * factor))
        return source, target, instructions.zoom(direction)
    raise ValueError(f"unknown edit kind {kind!r}; choose one of {', '.join(EDIT_KINDS)}")


def render_pair(seed: int, kind: Optional[str] = None, size: int = 64) -> EditPair:
    """The pair for `seed`: a random scene and an edit of `kind` (drawn from the seed when None)."""
    if size < 16 or size % 8:
        raise ValueError(f"scene size must be a multiple of 8 and at least 16, got {size}")
    rng = np.random.default_rng(seed)
    kind = kind if kind is not None else EDIT_KINDS[int(rng.integers(len(EDIT_KINDS)))]
    source_scene, target_scene, instruction = _edit(kind, random_scene(rng), rng, size)
    return EditPair(kind=kind, source=render(source_scene, size), instruction=instruction,
                    target=render(target_scene, size), source_scene=source_scene, target_scene=target_scene)
