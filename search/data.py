"""Real image-classification datasets as plain uint8 numpy arrays, split by seed.

Nothing here unpickles (loading a file must never run code) or downloads: MNIST and Fashion-MNIST are
fetched once into the cache by `search.fetch`; every other data set is read where the user keeps it.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, SupportsInt, cast

import numpy as np

from spaces.registry import Registry

from search import fetch
from search.errors import DataError
from search.fetch import IDX_FILES

if TYPE_CHECKING:
    import torch

CIFAR_RECORD = 1 + 3 * 32 * 32
CIFAR_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR_TEST = "test_batch.bin"
CIFAR_BINARY_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"


@dataclass(frozen=True)
class Split:
    x: np.ndarray  # uint8, (N, C, H, W), C-contiguous
    y: np.ndarray  # int64, (N,)


@dataclass(frozen=True)
class Dataset:
    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train.x.shape[1:]
        return int(c), int(h), int(w)


@dataclass(frozen=True)
class Source:
    """The data config, checked (`of`): which data set, where the user's files are, how it is split."""

    name: str
    val_size: float  # of the pool that training and validation are split from
    test_size: float | None = None  # data sets without a test split of their own
    limit: int | None = None  # keep at most this many training images
    root: Path | None = None  # the user's files; None: fetched into the cache
    image_size: int | None = None  # imagefolder: images are resized to this

    @classmethod
    def of(cls, cfg: Mapping) -> Source:
        """The data group of the config, checked value by value (not its files), naming the key: a known name,
        fractions in (0, 1), whole numbers where they belong, a root for the data sets that read the user's files."""
        name = cfg.get("name")
        if not isinstance(name, str) or name not in NAMES:
            raise DataError(f"data.name must be one of {', '.join(NAMES)}, got {name!r}")
        limit, root, image_size = cfg.get("limit"), cfg.get("root"), cfg.get("image_size")
        if limit is not None and not _is_int(limit, minimum=1):
            raise DataError(f"data.limit must be a positive integer or null, got {limit!r}")
        test_size = None
        if name == "digits" or (name == "imagefolder" and cfg.get("test_size") is not None):
            test_size = _fraction(cfg.get("test_size"), "test_size")
        if name == "imagefolder" and not _is_int(image_size, minimum=1):
            raise DataError(f"data.image_size must be a positive integer, got {image_size!r}")
        if root is not None or name in ("cifar10", "imagefolder"):
            if not isinstance(root, (str, Path)) or not str(root):
                need = "set to a folder" if name in ("cifar10", "imagefolder") else "a folder or null"
                raise DataError(f"data.root must be {need} for data.name={name}, got {root!r}")
            root = Path(str(root)).expanduser()
        return cls(name, _fraction(cfg.get("val_size"), "val_size"), test_size,
                   None if limit is None else int(limit), root,
                   int(cast(SupportsInt, image_size)) if name == "imagefolder" else None)  # _is_int checked it


def load(source: Source | Mapping, seed: int, cache_dir: str | Path) -> Dataset:
    """Load the dataset `source` names (a data config is checked into one) and split it; the same seed always gives
    the same arrays."""
    source = source if isinstance(source, Source) else Source.of(source)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise DataError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    seed = int(seed)
    pool, test = LOADERS[source.name](source, seed, Path(cache_dir).expanduser())

    train_idx, val_idx = _split(pool.y, source.val_size, seed, "data.val_size")
    if source.limit is not None and source.limit < len(train_idx):
        keep, _ = _split(pool.y[train_idx], len(train_idx) - source.limit, seed, "data.limit")
        train_idx = train_idx[keep]
    train, val = _partition(pool, train_idx, val_idx)
    mean, std = _channel_stats(train.x)
    num_classes = int(max(pool.y.max(), test.y.max())) + 1
    return Dataset(source.name, train, val, test, num_classes, mean, std)


