"""`lowmem ui` end to end through its API (gradio_client), on the shipped tiny model: every edit kind
returns an image and a run report; bad input gets one message and the server serves the next request;
a failed or cancelled edit gives back what it placed; edits run one at a time, the next one queued."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio", reason="`lowmem ui` needs the ui extra: pip install 'lowmem[ui]'")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402
from ui_server import bomb_file, running_server, scene_file  # noqa: E402

SAMPLING = {"steps": 4, "guidance": 1.0, "seed": 0, "resolution": 64, "spot": "auto"}
EDITS = {  # api name -> the tab's own fields
    "rotate": {"object_name": "block", "view": "rear left"},
    "move": {"object_name": "block", "x0": 8, "y0": 30, "x1": 27, "y1": 62},
    "scale": {"object_name": "block", "factor": 1.5},
    "camera": {"yaw": 45, "pitch": -15, "zoom": "none"},
    "zoom": {"yaw": 0, "pitch": 0, "zoom": "in"},  # the camera tab, zooming
}


@pytest.fixture(scope="module")
def server():
    with running_server() as running:
        yield running


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return scene_file(tmp_path_factory.mktemp("ui"))


def edit(client: Client, kind: str, image, **changes):
    fields = {**EDITS[kind], **SAMPLING, **changes}
    return client.predict(image, *fields.values(), api_name="/camera" if kind == "zoom" else f"/{kind}")


@pytest.mark.parametrize("kind", EDITS)
def test_each_edit_kind_returns_an_image_of_the_input_size_and_a_report(server, scene, kind):
    url, _ = server
    result, region, report, status = edit(Client(url, verbose=False), kind, handle_file(str(scene)))
    assert Image.open(result).size == (64, 64)
    assert Image.open(region).size == (64, 64)  # SpotEdit is on for the tiny model: its region is shown
    assert "s through the page" in report and "denoise" in report and "bytes streamed" in report
    assert "peak host RSS" in report
    assert status.startswith("Done: ")


def test_the_move_box_is_drawn_where_the_model_sees_it(server, scene):
    url, service = server
    seen = []
    real_edit = service.pipe.edit
    service.pipe.edit = lambda image, instruction, **kw: seen.append(instruction) or real_edit(image, instruction, **kw)
    try:
        edit(Client(url, verbose=False), "move", handle_file(str(scene)))
    finally:
        del service.pipe.edit
    assert seen[0].box == (8, 30, 27, 62) and seen[0].text == "Move the block into the red box."


BAD_INPUTS = {  # case -> (changes to a good rotate or move request, what the page says)
    "no image": ("rotate", {"image": None}, "upload an image first"),
    "not an image": ("rotate", {"image": "text"}, "not-an-image.png is not a readable image"),
    "a huge image": ("rotate", {"image": "bomb"}, "huge.png has too many pixels to decode safely"),
    "an empty object name": ("rotate", {"object_name": "  "}, "name the object to edit"),
    "a box of zero area": ("move", {"x1": 8}, r"box \(8, 30, 8, 62\) is empty"),
    "no box drawn": ("move", {"x0": None}, "drag the target box on the image"),
    "a box outside the image": ("move", {"x1": 90}, "reaches outside the 64x64 input image"),
    "zoom and orbit at once": ("zoom", {"yaw": 90}, "not both in one edit"),
    "a yaw off the grid": ("camera", {"yaw": 30}, "camera yaw 30 was not trained"),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_gets_one_message_and_the_server_serves_the_next_request(server, scene, tmp_path, case):
    url, _ = server
    client = Client(url, verbose=False)
    kind, changes, message = BAD_INPUTS[case]
    image = changes.pop("image", "scene")
    if image == "text":
        (tmp_path / "not-an-image.png").write_text("this is text")
        image = handle_file(str(tmp_path / "not-an-image.png"))
    elif image == "bomb":
        image = handle_file(str(bomb_file(tmp_path)))
    elif image == "scene":
        image = handle_file(str(scene))
    with pytest.raises(AppError, match=message) as refused:
        edit(client, kind, image, **changes)
    assert "\n" not in str(refused.value) and str(tmp_path) not in str(refused.value)
    result, *_ = edit(client, "rotate", handle_file(str(scene)))
    assert Image.open(result).size == (64, 64)


def placed(service) -> tuple:
    """What the device holds between edits: the ledger, and the DiT's device part with its slots
    (kept from edit to edit while the conditioner stays resident)."""
    runtime = service.pipe.offload
    slots = runtime.dit.streamer.slots
    return dict(runtime.ledger.items), runtime.dit.placed, None if slots is None else [id(slot) for slot in slots]


def test_a_failing_edit_gives_back_what_it_placed_and_the_next_edit_is_unchanged(server, scene):
    url, service = server
    client = Client(url, verbose=False)
    expected = np.asarray(Image.open(edit(client, "rotate", handle_file(str(scene)))[0]))
    before = placed(service)
    block = service.pipe.dit.double_blocks[service.pipe.offload.dit.streamer.streamed[-1]]

    def broken(*args, **kwargs):
        raise RuntimeError("a fault inside a streamed DiT block")

    block.forward = broken
    try:
        with pytest.raises(AppError):
            edit(client, "rotate", handle_file(str(scene)))
    finally:
        del block.forward
    assert placed(service) == before
    assert np.array_equal(np.asarray(Image.open(edit(client, "rotate", handle_file(str(scene)))[0])), expected)


def test_cancel_stops_the_running_edit_and_the_queued_one_runs_next(server, scene):
    url, service = server
    first, second = Client(url, verbose=False), Client(url, verbose=False)
    edit(first, "rotate", handle_file(str(scene)))  # what an edit that succeeded leaves placed
    before = placed(service)
    block = service.pipe.dit.double_blocks[0]
    real_forward = block.forward

    def slow(*args, **kwargs):  # 100 steps of at least 50 ms: the edit is still running when cancelled
        time.sleep(0.05)
        return real_forward(*args, **kwargs)

    block.forward = slow
    try:
        running = first.submit(handle_file(str(scene)), *{**EDITS["rotate"], **SAMPLING, "steps": 100}.values(),
                               api_name="/rotate")
        deadline = time.monotonic() + 30
        while not service.device_lock.locked() and time.monotonic() < deadline:
            time.sleep(0.05)
        waiting = second.submit(handle_file(str(scene)), *{**EDITS["scale"], **SAMPLING}.values(), api_name="/scale")
        while waiting.status().code.name != "IN_QUEUE" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert waiting.status().code.name == "IN_QUEUE" and service.device_lock.locked()
        assert second.predict(api_name="/cancel") == "No edit of yours was running."  # one can cancel only one's own
        start = time.monotonic()
        assert first.predict(api_name="/cancel") == "Cancelled 1 edit(s): the device was given back."
        result, _, report, _ = waiting.result(timeout=30)
        assert time.monotonic() - start < 5, "the cancelled edit ran on"
    finally:
        block.forward = real_forward
    assert Image.open(result).size == (64, 64) and "denoise" in report
    with pytest.raises(AppError, match="cancelled in denoise; the device was given back"):
        running.result(timeout=10)
    assert placed(service) == before


def test_requests_run_one_at_a_time_on_the_device(server, scene):
    url, service = server
    running, most = [0], [0]
    real_edit = service.pipe.edit
    lock = threading.Lock()

    def counted(*args, **kwargs):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            return real_edit(*args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    service.pipe.edit = counted
    try:
        jobs = [Client(url, verbose=False).submit(handle_file(str(scene)), *{**EDITS[kind], **SAMPLING}.values(),
                                                  api_name=f"/{kind}") for kind in ("rotate", "scale", "camera")]
        assert all(Image.open(job.result(timeout=60)[0]).size == (64, 64) for job in jobs)
    finally:
        del service.pipe.edit
    assert most[0] == 1


def test_lowmem_help_stays_light_and_ui_binds_to_this_machine_by_default():
    code = ("import sys; from lowmem.cli.dispatch import build_parser; import lowmem.cli.ui; "
            "args = build_parser('ui').parse_args(['ui']); "
            "print('gradio' in sys.modules, args.host, args.port, args.share)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "127.0.0.1", "7860", "False"]
