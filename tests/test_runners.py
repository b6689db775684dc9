"""The runner contract, over every registered runner: each is built from its `conf/runner/<kind>.yaml` (the
settings a user composes), honours `runners.Runner`, and runs the files of the backend its configuration
says, so a target's `file` and its runner are checked against each other before anything is measured.
How each one measures is tested with its runtime in test_host_runner.py, test_litert.py and test_adb_runner.py."""
from pathlib import Path

import pytest
import yaml

from search import backends, runners
from search.calibrate import make_runner
from search.config import ConfigError
from tests.conftest import SERIAL

CONF = Path(__file__).resolve().parents[1] / "conf" / "runner"


def configured(kind: str, tmp_path: Path) -> dict:
    cfg = yaml.safe_load((CONF / f"{kind}.yaml").read_text())
    if kind == "adb":  # what a user must give: the phone and the tool's Android build
        (tmp_path / "benchmark_model").write_bytes(b"\x7fELF")
        cfg |= {"serial": SERIAL, "binary": str(tmp_path / "benchmark_model")}
    return cfg


@pytest.mark.parametrize("kind", list(runners.RUNNERS))
def test_every_runner_is_built_from_its_config_and_honours_the_contract(kind, tmp_path):
    cfg = configured(kind, tmp_path)
    runner = runners.make(cfg, seed=0)
    assert isinstance(runner, runners.get(kind))
    for method in ("measure", "settings"):
        assert callable(getattr(runner, method))
    assert runner.backend in backends.BACKENDS
    assert runners.backend_of(cfg) == runner.backend  # known before the runner starts


@pytest.mark.parametrize("kind", list(runners.RUNNERS))
def test_a_setting_the_runner_does_not_take_names_the_runner(kind, tmp_path):
    with pytest.raises(ConfigError, match=f"runner: {kind} runner: .*bogus"):
        make_runner(configured(kind, tmp_path) | {"bogus": 1}, 0)


def test_an_unknown_runner_names_the_choices():
    with pytest.raises(ValueError, match="one of host, litert, adb"):
        runners.get("snpe")
