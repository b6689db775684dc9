"""Helpers shared by the network tests."""
import torch
from torch import nn


def randomize_bn(net: nn.Module, seed: int = 0) -> None:
    """Non-trivial batch norm statistics and affine parameters (and linear biases), so that a
    wrong channel slice or a wrong batch-norm fold changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            elif isinstance(m, nn.Linear):
                m.bias.copy_(torch.randn(m.out_features, generator=g))
