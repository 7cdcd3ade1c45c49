"""The training set: rendered edit pairs with the conditioner's hidden states, ready for batching.

Each pair keeps its model input (the source with the red box when the edit has one, exactly what
the pipeline shows the model), its target, and the frozen conditioner's states for the conditional
prompt and for the unconditional one (empty instruction, same image), each without padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from lowmem.common.images import to_model_tensor
from lowmem.models.conditioner import QwenVLConditioner
from lowmem.tiny.scenes import render_pair


@dataclass
class EditSet:
    inputs: torch.Tensor  # (N, 3, H, W) in [-1, 1]: what the model sees
    targets: torch.Tensor  # (N, 3, H, W) in [-1, 1]
    conditional: list[torch.Tensor]  # per pair (L, D) conditioner states of the instruction prompt
    unconditional: list[torch.Tensor]  # per pair (L, D) states of the empty-instruction prompt
    kinds: list[str]

    def __len__(self) -> int:
        return len(self.kinds)

    def text_batch(self, rows: list[int], drop: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, D) states right-padded with zeros and their (B, L) mask, as the conditioner returns
        them; rows where `drop` is True get the unconditional prompt (classifier-free guidance)."""
        chosen = [self.unconditional[r] if bool(d) else self.conditional[r] for r, d in zip(rows, drop)]
        length = max(s.shape[0] for s in chosen)
        states = chosen[0].new_zeros((len(chosen), length, chosen[0].shape[1]))
        mask = torch.zeros((len(chosen), length), dtype=torch.bool)
        for i, s in enumerate(chosen):
            states[i, : s.shape[0]] = s
            mask[i, : s.shape[0]] = True
        return states, mask


def build_edit_set(conditioner: QwenVLConditioner, seeds: range, size: int, progress: bool = True) -> EditSet:
    """Render the pair of every seed and encode its prompts with the frozen conditioner."""
    inputs, targets, conditional, unconditional, kinds = [], [], [], [], []
    for seed in tqdm(seeds, desc="render + encode prompts", disable=not progress):
        pair = render_pair(seed, size=size)
        image = pair.model_input
        states, mask = conditioner.encode([image], pair.instruction.text, unconditional=True)
        unconditional.append(states[0][mask[0]].clone())
        conditional.append(states[1][mask[1]].clone())
        inputs.append(to_model_tensor(image)[0])
        targets.append(to_model_tensor(pair.target.image)[0])
        kinds.append(pair.kind)
    return EditSet(torch.stack(inputs), torch.stack(targets), conditional, unconditional, kinds)
