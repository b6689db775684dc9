"""A study made by older code still promotes: its MLflow run's recorded config parses into today's
`StudyConfig` (a key added since takes its default), its trial is rebuilt from the Optuna journal and
its MLflow weights, and both files pass their gates. The study is a fixture made by that code
(tests/fixtures/old-study/README.md says how)."""
import json
import sqlite3
import tarfile
from pathlib import Path

import pytest

from search.promotion import Promotion
from search.study_config import recorded
from search.tracking import Tracker
from tests.cli import command

pytestmark = pytest.mark.slow

FIXTURES = Path(__file__).parent / "fixtures" / "old-study"
MADE_IN = "/tmp/oldstudy"  # where the fixture's study was made: MLflow keeps its artifact paths absolute


def unpack(archive: Path, folder: Path) -> Path:
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    db = sqlite3.connect(folder / "mlflow.db")
    with db:
        db.execute("UPDATE experiments SET artifact_location = REPLACE(artifact_location, ?, ?)", (MADE_IN, str(folder)))
        db.execute("UPDATE runs SET artifact_uri = REPLACE(artifact_uri, ?, ?)", (MADE_IN, str(folder)))
    db.close()
    return folder


@pytest.fixture(params=sorted(FIXTURES.glob("*.tar.xz")), ids=lambda p: p.name.split(".")[0])
def old(request, tmp_path) -> Path:
    return unpack(request.param, tmp_path)


def test_its_recorded_config_parses_and_a_key_added_since_takes_its_default(old):
    raw = Tracker(f"sqlite:///{old / 'mlflow.db'}", "old", create=False).study_config()
    config = recorded(raw)
    assert config.name == "old" and config.data["name"] == "digits" and config.objectives == ("accuracy", "latency_ms")
    assert config.supernet["epochs"] == 1 and config.finetune["steps"] == 2
    del raw["supernet"]["init"], raw["ray"]["in_order"]  # as a study made before they existed recorded it
    older = recorded(raw)
    assert older.supernet["init"] is None and older.ray.in_order and older.supernet["epochs"] == 1


def test_it_promotes(old):
    done = command(old, "search.promote", "study.name=old", "study.dir=study", "tracking.uri=sqlite:///mlflow.db",
                   f"cache_dir={old / 'cache'}", "trial=0")
    assert done.returncode == 0, done.stderr[-3000:]
    promotion = json.loads(done.stdout.strip().splitlines()[-1])
    assert promotion["trial"] == 0 and promotion["new_version"]
    assert promotion["format"] == Promotion.FORMAT
    assert all((old / f.path).is_file() for f in Promotion.from_json(promotion).files)  # under study.dir


VERSIONS = Path(__file__).parent / "fixtures" / "old-version"


@pytest.mark.parametrize("archive", sorted(VERSIONS.glob("*.tar.xz")), ids=lambda p: p.name.split(".")[0])
def test_a_version_registered_by_older_code_is_promoted_again(archive, tmp_path):
    """Its `promotion` tag is in the form that code wrote (format 1: fixed onnx_*, tflite_* fields); promoting the
    same trial again moves the alias and reports the version's files in today's form."""
    old = unpack(archive, tmp_path)
    tag = json.loads(Tracker(f"sqlite:///{old / 'mlflow.db'}", "old", create=False).registered("old", "old", 0)
                     .tags["promotion"])
    done = command(old, "search.promote", "study.name=old", "study.dir=study", "tracking.uri=sqlite:///mlflow.db",
                   f"cache_dir={old / 'cache'}", "trial=0", "alias=champion")
    assert done.returncode == 0, done.stderr[-3000:]
    p = Promotion.from_json(json.loads(done.stdout.strip().splitlines()[-1]))
    assert (p.trial, p.version, p.alias, p.new_version) == (0, "1", "champion", False)
    assert [f.backend for f in p.files] == ["onnx", "litert"]
    onnx = p.file("onnx")
    assert (onnx.test_accuracy, onnx.agreement) == (tag["onnx_test_accuracy"], tag["onnx_agreement"])
    assert (p.file("litert").test_accuracy, p.file("litert").kb) == (tag["tflite_test_accuracy"], tag["tflite_kb"])
