"""`SpatialEditPipeline.edit(on_progress=...)`: called as each phase starts and after each denoising
step of either loop (plain, SpotEdit), and raising from it stops the edit (a server's cancel)."""

from __future__ import annotations

import pytest

from lowmem.spotedit import SpotConfig

STEPS = 3
SPOT = SpotConfig(threshold="auto", dilation=0, initial_steps=1, reset_steps=(), reference_steps=None)


@pytest.mark.parametrize("spot", [None, SPOT], ids=["plain loop", "SpotEdit loop"])
def test_each_phase_and_each_step_is_reported_in_order(tiny_pipeline, scene, spot):
    calls = []
    tiny_pipeline.edit(scene, "rotate the object", steps=STEPS, guidance=1.0, resolution=64, progress=False, spot=spot,
                       on_progress=lambda phase, done: calls.append((phase, done)))
    assert calls == [("encode prompt", 0), ("encode image", 0), ("denoise", 0),
                     *[("denoise", done) for done in range(1, STEPS + 1)], ("decode", STEPS)]


class Stop(Exception):
    pass


@pytest.mark.parametrize("spot", [None, SPOT], ids=["plain loop", "SpotEdit loop"])
def test_raising_from_it_stops_the_edit_at_that_step(tiny_pipeline, scene, spot):
    calls = []

    def stop_after_two_steps(phase: str, done: int) -> None:
        calls.append((phase, done))
        if done == 2:
            raise Stop()

    with pytest.raises(Stop):
        tiny_pipeline.edit(scene, "rotate the object", steps=10, guidance=1.0, resolution=64, progress=False,
                           spot=spot, on_progress=stop_after_two_steps)
    assert calls[-1] == ("denoise", 2) and ("decode", 10) not in calls
