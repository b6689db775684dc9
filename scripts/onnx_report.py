"""The ONNX file on onnxruntime: is the uniform 8-bit file faster than the float one, and does it still compute what
its network computes? For torchvision's MobileNetV2 layout (conf/space/mobilenetv2-imagenet.yaml) at 224 px and the
default space (conf/space/mobilenetv2.yaml) at 28 px: the float full-width and uniform 8-bit baselines of one trained
network, exported by the ONNX backend, checked against the torch network on Fashion-MNIST test images and timed
together on onnxruntime (1 thread, batch 1, interleaved, as `scripts/search_report.py` times files).

    .venv/bin/python scripts/onnx_report.py           # train, export, check, time; rewrites README's `onnx` section
    .venv/bin/python scripts/onnx_report.py --quick   # a few steps and images: keeps the script working

Each network is trained for a few hundred steps of 64 images (the 224-px one mostly at 64 px, then a few steps at
224 px; on CPU a whole training at 224 px would take hours): enough to be a trained network, whose predictions have
margins. A random network is so sensitive to its input that any rounding flips its argmax, and agreement on it
would measure nothing.
"""
from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from readme_results import machine, write_readme

import spaces
from search import data as datasets
from search import parity
from search.backends import onnx as backend
from search.runners.host import HostRunner
from search.train import batches, recalibrate_bn, to_input

ROOT = Path(__file__).resolve().parent.parent
MARK = "onnx"
TIMING = {"passes": 200, "min_seconds": 4.0}
CASES = {  # space preset, resolution the network runs at, training phases (resolution, steps of 64 images)
    "224 px": ("mobilenetv2-imagenet", 224, ((64, 500), (224, 60))),
    "28 px": ("mobilenetv2", 28, ((28, 600),)),
}


def resized(split: datasets.Split, size: int, channels: int) -> datasets.Split:
    """Fashion-MNIST's 28x28 gray images at `size` px and `channels` channels, still uint8."""
    x = torch.from_numpy(split.x).float()
    if size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = x.round().clamp(0, 255).to(torch.uint8).expand(-1, channels, -1, -1)
    return datasets.Split(np.ascontiguousarray(x.numpy()), split.y)


