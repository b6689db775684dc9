"""A user's trained network at the resolution it ships, end to end: `python -m search` on the torchvision-layout
space, started from a torchvision MobileNetV2 state_dict (random weights and batch-norm statistics: nothing is
downloaded), on a folder of generated 160-px JPEGs, searching widths, depths and input resolution; then promote ships
the ONNX and .tflite files of a trial at a lower resolution, each taking that resolution, gated. Float layers only:
the gate's arithmetic is then the file's own (integer kernels are tested on real data in test_export and
test_litert), so the test cannot pass or fail on which CPU rounds how."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import optuna
import pytest
import torch
from PIL import Image

from search.backends import litert
from tests.cli import command
from tests.test_pretrained import trained_torchvision

pytestmark = pytest.mark.slow
SIZE = 160
CLASSES = 3
STUDY = "trained"


def image_folder(root: Path, per_class: int = 16) -> Path:
    """Each class a colour with noise, so a few steps can tell them apart."""
    rng = np.random.default_rng(0)
    for c in range(CLASSES):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 96, (SIZE, SIZE, 3)) + np.eye(3, dtype=int)[c] * 128
            Image.fromarray(pixels.astype(np.uint8)).save(root / f"class{c}" / f"{i}.jpg", quality=90)
    return root


def run(folder: Path, module: str, *overrides: str):
    done = command(folder, module, *overrides, f"tracking.uri=sqlite:///{folder / 'mlflow.db'}",
                   f"cache_dir={folder / 'cache'}", f"study.name={STUDY}")
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_a_trained_torchvision_network_is_searched_and_shipped_at_a_trials_resolution(tmp_path):
    weights = tmp_path / "mobilenet_v2.pth"
    torch.save(trained_torchvision().state_dict(), weights)  # 1000 classes: a new classifier for 3
    data = [f"data.root={image_folder(tmp_path / 'images')}", "data=imagefolder", f"data.image_size={SIZE}"]
    run(tmp_path, "search", "space=mobilenetv2-imagenet", f"supernet.init={weights}", *data,
        "space.widths=[0.5,1.0]", "space.bits=[32]", "space.sparsity=[0.0]", "space.resolutions=[96,128]",
        "n_trials=4", "supernet.epochs=1", "supernet.batch_size=16", "finetune.steps=2", "finetune.batch_size=16",
        "finetune.bn_batches=1", "ray.num_cpus=2")
    study = optuna.load_study(study_name=STUDY, storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "outputs" / STUDY / "optuna.journal"))))
    params = [t.params for t in study.trials]
    assert len(params) == 4 and all({"resolution", "depth.s3", "width.stem"} <= set(p) for p in params)
    assert params[0]["resolution"] == SIZE and params[0]["depth.s3"] == 4  # the float baseline: the full network
    lower = next(t.number for t in study.trials if t.params["resolution"] < SIZE)  # RandomSampler's first trials
    resolution = study.trials[lower].params["resolution"]

    run(tmp_path, "search.promote", f"trial={lower}")
    promoted = tmp_path / "outputs" / STUDY / "promoted"
    model = onnx.load(str(promoted / f"trial-{lower}.onnx"))
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims[1:] == [3, resolution, resolution]
    image = np.zeros((1, 3, resolution, resolution), np.float32)
    assert litert.outputs(promoted / f"trial-{lower}.tflite", image).shape == (1, CLASSES)
