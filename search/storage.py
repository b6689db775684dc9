"""Where a study's trials live: the Optuna storage `study.storage` names, else an append-only journal in the
study's folder (`study.dir`: safe to resume after a crash, and cheap, a few ms per trial). The driver, promote,
the preflight checks and the benchmarks all open it here."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import optuna
from optuna.storages.journal import JournalFileBackend, JournalStorage

from . import locks

JOURNAL = "optuna.journal"


def journal(folder: str | Path) -> JournalStorage:
    """The journal in a study's folder (created with its folder when missing)."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(Path(folder) / JOURNAL)))


@dataclass(frozen=True)
class Location:
    """Where a study lives: its name, its folder (the run folder: journal, front, promoted files) and the Optuna
    storage URL `study.storage` names (None: the journal in the folder)."""

    name: str
    folder: Path
    url: str | None = None

    @classmethod
    def of(cls, study: Mapping[str, Any]) -> Location:
        """From the config's `study` section."""
        return cls(study["name"], Path(study["dir"]), study["storage"] or None)


def for_study(where: Location) -> optuna.storages.BaseStorage | str:
    """The study's storage, for creating or loading it: a SQLite store is opened (its tables created) under a
    file lock, so studies started at once against one store do not race to create them."""
    if where.url:
        with locks.sqlite_setup(where.url):
            return optuna.storages.RDBStorage(where.url) if where.url.startswith(locks.SQLITE) else where.url
    return journal(where.folder)


def existing(where: Location) -> optuna.Study | None:
    """The study if its storage already holds it (else None), opened without writing anything."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        if where.url:
            if where.url.startswith(locks.SQLITE) and not Path(where.url[len(locks.SQLITE):]).exists():
                return None
            store: optuna.storages.BaseStorage = optuna.storages.RDBStorage(where.url, skip_table_creation=True)
        else:
            path = where.folder / JOURNAL
            if not path.exists():
                return None
            store = JournalStorage(JournalFileBackend(str(path)))
        return optuna.load_study(study_name=where.name, storage=store, sampler=optuna.samplers.RandomSampler())
    except (KeyError, SQLAlchemyError, optuna.exceptions.StorageInternalError):  # no such study; no Optuna tables yet
        return None


def load(folder: str | Path, name: str) -> optuna.Study:
    """A finished study in its folder's journal, for reading (the reports and benchmarks)."""
    path = Path(folder) / JOURNAL
    if not path.is_file():
        raise FileNotFoundError(f"no study journal at {path}")
    return optuna.load_study(study_name=name, storage=JournalStorage(JournalFileBackend(str(path))))
