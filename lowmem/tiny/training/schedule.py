"""What both training phases share: the learning-rate schedule and the running loss record."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


def warmup_cosine(optimizer: torch.optim.Optimizer, steps: int, warmup: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over `warmup` steps, then a cosine decay to zero at `steps`."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class LossLog:
    """Mean loss per window of `every` steps (what training.json records and the tests read)."""

    every: int
    means: list[float] = field(default_factory=list)
    _window: list[float] = field(default_factory=list)

    def add(self, loss: float) -> None:
        self._window.append(loss)
        if len(self._window) == self.every:
            self.means.append(sum(self._window) / len(self._window))
            self._window.clear()

    def finish(self) -> list[float]:
        if self._window:
            self.means.append(sum(self._window) / len(self._window))
            self._window.clear()
        return self.means
