"""The two page components gradio has no ready form of: an image upload that lowmem reads itself,
and a canvas on which the move's target box is dragged with the mouse."""

from __future__ import annotations

from typing import Any, Optional

import gradio as gr

from lowmem.ui.pictures import canvas_value


class ImageUpload(gr.Image):
    """An image upload handed to the handler as the uploaded file's path, unopened: gradio's own
    reading would end a file that is not an image, or a decompression bomb, in a bare "Error", where
    `lowmem.common.images.open_image` says what is wrong. (Gradio writes a typing stub, components.pyi,
    beside a component subclass when it is imported; .gitignore keeps it out.)"""

    def preprocess(self, payload: Any) -> Optional[str]:
        return None if payload is None else str(payload.path)

    def get_block_name(self) -> str:
        return "image"  # gr.Image's page component: only the server side differs


# The value: {"src": a display copy of the input as a data URL, "width"/"height": the input's size,
# "shown": its size on the page, "box": [x0, y0, x1, y1] in the input's pixels, or null}. The outline
# is drawn from the value, so what the page shows is what the server holds.
BOX_TEMPLATE = """
<div class="box-canvas">
${value && value.src ? `
  <div class="frame">
    <img src="${value.src}" width="${value.shown[0]}" height="${value.shown[1]}" draggable="false"
         alt="the input image: drag the target box on it">
    <div class="outline" style="${value.box
      ? `left:${value.box[0] / value.width * 100}%;top:${value.box[1] / value.height * 100}%;`
        + `width:${(value.box[2] - value.box[0]) / value.width * 100}%;`
        + `height:${(value.box[3] - value.box[1]) / value.height * 100}%`
      : 'display:none'}"></div>
  </div>` : `<p class="empty">Upload an image, then drag the target box on it here.</p>`}
</div>
"""

BOX_CSS = """
.frame { position: relative; display: inline-block; cursor: crosshair; touch-action: none; user-select: none; }
.frame img { display: block; max-width: 100%; height: auto; image-rendering: pixelated; }
.outline { position: absolute; border: 2px solid #ff0000; box-sizing: border-box; pointer-events: none; }
.empty { padding: 2em 1em; text-align: center; }
"""

# Pointer events (a mouse, a pen, a finger): the outline follows the drag; on release the box is
# rounded to the input's pixels and the value changes (a change event), which the server previews.
BOX_JS = """
let start = null;
const at = (event) => {
  const rect = element.querySelector('img').getBoundingClientRect();
  const clamp = (v) => Math.min(Math.max(v, 0), 1);
  return [clamp((event.clientX - rect.left) / rect.width), clamp((event.clientY - rect.top) / rect.height)];
};
const spanned = (a, b) => [Math.min(a[0], b[0]), Math.min(a[1], b[1]),
                           Math.max(a[0], b[0]), Math.max(a[1], b[1])];
element.addEventListener('pointerdown', (event) => {
  if (event.target.tagName !== 'IMG') return;
  event.preventDefault();
  event.target.setPointerCapture(event.pointerId);
  start = at(event);
});
element.addEventListener('pointermove', (event) => {
  if (!start) return;
  const [x0, y0, x1, y1] = spanned(start, at(event));
  Object.assign(element.querySelector('.outline').style, {
    display: 'block', left: `${x0 * 100}%`, top: `${y0 * 100}%`, width: `${(x1 - x0) * 100}%`, height: `${(y1 - y0) * 100}%`,
  });
});
element.addEventListener('pointerup', (event) => {
  if (!start) return;
  const [x0, y0, x1, y1] = spanned(start, at(event));
  start = null;
  const { width, height } = props.value;
  const box = [Math.round(x0 * width), Math.round(y0 * height), Math.round(x1 * width), Math.round(y1 * height)];
  props.value = { ...props.value, box };
});
"""


def box_canvas(**kwargs: Any) -> gr.HTML:
    """The input image, on which the move's target box is dragged (its value: see BOX_TEMPLATE)."""
    return gr.HTML(value=canvas_value(None), html_template=BOX_TEMPLATE, css_template=BOX_CSS, js_on_load=BOX_JS,
                   **kwargs)
