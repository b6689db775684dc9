"""Peak memory of loading an image folder: 10,000 generated images (10 classes, JPEG) read at 224 px by
`search.data.load` (`data=imagefolder data.image_size=224`: decoded into one uint8 array, split into train,
validation and test), in a fresh process, against the same process before it loads anything.

    .venv/bin/python scripts/data_memory.py            # 10,000 images at 224 px; rewrites README's `data-memory`
    .venv/bin/python scripts/data_memory.py --quick    # 200 images at 64 px: keeps the script working
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from readme_results import machine, write_readme

ROOT = Path(__file__).resolve().parent.parent
MARK = "data-memory"
LOAD = """import json, resource, sys
import sklearn.model_selection, torch, torchvision.datasets, torchvision.transforms  # what loading imports
from search import data
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
d = data.load({"name": "imagefolder", "root": sys.argv[1], "image_size": int(sys.argv[2]), "val_size": 0.1,
               "test_size": 0.2}, 0, sys.argv[3])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"before_mb": before / 1024, "peak_mb": peak / 1024, "images": {k: len(getattr(d, k).y)
      for k in ("train", "val", "test")}, "data_mb": sum(getattr(d, k).x.nbytes for k in ("train", "val", "test"))
      / 2**20}))
"""


def generate(folder: Path, n: int, classes: int = 10, size: int = 256) -> None:
    """`n` smooth random colour images (a few JPEG kilobytes each, as photos are), spread over `classes` folders."""
    rng = np.random.default_rng(0)
    for i in range(n):
        low = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        image = Image.fromarray(low).resize((size, size), Image.BILINEAR)
        (folder / f"c{i % classes}").mkdir(exist_ok=True)
        image.save(folder / f"c{i % classes}" / f"{i}.jpg", quality=90)


def measure(n: int, size: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="data-memory-") as tmp:
        images = Path(tmp) / "images"
        images.mkdir()
        generate(images, n)
        done = subprocess.run([sys.executable, "-c", LOAD, str(images), str(size), str(Path(tmp) / "cache")],
                              check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(done.stdout.strip().splitlines()[-1]) | {"n": n, "size": size}


def section(r: dict) -> str:
    split = ", ".join(f"{v} {k}" for k, v in r["images"].items())
    return (f"Measured by `scripts/data_memory.py` on {machine()}: {r['n']:,} generated JPEG images in 10 class "
            f"folders, loaded with `data=imagefolder data.image_size={r['size']}` ({split}) in a fresh process. "
            f"Peak memory of the process {r['peak_mb']:,.0f} MB, of which {r['before_mb']:,.0f} MB before it loads "
            "an image (Python and what loading imports: torch, torchvision, scikit-learn): **loading took "
            f"{r['peak_mb'] - r['before_mb']:,.0f} MB at its peak** (goal: under 2 GB), for {r['data_mb']:,.0f} MB of "
            "uint8 images held once: the splits are slices of the one array the images are decoded into, reordered "
            "in place, and the normalisation statistics are counted 64 images at a time.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    result = measure(200, 64) if args.quick else measure(10_000, 224)
    text = section(result)
    print(text)
    if not args.quick:
        write_readme(text, ROOT / "README.md", MARK)


if __name__ == "__main__":
    main()
