"""Which weights and channels to remove: magnitude for weights, L1 norm for filters."""
from __future__ import annotations

import torch


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor | None:
    """A 0/1 mask zeroing exactly round(sparsity * n) of the smallest-magnitude weights."""
    zeros = round(weight.numel() * sparsity)
    if zeros == 0:
        return None
    mask = torch.ones(weight.numel(), dtype=weight.dtype, device=weight.device)
    mask[weight.detach().abs().flatten().argsort()[:zeros]] = 0
    return mask.view_as(weight)


def strongest_filters(weight: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices (ascending) of the `keep` output filters with the largest L1 norm."""
    norms = weight.detach().abs().flatten(1).sum(1)
    return norms.topk(keep).indices.sort().values
