"""Who may write where, across processes: one driver per study, and one process at a time creating
a SQLite store (MLflow and Optuna both create their tables on first use, and two processes doing it
at once collide: "table ... already exists"). Advisory file locks, released by the OS when a process
ends however it ends (even SIGKILL), so a dead process never blocks the next one. And one process at a time
training a supernet into a shared cache: the others wait and load what it saved."""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import UserError

SQLITE = "sqlite:///"


@contextmanager
def driver(folder: Path, study: str) -> Iterator[None]:
    """Held while a driver runs `study`; a second driver stops at once, before writing anything."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "driver.lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            raise UserError(f"study.name: study {study!r} is being run by another process "
                            f"(pid {lock.read().strip() or '?'}, lock {folder / 'driver.lock'}); wait for it to end "
                            "or stop it, then run the same command to resume") from None
        lock.truncate(0)
        lock.write(str(os.getpid()))
        lock.flush()
        yield


@contextmanager
def sqlite_setup(url: str) -> Iterator[None]:
    """Held while a store at `url` is opened for the first time in this process (no-op unless SQLite)."""
    if not url.startswith(SQLITE):
        yield
        return
    with exclusive(Path(url[len(SQLITE):])):
        yield


@contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Held while this process makes `path` (a store or a cache entry others may be making at the same time)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
