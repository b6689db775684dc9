"""One trial's accuracy, measured on a worker: slice the candidate out of the supernet with its
pruning and bit-widths, fine-tune it briefly by distillation, recalibrate batch norm, and score
it on the validation split. Plain inputs in, plain numbers out."""
from __future__ import annotations

import time
from typing import Any, Mapping, cast

import numpy as np
import torch
import torch.nn.functional as F

import spaces

from .data import Dataset
from .supernet import Supernet
from .train import accuracy, batches, device, distill_loss, recalibrate_bn, to_input


def evaluate(space_settings: Mapping[str, Any], candidate: spaces.Candidate, data: Dataset, supernet: Supernet,
             settings: Mapping[str, Any], seed: int) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """The trial's metrics, and its fine-tuned state (what `space.build(candidate)` loads to be
    this exact network again: promote exports it)."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    space = cast(spaces.SearchSpace, spaces.create(**space_settings))  # a study's space is searchable (validated)
    dev = device()
    shared = space.supernet()
    shared.load_state_dict({k: torch.tensor(v) for k, v in supernet.state.items()})
    net = space.subnet(shared, candidate)
    net = net.to(dev, memory_format=torch.channels_last)  # type: ignore[call-overload]  # its overloads omit the format
    shape = space.input_shape_of(candidate)  # the images are resized to the network's resolution
    finetune(net, data, supernet, settings, generator, shape)
    recalibrate_bn(net, data.train, data.mean, data.std, settings["batch_size"], settings["bn_batches"], generator,
                   shape)
    # The search scores on validation; test accuracy is recorded for final reporting only.
    metrics = {"accuracy": accuracy(net, data.val, data.mean, data.std, shape),
               "test_accuracy": accuracy(net, data.test, data.mean, data.std, shape),
               "evaluate_s": time.perf_counter() - start}
    return metrics, {k: v.detach().cpu().numpy() for k, v in net.state_dict().items()}


def finetune(net: torch.nn.Module, data: Dataset, supernet: Supernet, settings: Mapping[str, Any],
             generator: torch.Generator, shape: tuple[int, int, int] | None = None) -> None:
    """Distil from the full-width float supernet's logits, with a little hard-label loss."""
    dev = next(net.parameters()).device
    optimizer = torch.optim.SGD(net.parameters(), lr=settings["lr"], momentum=0.9)
    net.train()
    steps = batches(data.train, min(settings["batch_size"], len(data.train.y)), generator)
    for _, idx in zip(range(settings["steps"]), steps):
        out = net(to_input(data.train.x[idx], data.mean, data.std, dev, shape))
        teacher = torch.from_numpy(supernet.teacher[idx]).to(dev)
        y = torch.from_numpy(data.train.y[idx]).to(dev)
        loss = distill_loss(out, teacher, settings["temperature"]) + 0.5 * F.cross_entropy(out, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
