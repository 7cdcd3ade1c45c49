"""EditSpec: one edit as a face asks for it, whichever face that is (a command line, a jobs-file line, a form).

It holds what changes from edit to edit: the instruction and the sampling settings. The image, the
model and how it is planned (resolution, budget, whether SpotEdit runs) belong to the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Union

from lowmem.common import validation
from lowmem.instructions import EditInstruction, as_instruction

if TYPE_CHECKING:
    from lowmem.spotedit import SpotConfig


@dataclass(frozen=True)
class EditSpec:
    instruction: EditInstruction
    steps: int = 30
    guidance: float = 5.0
    seed: int = 0
    spot_threshold: Union[float, str] = 0.15  # a perceptual score, or "auto"
    spot_dilation: int = 1  # tokens added around the edited region on every side
    negative_prompt: str = ""  # the unconditional row's text under guidance ("" as trained)

    def __post_init__(self) -> None:
        # A face that builds a spec in code (a UI, a script) gets the flags' checks and words; the values
        # stay as given (the flags already gave the checked ones).
        object.__setattr__(self, "instruction", as_instruction(self.instruction))
        validation.steps(self.steps)
        validation.guidance(self.guidance)
        validation.seed(self.seed)
        validation.spot_threshold(self.spot_threshold)
        validation.spot_dilation(self.spot_dilation)
        validation.text(self.negative_prompt, "negative_prompt")

    def edit_arguments(self, spot_enabled: bool) -> dict:
        """This edit as `SpatialEditPipeline.edit`'s keyword arguments (all but the image and how the run
        is sized); SpotEdit's settings only when the run has it on (`pipe.spot`)."""
        return {"instruction": self.instruction, "steps": self.steps, "guidance": self.guidance, "seed": self.seed,
                "spot": self.spot_config(spot_enabled), "negative_prompt": self.negative_prompt}

    def spot_config(self, enabled: bool) -> Optional["SpotConfig"]:
        """SpotEdit's settings for this edit when the run has SpotEdit on, else None."""
        if not enabled:
            return None
        from lowmem.spotedit import SpotConfig  # the spotedit package imports torch and diffusers: only when used

        return SpotConfig(threshold=self.spot_threshold, dilation=self.spot_dilation)
