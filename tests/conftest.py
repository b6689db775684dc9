import json
import os
import stat
import sys
from pathlib import Path

import pytest

ADB_FIXTURES = Path(__file__).parent / "fixtures" / "adb"
SERIAL = "R5CT12ABC"  # the phone the fake adb has; OFFLINE9 is there but offline


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    """One cache folder for the session's end-to-end studies, shared by pytest-xdist's workers too: the digits
    supernet (tests/cli.DIGITS) is trained by the first study and loaded by the others (a study waits while
    another trains the same supernet)."""
    folder = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        folder = folder.parent  # the run's folder, above each worker's own
    (folder / "shared-cache").mkdir(exist_ok=True)
    return folder / "shared-cache"


@pytest.fixture
def fake_adb(tmp_path, monkeypatch):
    """`adb` first on PATH, running fixtures/adb/fake_adb.py under this interpreter; returns the call log reader."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "adb"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{ADB_FIXTURES / "fake_adb.py"}" "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "adb.log"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_ADB_LOG", str(log))
    monkeypatch.setenv("FAKE_ADB_DEVICES", f"{SERIAL}:device,OFFLINE9:offline")
    return lambda: [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []



# The files that take longest (seconds each took on one of two workers, 2-core AMD EPYC), handed out first:
# pytest-xdist gives each worker whole files in collection order, so the long ones start at once and the
# quick ones fill in at the end instead of one long file running alone after the rest.
LONGEST = ["test_end_to_end.py",      # 400
           "test_faults.py",          # 230
           "test_bench_overhead.py",  # 130
           "test_litert.py",          # 127
           "test_study.py",           # 107
           "test_calibrate.py",       # 100
           "test_cluster.py",         # 96
           "test_bench_search.py"]    # 70


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST)))  # stable: the others keep their order