# A data set is a loader: (its checked source, the seed, the cache folder) -> (the pool train and validation are split
# from, the test split), registered here, plus conf/data/<name>.yaml. Each reads real files and never unpickles.
def load_mnist(src: Source, seed: int, cache: Path) -> tuple[Split, Split]:
    return _load_idx_set(cache / "mnist", fetch.mnist)


def load_fashion_mnist(src: Source, seed: int, cache: Path) -> tuple[Split, Split]:
    return _load_idx_root(_root(src)) if src.root is not None else _load_idx_set(cache / "fashion_mnist",
                                                                                 fetch.fashion_mnist)


def load_digits(src: Source, seed: int, cache: Path) -> tuple[Split, Split]:
    return _load_digits(cast(float, src.test_size), seed)  # Source.of sets it for digits


def load_cifar10(src: Source, seed: int, cache: Path) -> tuple[Split, Split]:
    return _load_cifar10(_root(src))


def load_imagefolder(src: Source, seed: int, cache: Path) -> tuple[Split, Split]:
    return _load_imagefolder(_root(src), cast(int, src.image_size), src.test_size, seed)  # Source.of sets it


LOADERS = Registry("data", {"mnist": "search.data:load_mnist", "fashion_mnist": "search.data:load_fashion_mnist",
                            "digits": "search.data:load_digits", "cifar10": "search.data:load_cifar10",
                            "imagefolder": "search.data:load_imagefolder"})
NAMES = tuple(LOADERS)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 batch (N,C,H,W) -> float32 ((x/255 - mean)/std) on x's device; the one place for this."""
    import torch  # here: reading and checking data needs no torch, so a bad setting is reported without waiting for it

    m = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return (x.to(torch.float32) / 255.0 - m) / s


# --- config checks -------------------------------------------------------------------------------


def _is_int(v: object, minimum: int) -> bool | np.bool_:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= minimum


