"""Small models for the built-in tasks: fast on a CPU, big enough to learn them.

Every model maps a float32 batch ``(B, *input_shape)`` to ``(B, num_outputs)``
logits (classification) or predictions (regression). Models are built by a
:class:`ModelSpec` (a picklable recipe) so a Ray worker can rebuild the same
architecture from the task it was handed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["CNN1D", "MLP", "ModelSpec"]


class MLP(nn.Module):
    """``in_features -> hidden... -> out_features`` with ReLU between layers."""

    def __init__(self, in_features: int, hidden: Sequence[int], out_features: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, out_features))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))  # (B, in_features) -> (B, out_features)


class CNN1D(nn.Module):
    """A 1D CNN for MNIST-1D-like signals ``(B, length)``.

    Three stride-2 convolutions (length -> length/8) and a linear head, as in
    the MNIST-1D paper's small CNN; ~5k parameters with the defaults, so an
    epoch of 10k samples takes about a second on one CPU thread.
    """

    def __init__(self, length: int, out_features: int, channels: int = 25) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv1d(1, channels, 5, stride=2, padding=2),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        with torch.no_grad():
            flat = self.conv(torch.zeros(1, 1, length)).numel()
        self.head = nn.Linear(flat, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x.unsqueeze(1))  # (B, L) -> (B, 1, L) -> (B, C, L/8)
        return self.head(h.flatten(1))  # (B, C·L/8) -> (B, out_features)


_MODELS: dict[str, type[nn.Module]] = {"mlp": MLP, "cnn1d": CNN1D}


@dataclass(frozen=True)
class ModelSpec:
    """A picklable model recipe: ``kind`` is ``"mlp"`` or ``"cnn1d"``, ``kwargs`` its arguments.

    ``build(seed)`` returns a freshly initialised model; the same seed gives the
    same weights, which is what lets every DDP rank (and a baseline run) start
    from one initialisation.
    """

    kind: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self, seed: int = 0) -> nn.Module:
        if self.kind not in _MODELS:
            raise ValueError(f"unknown model kind {self.kind!r}; known: {sorted(_MODELS)}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return _MODELS[self.kind](**self.kwargs)
