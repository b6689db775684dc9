"""Does an exported file behave like the network it came from? Its logits against the torch network's on
the same images: accuracy of each, top-1 agreement, the largest logit difference; and, when they do not
match, where the file starts to differ (from its backend's `layer_errors`)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .data import Split
from .train import to_input


@dataclass(frozen=True)
class Parity:
    """How closely a file computes what the network computed, on one split."""

    accuracy: float  # the file's top-1, in percent
    torch_accuracy: float  # the network's, on the same images
    agreement: float  # share of images where both predict the same class, in percent
    max_logit_diff: float  # largest |file - torch| over every logit
    images: int

    def as_tags(self, prefix: str) -> dict[str, str]:
        return {f"{prefix}.{k}": f"{v:.6g}" for k, v in asdict(self).items()}

    def describe(self) -> str:
        return (f"{self.accuracy:.2f}% (torch {self.torch_accuracy:.2f}%), top-1 agreement {self.agreement:.2f}% "
                f"of {self.images} images, largest logit difference {self.max_logit_diff:.3g}")


def images(x: np.ndarray, mean, std, shape: Sequence[int] | None = None) -> np.ndarray:
    """uint8 images -> the float32 NCHW batch the exported file reads (resized to its (C, H, W) input `shape`)."""
    return to_input(x, mean, std, torch.device("cpu"), shape).contiguous().numpy()


def inputs(split: Split, mean, std, start: int = 0, stop: int | None = None,
           shape: Sequence[int] | None = None) -> np.ndarray:
    return images(split.x[start:stop], mean, std, shape)


def torch_logits(net: nn.Module, x: np.ndarray, batch_size: int = 500) -> np.ndarray:
    net = net.eval()
    with torch.no_grad():
        return np.concatenate([net(torch.from_numpy(x[i:i + batch_size])).float().numpy()
                               for i in range(0, len(x), batch_size)])


def compare(file_logits: np.ndarray, net_logits: np.ndarray, labels: np.ndarray) -> Parity:
    got, want = file_logits.argmax(1), net_logits.argmax(1)
    return Parity(float((got == labels).mean() * 100), float((want == labels).mean() * 100),
                  float((got == want).mean() * 100), float(np.abs(file_logits - net_logits).max()), len(labels))


def worst_layers(errors: dict[str, float], n: int = 3) -> list[tuple[str, float]]:
    """The layers where the difference grows most over every layer before them (in network order):
    where a broken export starts to differ, not the layers that merely inherit the difference."""
    jumps: dict[str, float] = {}
    worst_before = 0.0
    for name, error in errors.items():
        jumps[name] = error - worst_before
        worst_before = max(worst_before, error)
    return [(name, errors[name]) for name in sorted(jumps, key=lambda name: jumps[name], reverse=True)[:n]]