def _fraction(v: object, key: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
        raise DataError(f"data.{key} must be a number in (0, 1), got {v!r}")
    return float(v)


def _root(source: Source) -> Path:
    """The user's data folder, which must exist and hold something."""
    root = cast(Path, source.root)  # callers pass a source with a root
    if not root.exists():
        raise DataError(f"data.root does not exist: {root}")
    if not root.is_dir():
        raise DataError(f"data.root is not a folder: {root}")
    if not any(root.iterdir()):
        raise DataError(f"data.root is empty: {root}")
    return root


# --- splitting and statistics --------------------------------------------------------------------


def _split(y: np.ndarray, held: float | int, seed: int, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held out); stratified when the classes allow it, plain otherwise (tiny sets)."""
    from sklearn.model_selection import train_test_split  # here: a command that stops at a bad value starts faster

    idx = np.arange(len(y))
    try:
        return train_test_split(idx, test_size=held, random_state=seed, stratify=y)
    except ValueError:
        pass
    try:
        return train_test_split(idx, test_size=held, random_state=seed)
    except ValueError as e:
        raise DataError(f"{key}: cannot split {len(y)} examples ({e})") from None


def _partition(s: Split, *parts: np.ndarray) -> list[Split]:
    """Disjoint index sets of `s` as consecutive slices of its own array, each in its given order: the images are
    permuted in place (one image of scratch space), so a split costs no copy of the data set (at 224 px a copy per
    part held three times the data set at once). Images in no part end up after the last one; `s.x` is reordered."""
    order = np.concatenate([*parts, np.setdiff1d(np.arange(len(s.y)), np.concatenate(parts))]).astype(np.int64)
    done = np.zeros(len(order), dtype=bool)
    for start in range(len(order)):  # follow each cycle of the permutation: position i receives image order[i]
        if done[start] or order[start] == start:
            continue
        scratch, i = s.x[start].copy(), start
        while order[i] != start:
            s.x[i], done[i], i = s.x[order[i]], True, int(order[i])
        s.x[i], done[i] = scratch, True
    y = s.y[order].astype(np.int64)
    ends = np.cumsum([len(p) for p in parts])
    return [Split(s.x[a:b], y[a:b]) for a, b in zip([0, *ends[:-1]], ends)]


def _channel_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std of x/255 from a 256-bin histogram: exact, and no float copy of x.

    A constant channel (std 0) gets std 1.0 so that normalize() stays finite.
    """
    v = np.arange(256, dtype=np.float64) / 255.0
    counts = np.zeros((x.shape[1], 256), dtype=np.int64)
    for start in range(0, len(x), 64):  # a channel of 64 images at a time: bincount reads it as int64 (8x uint8)
        for c in range(x.shape[1]):
            counts[c] += np.bincount(x[start:start + 64, c].ravel(), minlength=256)
    means, stds = [], []
    for c in range(x.shape[1]):
        p = counts[c] / x[:, c].size
        mean = float(p @ v)
        std = float(np.sqrt(max(float(p @ v**2) - mean**2, 0.0)))
        means.append(mean)
        stds.append(std if std > 0 else 1.0)
    return tuple(means), tuple(stds)


# --- MNIST and Fashion-MNIST: four gzipped idx files ---------------------------------------------


def _load_idx_set(folder: Path, fetch: Callable[[Path], None]) -> tuple[Split, Split]:
    """The (training pool, test) splits from the idx files cached in `folder`, fetched first if one is missing."""
    if not all((folder / f).is_file() for f in IDX_FILES):
        fetch(folder)
    return _load_idx_folder(folder, "delete it to fetch again")


def _load_idx_root(root: Path) -> tuple[Split, Split]:
    """The user's own copy under data.root: read where it is, never fetched or changed."""
    missing = [f for f in IDX_FILES if not (root / f).is_file()]
    if missing:
        needs = ", ".join(IDX_FILES)
        raise DataError(f"data.root {root} lacks {', '.join(missing)} (it needs the four idx files {needs})")
    return _load_idx_folder(root, "replace it with a good copy")


def _load_idx_folder(folder: Path, remedy: str) -> tuple[Split, Split]:
    pool = _idx_split(folder / IDX_FILES[0], folder / IDX_FILES[1], remedy)
    test = _idx_split(folder / IDX_FILES[2], folder / IDX_FILES[3], remedy)
    return pool, test


def _read_idx(path: Path, ndim: int, remedy: str) -> np.ndarray:
    """Parse a gzipped idx file of unsigned bytes (magic 0x08, then `ndim` big-endian sizes)."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path} is not a readable gzip file ({e}); {remedy}") from None
    head = 4 + 4 * ndim
    if len(raw) < head or int.from_bytes(raw[:4], "big") != 0x0800 + ndim:
        raise DataError(f"{path} has a bad idx magic number; {remedy}")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    if len(raw) != head + int(np.prod(dims)):
        raise DataError(f"{path} has {len(raw) - head} data bytes, header says {dims}; {remedy}")
    return np.frombuffer(raw, np.uint8, offset=head).reshape(dims)


def _idx_split(images: Path, labels: Path, remedy: str) -> Split:
    x, y = _read_idx(images, 3, remedy), _read_idx(labels, 1, remedy)
    if x.shape[1:] != (28, 28) or len(x) != len(y):
        raise DataError(f"{images} holds {x.shape} images for {len(y)} labels in {labels}; {remedy}")
    if y.max(initial=0) > 9:
        raise DataError(f"{labels} has labels outside 0..9; {remedy}")
    return Split(x[:, None].copy(), y.astype(np.int64))  # copy: frombuffer arrays are read-only


# --- digits --------------------------------------------------------------------------------------


def _load_digits(test_size: float, seed: int) -> tuple[Split, Split]:
    from sklearn.datasets import load_digits

    d = load_digits()
    every = Split(np.rint(d.images * (255 / 16)).astype(np.uint8)[:, None], d.target.astype(np.int64))
    pool_idx, test_idx = _split(every.y, test_size, seed, "data.test_size")
    pool, test = _partition(every, pool_idx, test_idx)
    return pool, test


# --- CIFAR-10 (binary version only) --------------------------------------------------------------


def _load_cifar10(root: Path) -> tuple[Split, Split]:
    folder = _cifar_folder(root)
    pool = [_read_cifar_bin(folder / f) for f in CIFAR_TRAIN]
    train = Split(np.concatenate([s.x for s in pool]), np.concatenate([s.y for s in pool]))
    return train, _read_cifar_bin(folder / CIFAR_TEST)


def _cifar_folder(root: Path) -> Path:
    """Where the .bin files are; refuses the pickled python version rather than run its code."""
    for folder in (root / "cifar-10-batches-bin", root):
        if (folder / CIFAR_TRAIN[0]).is_file():
            return folder
    if (root / "cifar-10-batches-py").is_dir() or (root / "data_batch_1").is_file():
        raise DataError(
            f"data.root {root} holds only the python (pickle) version of CIFAR-10, which is not loaded "
            f"because unpickling runs code; download the binary version ({CIFAR_BINARY_URL}) and extract it there"
        )
    raise DataError(
        f"data.root {root} has no CIFAR-10 binary files (cifar-10-batches-bin/{CIFAR_TRAIN[0]} ...); "
        f"extract {CIFAR_BINARY_URL} there"
    )


def _read_cifar_bin(path: Path) -> Split:
    """Records of 1 label byte + 3072 pixel bytes (1024 R, 1024 G, 1024 B, row-major)."""
    if not path.is_file():
        raise DataError(f"missing CIFAR-10 file {path}")
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % CIFAR_RECORD:
        raise DataError(f"{path} is {raw.size} bytes, not a positive multiple of the {CIFAR_RECORD}-byte record")
    rec = raw.reshape(-1, CIFAR_RECORD)
    if rec[:, 0].max() > 9:
        raise DataError(f"{path} has labels outside 0..9")
    return Split(np.ascontiguousarray(rec[:, 1:].reshape(-1, 3, 32, 32)), rec[:, 0].astype(np.int64))


# --- ImageFolder ---------------------------------------------------------------------------------


def _load_imagefolder(root: Path, size: int, test_size: object, seed: int) -> tuple[Split, Split]:
    """root/<class>/<image>; root/train + root/test are the pools when both exist, else root is split."""
    if (root / "train").is_dir() and (root / "test").is_dir():
        pool, classes = _read_imagefolder(root / "train", size)
        test, test_classes = _read_imagefolder(root / "test", size)
        unknown = sorted(set(test_classes) - set(classes))
        if unknown:
            raise DataError(f"data.root {root / 'test'} has classes missing from train/: {', '.join(unknown)}")
        remap = np.array([classes.index(c) for c in test_classes], dtype=np.int64)
        return pool, Split(test.x, remap[test.y])
    every, _ = _read_imagefolder(root, size)
    frac = _fraction(test_size, "test_size")
    pool_idx, test_idx = _split(every.y, frac, seed, "data.test_size")
    pool, test = _partition(every, pool_idx, test_idx)
    return pool, test


def _read_imagefolder(folder: Path, size: int) -> tuple[Split, list[str]]:
    """Decode every image (as RGB, resized to size x size) into one uint8 array, naming any bad file."""
    from PIL import UnidentifiedImageError
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    try:
        ds = ImageFolder(str(folder))
    except (FileNotFoundError, OSError) as e:
        raise DataError(f"data.root {folder} has no usable class folders with images ({e})") from None
    to_uint8 = transforms.Compose([transforms.Resize((size, size)), transforms.PILToTensor()])
    x = np.empty((len(ds.samples), 3, size, size), dtype=np.uint8)
    for i, (path, _) in enumerate(ds.samples):
        try:
            x[i] = to_uint8(ds.loader(path)).numpy()
        except UnidentifiedImageError:
            raise DataError(f"cannot read image {path}: not an image file") from None
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read image {path}: {e}") from None
    y = np.array([label for _, label in ds.samples], dtype=np.int64)
    return Split(x, y), list(ds.classes)
