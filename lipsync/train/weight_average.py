"""An exponential moving average of a network's weights over its optimizer steps (--ema_decay).

At a constant learning rate the weights after one step differ from those a few steps
earlier by more than training improves them: the held-out mouth of the tiny U-Net opened
0.79 of the truth's after one epoch and 0.50 after the next (benchmarks/RESULTS.md). The
average over the last few hundred steps keeps what they share. Training itself is untouched:
the optimizer steps the live weights exactly as without the average, which is kept beside
them, validated, and written to the checkpoints inference loads.

The average is bias-corrected like Adam's moments: after n steps it is the weighted mean of
the n weights seen, step i counted decay^(n-i) times, so it never mixes in the initial random
weights, however short the run.
"""
import copy
from typing import Dict

import torch
from torch import nn


class WeightAverage:
    """The averaged copy of ``model``; ``update(model)`` after every optimizer step."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"an average's decay lies between 0 and 1, got {decay}")
        self.decay = decay
        self.steps = 0
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.steps += 1
        # The bias-corrected average after n steps is a running mean whose newest weight
        # counts (1 - decay) / (1 - decay**n): the whole of it at the first step.
        newest = (1.0 - self.decay) / (1.0 - self.decay ** self.steps)
        live = model.state_dict()
        for name, averaged in self.model.state_dict().items():
            if averaged.is_floating_point():
                averaged.lerp_(live[name].to(averaged.dtype), newest)
            else:                       # counters such as BatchNorm's num_batches_tracked
                averaged.copy_(live[name])

    def reset(self, model: nn.Module) -> None:
        """Start the average again from ``model``'s weights (a run resumed without one)."""
        self.model.load_state_dict(model.state_dict())
        self.steps = 0

    def state(self) -> Dict:
        return {"steps": self.steps, "decay": self.decay}

    def load(self, weights: Dict, state: Dict) -> None:
        self.model.load_state_dict(weights)
        self.steps = int(state["steps"])
