"""The scene renderer: seeded pairs whose targets differ from their sources exactly as the edit says."""

from __future__ import annotations

import numpy as np
import pytest

from lowmem import instructions
from lowmem.tiny.scenes import EDIT_KINDS, FACES, VIEW_YAWS, render_pair


def _pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_same_seed_same_pair_and_seeds_differ():
    a, b, c = render_pair(7, size=64), render_pair(7, size=64), render_pair(8, size=64)
    assert a.instruction == b.instruction
    assert np.array_equal(_pixels(a.source.image), _pixels(b.source.image))
    assert np.array_equal(_pixels(a.target.image), _pixels(b.target.image))
    assert not np.array_equal(_pixels(a.source.image), _pixels(c.source.image))


@pytest.mark.parametrize("kind", EDIT_KINDS)
def test_every_kind_renders_a_changed_target_with_the_official_prompt(kind):
    for seed in range(4):
        pair = render_pair(seed, kind, size=64)
        assert pair.kind == kind
        assert pair.source.image.size == pair.target.image.size == (64, 64)
        assert pair.source.mask.sum() > 20 and pair.target.mask.sum() > 20, "the block left the picture"
        assert np.abs(_pixels(pair.source.image) - _pixels(pair.target.image)).mean() > 1.0
        text = pair.instruction.text
        expected_start = {"rotate": "Rotate the block", "move": "Move the block into the red box.", "scale": "Scale the block",
                          "camera": "Move the camera. Camera rotation", "zoom": "Move the camera. Camera zoom"}[kind]
        assert text.startswith(expected_start), text


def test_move_lands_the_block_in_the_red_box_drawn_on_the_input():
    for seed in range(6):
        pair = render_pair(seed, "move", size=64)
        x0, y0, x1, y1 = pair.instruction.box
        cx, cy = pair.target.centroid()
        assert x0 <= cx <= x1 and y0 <= cy <= y1
        sx, sy = pair.source.centroid()
        assert not (x0 <= sx <= x1 and y0 <= sy <= y1) or np.hypot(cx - sx, cy - sy) > 3
        red = np.all(_pixels(pair.model_input) == (255, 0, 0), axis=-1)
        assert red[y0, x0:x1].all(), "the model input carries the red box outline"
        assert not np.all(_pixels(pair.source.image) == (255, 0, 0), axis=-1).any(), "the rendered source has no box"


@pytest.mark.parametrize("view", list(VIEW_YAWS))
def test_rotate_shows_the_named_view(view):
    wanted = set(view.split())
    for seed in range(3):
        pair = render_pair(seed, "rotate", size=64)
        if not pair.instruction.text.endswith(f"the {view} side view."):
            continue
        sides = {face: pair.target.face_area(face) for face in FACES if face != "top"}
        seen = {face for face, area in sides.items() if area > 0}
        assert wanted <= seen
        assert max(sides, key=sides.get) in wanted
        opposite = {"front": "rear", "rear": "front", "left": "right", "right": "left"}
        assert not {opposite[w] for w in wanted} & seen


def test_rotate_covers_all_views_over_seeds():
    views = {render_pair(seed, "rotate", size=32).instruction.text for seed in range(60)}
    assert views == {instructions.rotate("block", v).text for v in VIEW_YAWS}


def test_scale_and_zoom_change_the_block_size_as_told():
    for seed in range(6):
        pair = render_pair(seed, "scale", size=64)
        factor = float(pair.instruction.text.split("factor of ")[1].split(",")[0])
        ratio = pair.target.mask.sum() / pair.source.mask.sum()
        assert 0.5 * factor**2 < ratio < 1.6 * factor**2
        zoom = render_pair(seed, "zoom", size=64)
        grew = zoom.target.mask.sum() > zoom.source.mask.sum()
        assert grew == ("zoom: in" in zoom.instruction.text)


def test_camera_pitch_up_shows_more_top_and_a_half_turn_shows_the_other_side():
    checked_pitch = checked_turn = 0
    for seed in range(80):
        pair = render_pair(seed, "camera", size=64)
        yaw, pitch = (float(part.split("°")[0]) for part in pair.instruction.text.split("Yaw ")[1].split(", Pitch "))
        if yaw == 0 and abs(pitch) >= 30:
            top_share = [r.face_area("top") / r.mask.sum() for r in (pair.source, pair.target)]
            assert (top_share[1] > top_share[0]) == (pitch > 0)
            checked_pitch += 1
        if abs(yaw) == 180 and pitch == 0:
            opposite = {"front": "rear", "rear": "front", "left": "right", "right": "left"}
            largest = [max(opposite, key=r.face_area) for r in (pair.source, pair.target)]
            assert largest[1] == opposite[largest[0]]
            checked_turn += 1
    assert checked_pitch and checked_turn


def test_unknown_kind_and_bad_size_are_clear_errors():
    with pytest.raises(ValueError, match="unknown edit kind"):
        render_pair(0, "paint")
    with pytest.raises(ValueError, match="multiple of 8"):
        render_pair(0, size=60)
