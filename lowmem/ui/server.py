"""`lowmem ui`'s server: the model loaded once (within the budget), the page built on it, served."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from lowmem.ui.forms import SpotSettings

if TYPE_CHECKING:
    import gradio as gr

    from lowmem.ui.app import PageDefaults
    from lowmem.ui.service import EditService

# Planned for classifier-free guidance (two DiT rows a step), so every guidance the page offers fits.
PLANNED_GUIDANCE = 5.0
MAX_UPLOAD = "100mb"  # a larger upload is refused by gradio in the page, before lowmem reads a byte


@dataclass(frozen=True)
class ServerSettings:
    model: Optional[Path] = None  # None: the shipped tiny model
    budget: Optional[str] = None
    preset: Optional[str] = None
    resolution: Optional[int] = None  # the largest working size planned for (default: the model's)
    spot: Optional[str] = None  # on | off | auto (default: auto; on for the shipped tiny model)
    compute: str = "auto"


def load(settings: ServerSettings) -> tuple["EditService", "PageDefaults"]:
    """The pipeline, loaded once for the server's life, and how the page samples it."""
    from lowmem.edits.fields import DEFAULTS
    from lowmem.models.dit_loading import read_dit_config
    from lowmem.models.layout import open_model_folder
    from lowmem.pipeline import SpatialEditPipeline, default_device
    from lowmem.tiny.random_model import tiny_model_budget
    from lowmem.tiny.scenes import OBJECT_NAME
    from lowmem.tiny.trained_model import TINY_SPOT_DILATION, trained_tiny_model
    from lowmem.ui.app import PageDefaults
    from lowmem.ui.service import EditService

    device = default_device()
    budget, max_resident = settings.budget, None
    if settings.model is None:
        # As `lowmem demo` samples the tiny model (its training size, guidance 1, SpotEdit on, no
        # dilation), with half its DiT blocks streamed so that the page's report shows the streamer.
        model, resolution, spot = trained_tiny_model(), settings.resolution or 64, settings.spot or "on"
        defaults = dict(steps=16, guidance=1.0, object_name=OBJECT_NAME, spot=SpotSettings(dilation=TINY_SPOT_DILATION))
        if budget is None and settings.preset is None:
            budget = tiny_model_budget(device)
            max_resident = read_dit_config(open_model_folder(model)).mm_double_blocks_depth // 2
    else:
        model, resolution, spot = settings.model, settings.resolution or 1024, settings.spot or "auto"
        defaults = dict(steps=DEFAULTS["steps"], guidance=DEFAULTS["guidance"], object_name="object", spot=SpotSettings())
        if budget is None and settings.preset is None and device.type == "cuda":
            budget = "auto"  # as `lowmem edit`: plan for the memory that is free, not fail with out-of-memory
    pipe = SpatialEditPipeline.from_folder(model, device=device, memory_budget=budget, preset=settings.preset,
                                           resolution=resolution, spot=spot, max_resident_blocks=max_resident,
                                           guidance=PLANNED_GUIDANCE, compute=settings.compute)
    plan = f"plan: {pipe.offload.plan.summary()}" if pipe.offload is not None else "no budget: everything resident"
    about = "\n".join([f"Model `{model}` on {device}; {plan}.", "", *[f"- {choice}" for choice in pipe.choices],
                       f"- SpotEdit auto: {'on' if pipe.spot else 'off'} for this server"])
    return EditService(pipe), PageDefaults(resolution=resolution, about=about, **defaults)


def launch(app: "gr.Blocks", host: str, port: int, share: bool, block: bool = True) -> str:
    """Serve `app` at host:port (a public share link only when `share`); the local URL. With `block`,
    until Ctrl-C."""
    from lowmem.ui.app import PAGE_CSS

    app.queue()
    _, url, _ = app.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block,
                           max_file_size=MAX_UPLOAD, quiet=not block, ssr_mode=False, css=PAGE_CSS)
    return url