def trained_network(space, d: datasets.Dataset, channels: int, size: int, phases, quick: bool):
    """The weights of the space's full-width float network, trained phase by phase (resolution, steps; each phase
    its own one-cycle schedule over fresh images), its batch norm then re-estimated at `size` px."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    mean, std = [d.mean[0]] * channels, [d.std[0]] * channels
    net = space.build(spaces.Candidate.of(space.name, space.baselines()["float"]))
    net.train()
    seen = 0
    for resolution, steps in phases:
        steps = min(steps, 5) if quick else steps
        train = resized(datasets.Split(d.train.x[seen:seen + steps * 64], d.train.y[seen:seen + steps * 64]),
                        resolution, channels)
        seen += steps * 64
        optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=4e-5)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.05, total_steps=steps)
        for idx in itertools.islice(batches(train, 64, g), steps):
            loss = F.cross_entropy(net(to_input(train.x[idx], mean, std, torch.device("cpu"))),
                                   torch.from_numpy(train.y[idx]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    recalibrate_bn(net, resized(datasets.Split(d.train.x[-1000:], d.train.y[-1000:]), size, channels), mean, std,
                   50, 20, g)
    return net.state_dict()


def measure(name: str, preset: str, size: int, phases, quick: bool, images: int, folder: Path) -> dict:
    d = datasets.load({"name": "fashion_mnist", "val_size": 0.1}, 0, ROOT / ".cache")
    conf = yaml.safe_load((ROOT / "conf" / "space" / f"{preset}.yaml").read_text())
    channels = 3 if size > 28 else 1
    space = spaces.create(**(conf | {"input_shape": (channels, size, size), "num_classes": d.num_classes}))
    weights = trained_network(space, d, channels, size, phases, quick)
    test = resized(datasets.Split(d.test.x[:images], d.test.y[:images]), size, channels)
    calibration = resized(datasets.Split(d.train.x[-1500:-1000], d.train.y[-1500:-1000]), size, channels)
    mean, std = [d.mean[0]] * channels, [d.std[0]] * channels
    x = parity.inputs(test, mean, std)
    out, files = {}, {}
    for kind, params in space.baselines().items():
        net = space.build(spaces.Candidate.of(space.name, params))
        net.load_state_dict(weights)
        net.eval()
        parity.torch_logits(net, parity.inputs(calibration, mean, std))  # the quantizers observe their ranges
        files[kind] = backend.export(net, (channels, size, size), folder / f"{name.replace(' ', '')}-{kind}.onnx")
        got = backend.outputs(files[kind], x, batch_size=50)
        as_file = parity.torch_logits(backend.reference(net, (channels, size, size)), x, batch_size=50)
        out[kind] = {"parity": parity.compare(got, parity.torch_logits(net, x, batch_size=50), test.y),
                     "gate": parity.compare(got, as_file, test.y), "kb": files[kind].stat().st_size / 1024}
    timings, reference = HostRunner(seed=0, **TIMING).measure(files, files["float"])
    drift = [t.median_ms for t in reference]
    for kind in out:
        out[kind]["ms"] = timings[kind].median_ms
    return {"cases": out, "drift": (max(drift) - min(drift)) / float(np.median(drift)),
            "trained": " then ".join(f"{min(n, 5) if quick else n} steps at {px} px" for px, n in phases),
            "images": len(test.y), "integer_kernels": backend.u8s8_saturates()}


def section(results: dict) -> str:
    lines = [f"Measured by `scripts/onnx_report.py` on {machine()}: the float full-width and uniform 8-bit baselines "
             "of one trained network, exported by the ONNX backend, checked against the torch network on Fashion-MNIST "
             "test images and timed together on onnxruntime (1 thread, batch 1, interleaved: "
             f"{TIMING['passes']} passes, each in a new shuffled order, median).", "",
             "| network | input | trained (steps of 64 images) | file | ONNX KB | test accuracy % (torch) "
             "| test accuracy % (ONNX) | top-1 agreement | agreement as gated | images | onnxruntime ms "
             "| speed-up over float (measured) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        preset, size, _ = CASES[name]
        base = r["cases"]["float"]["ms"]
        for kind, c in r["cases"].items():
            p = c["parity"]
            lines.append(f"| `{preset}` | {size} px | {r['trained']} | {kind} "
                         f"| {c['kb']:.1f} | {p.torch_accuracy:.2f} | {p.accuracy:.2f} | {p.agreement:.2f}% "
                         f"| {c['gate'].agreement:.2f}% "
                         f"| {p.images} | {c['ms']:.3f} | {base / c['ms']:.2f}x |")
    drift = max(r["drift"] for r in results.values())
    saturates = next(iter(results.values()))["integer_kernels"]
    lines += ["", "Top-1 agreement is with the torch network; as gated, with the network as the file rounds its "
              "int32 biases (`backends.onnx.reference`), which promote's parity gate checks (`min_agreement`). "
              f"The machine's speed varied by {drift:.0%} between passes, alike for every file. onnxruntime "
              "fuses every layer of the 8-bit file into an integer kernel (QLinearConv, QGemm, QLinearAdd). "
              + ("This CPU's u8s8 kernels saturate (no VNNI), so the session runs them as u8u8."
                 if saturates else "This CPU's u8s8 kernels are exact (VNNI): the session runs them as they are.")]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory(prefix="onnx-report-") as tmp:
        results = {name: measure(name, *case, quick=args.quick, images=50 if args.quick else 2000, folder=Path(tmp))
                   for name, case in CASES.items()}
    text = section(results)
    print(text)
    if not args.quick:
        write_readme(text, ROOT / "README.md", MARK)


if __name__ == "__main__":
    sys.exit(main())
