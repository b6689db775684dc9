"""The weight-sharing supernet: trained once per (space, data, seed, training settings) with
the sandwich rule, then cached on disk as a data file under a key derived from all of those."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generator, Mapping, cast

import numpy as np
import torch
import torch.nn.functional as F

import spaces
from spaces.importance import sort_channels
from spaces.pretrained import load_torchvision, read

from . import locks
from .data import Dataset
from .errors import UserError
from .train import accuracy, batches, device, distill_loss, logits, recalibrate_bn, resize, to_input

FORMAT_VERSION = 4  # bump when a change to the code changes what training produces (4: channels sorted at init)


@dataclass(frozen=True)
class Supernet:
    """What every trial starts from: the supernet's weights and its full-width float logits on
    the training split (the distillation teacher, computed once instead of once per step)."""

    state: dict[str, np.ndarray]
    teacher: np.ndarray
    val_accuracy: float
    key: str


def cache_key(space: Mapping[str, Any], data: Mapping[str, Any], seed: int, settings: Mapping[str, Any]) -> str:
    shaped_by = {"version": FORMAT_VERSION, "space": space, "data": data, "seed": seed, "train": settings}
    return hashlib.sha256(json.dumps(shaped_by, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Progress:
    """How far training is, yielded by `train` for the driver's progress bar (a worker's own output
    does not reach the user's console)."""

    step: int
    steps: int
    epoch: int
    epochs: int
    stage: str = "training"


def train(space_settings: Mapping[str, Any], data: Dataset, settings: Mapping[str, Any],
          seed: int, init: Mapping[str, np.ndarray] | None = None) -> Generator[Progress, None, dict[str, Any]]:
    """Sandwich rule (Yu & Huang, 2019): each step trains the largest network on labels and the
    smallest plus a few random ones (widths, and depths and resolutions where the space has them) on the
    largest one's outputs, so every choice works. Yields
    its progress (about 200 times) and returns the trained state. With `init` (a torchvision-layout
    state_dict, `initial_weights`) the full-width network starts from those weights, its channels sorted by
    importance (`spaces.importance`)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    space = cast(spaces.SearchSpace, spaces.create(**space_settings))  # a supernet's space is searchable
    dev = device()
    net = space.supernet()
    if init is not None:
        # checked on the driver (`initial_weights`), key order included where the file keeps one (not safetensors)
        load_torchvision(net, {k: torch.from_numpy(v) for k, v in init.items()}, new_classifier=True, ordered=False)
        sort_channels(net)  # narrower widths keep a trained network's most important channels
    net = net.to(dev, memory_format=torch.channels_last)  # type: ignore[call-overload]  # its overloads omit the format
    per_epoch = len(data.train.y) // settings["batch_size"]
    steps = settings["epochs"] * per_epoch
    optimizer = torch.optim.SGD(net.parameters(), lr=settings["lr"], momentum=0.9, nesterov=True, weight_decay=4e-5)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, settings["lr"], total_steps=max(steps, 1))
    smallest, largest = space.extremes()
    every = max(1, steps // 200)
    net.train()
    for step, idx in zip(range(steps), batches(data.train, settings["batch_size"], generator)):
        x = to_input(data.train.x[idx], data.mean, data.std, dev)
        y = torch.from_numpy(data.train.y[idx]).to(dev)
        optimizer.zero_grad(set_to_none=True)
        space.set_active(net, largest)
        out = net(x)
        F.cross_entropy(out, y).backward()
        for candidate in [smallest, *(space.sample_active(generator) for _ in range(settings["random_subnets"]))]:
            space.set_active(net, candidate)
            distill_loss(net(resize(x, space.input_shape_of(candidate))), out.detach(), 1.0).backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % every == 0 or step + 1 == steps:
            yield Progress(step + 1, steps, step // per_epoch + 1, settings["epochs"])
    yield Progress(steps, steps, settings["epochs"], settings["epochs"], "batch-norm statistics, teacher outputs")
    space.set_active(net, largest)
    recalibrate_bn(net, data.train, data.mean, data.std, 256, 20, generator)
    return {"state": {k: v.detach().cpu().numpy() for k, v in net.state_dict().items()},
            "teacher": logits(net, data.train, data.mean, data.std).numpy(),
            "val_accuracy": accuracy(net, data.val, data.mean, data.std)}


def initial_weights(space_settings: Mapping[str, Any], path: str) -> dict[str, np.ndarray]:
    """The weights file `supernet.init` names, checked against the space's full-width network (UserError names
    the first key that does not fit), as plain arrays in the file's order: what crosses to the worker."""
    try:
        state, ordered = read(path)
        space = cast(spaces.SearchSpace, spaces.create(**space_settings))  # a supernet's space is searchable
        load_torchvision(space.supernet(), state, new_classifier=True, ordered=ordered)
    except ValueError as e:
        raise UserError(f"supernet.init: {e}") from None
    return {k: v.detach().cpu().numpy() for k, v in state.items()}


def init_digest(init: Mapping[str, np.ndarray] | None) -> str | None:
    """What of the initial weights the cache key depends on: their content, not the file's name."""
    if init is None:
        return None
    h = hashlib.sha256()
    for k, v in init.items():
        h.update(k.encode())
        h.update(np.ascontiguousarray(v).tobytes())
    return h.hexdigest()[:16]


def load_or_train(key: str, cache_dir: str | Path, run: Callable[[], dict[str, Any]]) -> tuple[Supernet, bool]:
    """The cached supernet for `key`, or a new one from `run()` saved atomically. Returns it and
    whether it came from the cache. Studies sharing a cache train each supernet once: one trains,
    the others wait for its file."""
    path = Path(cache_dir) / "supernets" / f"{key}.npz"
    with locks.exclusive(path):
        if path.exists():
            return _read(path, key), True
        return _train(path, key, run), False


def _train(path: Path, key: str, run: Callable[[], dict[str, Any]]) -> Supernet:
    result = run()
    meta = json.dumps({"version": FORMAT_VERSION, "key": key, "val_accuracy": result["val_accuracy"]})
    arrays = {f"state/{k}": v for k, v in result["state"].items()}
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as tmp:
        np.savez(tmp, meta=np.array(meta), teacher=result["teacher"], **arrays)
    os.replace(tmp.name, path)  # a killed process leaves no half-written cache entry
    return Supernet(result["state"], result["teacher"], result["val_accuracy"], key)


def _read(path: Path, key: str) -> Supernet:
    try:
        with np.load(path, allow_pickle=False) as f:  # a data file: loading it runs no code
            meta = json.loads(str(f["meta"]))
            version = meta.get("version") if isinstance(meta, dict) else None
            if version == FORMAT_VERSION:
                state = {k.removeprefix("state/"): f[k] for k in f.files if k.startswith("state/")}
                return Supernet(state, f["teacher"], float(meta["val_accuracy"]), key)
    except (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as e:
        raise UserError(f"cache_dir: {path} is not a readable supernet ({type(e).__name__}); "
                        "delete it to train again") from None
    raise UserError(f"cache_dir: {path} is a supernet of format version {version!r}, expected {FORMAT_VERSION}; "
                    "delete it to train again")
