"""One long-lived pipeline behind the web page: loaded once, used by one edit at a time, each edit
stoppable from the page.

Gradio's queue already runs the edit events one at a time (one concurrency group) and shows each
waiting request its place; the lock here is what keeps the device to one edit even when a cancelled
event's thread is still unwinding while the queue starts the next one. Cancelling an event in gradio
only stops waiting for it: the edit itself stops at its next phase or denoising step, where
`on_progress` raises `EditCancelled`; the pipeline then gives back what the edit placed, as after any
failure, and the next request runs on a clean device.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Optional

from lowmem.errors import LowmemError

if TYPE_CHECKING:
    from PIL import Image

    from lowmem.edits import EditSpec
    from lowmem.pipeline import EditResult, SpatialEditPipeline

SPOT_CHOICES = ("auto", "on", "off")
Progress = Callable[[str, int], None]  # (phase, denoising steps done)


class EditCancelled(LowmemError):
    """The edit was cancelled from the page."""


@dataclass(eq=False)
class Ticket:
    """One request, from the moment it asks for the device until it gives it back."""

    owner: str  # the browser session (gradio's session hash) that may cancel it
    cancelled: threading.Event = field(default_factory=threading.Event)


class EditService:
    def __init__(self, pipe: "SpatialEditPipeline"):
        self.pipe = pipe
        self.device_lock = threading.Lock()
        self.tickets: list[Ticket] = []  # waiting for the device or holding it
        self.tickets_lock = threading.Lock()

    def spot_enabled(self, choice: str) -> bool:
        """Whether an edit runs SpotEdit: "auto" is what the server decided when it loaded the model;
        "on" needs the plan to have sized SpotEdit's caches, or they would sit outside the budget."""
        if choice not in SPOT_CHOICES:
            raise LowmemError(f"SpotEdit is one of {', '.join(SPOT_CHOICES)}, got {choice!r}")
        if choice == "on" and not self.pipe.spot and self.pipe.offload is not None:
            raise LowmemError("this server's memory plan has no room for SpotEdit's caches: choose SpotEdit off or "
                              "auto, or restart it with `lowmem ui --spot on`")
        return self.pipe.spot if choice == "auto" else choice == "on"

    def edit(self, image: "Image.Image", spec: "EditSpec", resolution: int, spot: str, owner: str,
             on_progress: Optional[Progress] = None) -> "EditResult":
        """`spec` applied to `image` on the device, after any edit that holds it; raises EditCancelled
        when `cancel(owner)` is called meanwhile."""
        spot_config = spec.spot_config(self.spot_enabled(spot))
        ticket = Ticket(owner)
        with self.tickets_lock:
            self.tickets.append(ticket)
        try:
            with self.device_lock:
                if ticket.cancelled.is_set():  # while it waited: the device is not even touched
                    raise EditCancelled("cancelled before it started")

                def checked_progress(phase: str, steps_done: int) -> None:
                    if ticket.cancelled.is_set():
                        raise EditCancelled(f"cancelled in {phase}; the device was given back")
                    if on_progress is not None:
                        on_progress(phase, steps_done)

                return self.pipe.edit(image, spec.instruction, steps=spec.steps, guidance=spec.guidance, seed=spec.seed,
                                      resolution=resolution, progress=False, spot=spot_config,
                                      on_progress=checked_progress)
        finally:
            with self.tickets_lock:
                self.tickets.remove(ticket)

    def cancel(self, owner: str) -> int:
        """Stop `owner`'s edits, running or waiting for the device; how many there were."""
        with self.tickets_lock:
            mine = [ticket for ticket in self.tickets if ticket.owner == owner]
        for ticket in mine:
            ticket.cancelled.set()
        return len(mine)
