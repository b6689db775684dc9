"""What every exported file shares, whatever its format: the signature names and how it is written."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

INPUT_NAME, OUTPUT_NAME = "input", "logits"


def save_atomically(path: Path, write: Callable[[str], None]) -> Path:
    """`write(tmp)` a file next to `path`, then move it into place: a reader never sees half a file and a
    failed export leaves nothing behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; the file is an ordinary artefact
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
