"""The pieces of training that the supernet and every trial share."""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import Split, normalize


def device() -> torch.device:
    """A GPU where one is present (a user's workstation, a Ray GPU worker), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def to_input(x: np.ndarray, mean, std, dev: torch.device, shape: Sequence[int] | None = None) -> torch.Tensor:
    """uint8 images -> normalised float batch in channels-last layout (faster convs on CPU), resized to a network's
    (C, H, W) input `shape` where it takes another resolution."""
    batch = normalize(torch.tensor(x, device=dev), mean, std)  # a copy: object-store arrays are read-only
    return resize(batch, shape).contiguous(memory_format=torch.channels_last)


def resize(batch: torch.Tensor, shape: Sequence[int] | None) -> torch.Tensor:
    """A batch at a network's input resolution: bilinear with antialiasing, as an image library resizes a photo
    (per-channel normalisation commutes with it, so resizing before or after normalising is the same), or the batch
    itself where it is already there."""
    if shape is None or tuple(batch.shape[2:]) == tuple(shape[1:]):
        return batch
    return F.interpolate(batch, size=tuple(shape[1:]), mode="bilinear", antialias=True, align_corners=False)


def batches(split: Split, batch_size: int, generator: torch.Generator) -> Iterator[np.ndarray]:
    """Endless shuffled index batches over a split (an epoch is len(split.y) // batch_size)."""
    n = len(split.y)
    while True:
        order = torch.randperm(n, generator=generator).numpy()
        for start in range(0, n - batch_size + 1, batch_size):
            yield order[start:start + batch_size]


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's soft-target loss, scaled by T^2 so its gradients match a hard-label loss."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1), reduction="batchmean",
                    log_target=True) * t * t


@torch.no_grad()
def recalibrate_bn(net: nn.Module, split: Split, mean, std, batch_size: int, n_batches: int,
                   generator: torch.Generator, shape: Sequence[int] | None = None) -> None:
    """Re-estimate batch-norm statistics for this exact network (a slice of a supernet shares
    statistics with every other width, so its own are wrong until recomputed)."""
    dev = next(net.parameters()).device
    net.eval()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches below
            m.train()
    it = batches(split, min(batch_size, len(split.y)), generator)
    for _ in range(n_batches):
        net(to_input(split.x[next(it)], mean, std, dev, shape))
    net.eval()


@torch.no_grad()
def logits(net: nn.Module, split: Split, mean, std, batch_size: int = 1000,
           shape: Sequence[int] | None = None) -> torch.Tensor:
    dev = next(net.parameters()).device
    net.eval()
    out = [net(to_input(split.x[i:i + batch_size], mean, std, dev, shape)).float().cpu()
           for i in range(0, len(split.y), batch_size)]
    return torch.cat(out)


def accuracy(net: nn.Module, split: Split, mean, std, shape: Sequence[int] | None = None) -> float:
    """Top-1 accuracy in percent (on the images resized to the network's input `shape`, where given)."""
    predicted = logits(net, split, mean, std, shape=shape).argmax(1).numpy()
    return float((predicted == split.y).mean() * 100)
