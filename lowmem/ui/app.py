"""The page: an input image, one tab per edit kind, advanced settings, and the results.

Each tab's Run button is its own API endpoint (/rotate, /move, /scale, /camera) in one concurrency
group, so edits run one at a time and the queue shows each waiting request its place; /cancel stops
the caller's edit. Every `LowmemError` reaches the page as one message (a gradio Error).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Callable, Optional

import gradio as gr
from PIL import Image

from lowmem import instructions
from lowmem.common.validation import RESOLUTION_MULTIPLE, RESOLUTION_RANGE
from lowmem.errors import LowmemError
from lowmem.instructions import ALLOWED_PITCHES, ALLOWED_YAWS, PITCH_STEP, SCALE_RANGE, VIEWS, YAW_STEP, EditInstruction
from lowmem.ui import forms, pictures
from lowmem.ui.components import ImageUpload, box_canvas
from lowmem.ui.service import SPOT_CHOICES, EditService

DEVICE_QUEUE = "device"  # the concurrency group of every edit
MAX_PAGE_STEPS = 100
IMAGE_HEIGHT = 256  # pixels on the page
# Small images (the tiny model's are 64 px) fill their frame, pixels kept sharp, instead of a thumbnail.
PAGE_CSS = """
#input-image img, #box-preview img, #result img, #region img {
    width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated;
}
"""
PREVIEW_OBJECT = "object"  # the move preview checks the box alone; the name is checked when the edit runs


@dataclass(frozen=True)
class PageDefaults:
    """How the loaded model is sampled unless the page says otherwise."""

    steps: int
    guidance: float
    resolution: int  # also the largest the page offers: what the server planned for
    object_name: str
    spot: forms.SpotSettings
    about: str  # the model, its plan and what "auto" settings decided, shown under Advanced settings


def page_errors(handler: Callable) -> Callable:
    """`handler` whose LowmemError (bad input, a cancelled edit, a budget the edit does not fit) is
    shown in the page as its one-line message; the server goes on serving."""

    @functools.wraps(handler)  # gradio finds the gr.Request and gr.Progress parameters in the signature
    def shown(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except LowmemError as exc:
            raise gr.Error(str(exc), duration=None, print_exception=False) from None

    return shown


def report_text(seconds: float, report) -> str:
    return f"{seconds:.2f} s through the page\n{report.format()}"


def build_app(service: EditService, defaults: PageDefaults) -> gr.Blocks:
    def uploaded(path: Optional[str]):
        image = forms.read_image(path) if path is not None else None
        return pictures.canvas_value(image), None, None, None, None, None

    def dragged(canvas: dict, path: Optional[str], resolution: float):
        box = canvas.get("box") if canvas else None
        if not box or path is None:
            return None, None, None, None, None
        return (*box, previewed(path, *box, resolution))

    def previewed(path: Optional[str], x0, y0, x1, y1, resolution: float) -> Optional[Image.Image]:
        if path is None or None in (x0, y0, x1, y1):
            return None
        image = forms.read_image(path)
        instruction = forms.move_instruction(PREVIEW_OBJECT, (x0, y0, x1, y1), image.size)
        return pictures.model_input(image, instruction.box, forms.whole(resolution))

    def run(path, instruction_for: Callable[[Image.Image], EditInstruction], sampling_fields, request, progress):
        image = forms.read_image(path)
        sampling = forms.Sampling.from_page(*sampling_fields)
        spec = forms.spec(instruction_for(image), sampling, defaults.spot)

        def show(phase: str, steps_done: int) -> None:
            progress((steps_done, spec.steps), desc=phase)

        start = time.perf_counter()
        result = service.edit(image, spec, sampling.resolution, sampling.spot, request.session_hash, show)
        seconds = time.perf_counter() - start
        return (result.image, pictures.regenerated_region(result.image, result.spot_mask),
                report_text(seconds, result.report), f"Done: {spec.instruction.text}")

    def rotate(path, object_name, view, steps, guidance, seed, resolution, spot,
               request: gr.Request, progress=gr.Progress()):  # noqa: B008 (gradio's idiom)
        return run(path, lambda image: instructions.rotate(object_name, view),
                   (steps, guidance, seed, resolution, spot), request, progress)

    def move(path, object_name, x0, y0, x1, y1, steps, guidance, seed, resolution, spot,
             request: gr.Request, progress=gr.Progress()):  # noqa: B008 (gradio's idiom)
        return run(path, lambda image: forms.move_instruction(object_name, (x0, y0, x1, y1), image.size),
                   (steps, guidance, seed, resolution, spot), request, progress)

    def scale(path, object_name, factor, steps, guidance, seed, resolution, spot,
              request: gr.Request, progress=gr.Progress()):  # noqa: B008 (gradio's idiom)
        return run(path, lambda image: instructions.scale(object_name, factor),
                   (steps, guidance, seed, resolution, spot), request, progress)

    def camera(path, yaw, pitch, zoom, steps, guidance, seed, resolution, spot,
               request: gr.Request, progress=gr.Progress()):  # noqa: B008 (gradio's idiom)
        return run(path, lambda image: forms.camera_instruction(yaw, pitch, zoom),
                   (steps, guidance, seed, resolution, spot), request, progress)

    def cancel(request: gr.Request) -> str:
        stopped = service.cancel(request.session_hash)
        return f"Cancelled {stopped} edit(s): the device was given back." if stopped else "No edit of yours was running."

    with gr.Blocks(title="lowmem: SpatialEdit", analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        gr.Markdown("## lowmem: geometric image editing with SpatialEdit")
        with gr.Row():
            with gr.Column():
                image = ImageUpload(label="Input image", type="filepath", sources=["upload", "clipboard"],
                                    height=IMAGE_HEIGHT, elem_id="input-image")
                object_name = gr.Textbox(label="Object (what to rotate, move or scale)", value=defaults.object_name,
                                         elem_id="object-name")
                with gr.Tabs():
                    with gr.Tab("Rotate", id="rotate"):
                        view = gr.Radio(list(VIEWS), value=VIEWS[0], label="Show the object's")
                        rotate_button = gr.Button("Rotate", variant="primary", elem_id="run-rotate")
                    with gr.Tab("Move", id="move", elem_id="tab-move"):
                        gr.Markdown("Drag the target box on the image, from one corner to the other.")
                        canvas = box_canvas(elem_id="box-canvas")
                        with gr.Row():
                            box_fields = [gr.Number(label=name, precision=0, min_width=60, elem_id=f"box-{name}")
                                          for name in ("x0", "y0", "x1", "y1")]
                        preview = gr.Image(label="What the model will see (the red box)", interactive=False,
                                           format="png", height=IMAGE_HEIGHT, elem_id="box-preview")
                        move_button = gr.Button("Move", variant="primary", elem_id="run-move")
                    with gr.Tab("Scale", id="scale"):
                        factor = gr.Slider(*SCALE_RANGE, value=1.5, step=0.05, label="Scale factor (not 1)")
                        scale_button = gr.Button("Scale", variant="primary", elem_id="run-scale")
                    with gr.Tab("Camera", id="camera"):
                        yaw = gr.Slider(min(ALLOWED_YAWS), max(ALLOWED_YAWS), value=YAW_STEP, step=YAW_STEP,
                                        label="Yaw (degrees)")
                        pitch = gr.Slider(min(ALLOWED_PITCHES), max(ALLOWED_PITCHES), value=0, step=PITCH_STEP,
                                          label="Pitch (degrees)")
                        zoom = gr.Radio(list(forms.ZOOM_CHOICES), value=forms.NO_ZOOM, label="Zoom (instead of an orbit)")
                        camera_button = gr.Button("Move the camera", variant="primary", elem_id="run-camera")
                with gr.Accordion("Advanced settings", open=False):
                    steps = gr.Slider(1, MAX_PAGE_STEPS, value=defaults.steps, step=1, label="Steps")
                    guidance = gr.Slider(0, 10, value=defaults.guidance, step=0.5, label="Guidance")
                    seed = gr.Number(value=0, precision=0, minimum=0, label="Seed")
                    resolution = gr.Number(value=defaults.resolution, minimum=RESOLUTION_RANGE[0],
                                           maximum=defaults.resolution, step=RESOLUTION_MULTIPLE, precision=0,
                                           label=f"Working resolution (about N x N pixels, up to {defaults.resolution})")
                    spot = gr.Radio(list(SPOT_CHOICES), value="auto",
                                    label="SpotEdit (recompute only the edited region)")
                    gr.Markdown(defaults.about)
                cancel_button = gr.Button("Cancel my edit", variant="stop", elem_id="cancel")
            with gr.Column():
                status = gr.Markdown(elem_id="status")
                result = gr.Image(label="Edited", format="png", interactive=False, buttons=["download"],
                                  height=IMAGE_HEIGHT, elem_id="result")
                region = gr.Image(label="Regenerated region (SpotEdit), tinted", format="png", interactive=False,
                                  height=IMAGE_HEIGHT, elem_id="region")
                report = gr.Textbox(label="Run report", lines=14, interactive=False, elem_id="report")

        sampling = [steps, guidance, seed, resolution, spot]
        outputs = [result, region, report, status]
        edits = [
            rotate_button.click(page_errors(rotate), [image, object_name, view, *sampling], outputs, api_name="rotate",
                                concurrency_id=DEVICE_QUEUE, concurrency_limit=1),
            move_button.click(page_errors(move), [image, object_name, *box_fields, *sampling], outputs, api_name="move",
                              concurrency_id=DEVICE_QUEUE, concurrency_limit=1),
            scale_button.click(page_errors(scale), [image, object_name, factor, *sampling], outputs, api_name="scale",
                               concurrency_id=DEVICE_QUEUE, concurrency_limit=1),
            camera_button.click(page_errors(camera), [image, yaw, pitch, zoom, *sampling], outputs, api_name="camera",
                                concurrency_id=DEVICE_QUEUE, concurrency_limit=1),
        ]
        cancel_button.click(cancel, None, status, api_name="cancel", cancels=edits, queue=False)
        image.change(page_errors(uploaded), image, [canvas, *box_fields, preview], api_visibility="private")
        canvas.change(page_errors(dragged), [canvas, image, resolution], [*box_fields, preview], api_visibility="private")
        gr.on([field.input for field in box_fields] + [resolution.input], page_errors(previewed),
              [image, *box_fields, resolution], preview, api_visibility="private")
    return app
