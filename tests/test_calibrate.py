"""Calibration (search/calibrate.py): the calibration set spans the space, the command line fits
and scores a predictor on measurement files and logs it to MLflow, a malformed file stops it with
one line, and the shipped Samsung A50 measurements still meet the accuracy bar.

Every test writes its predictor under tmp_path (target.predictor=...): the shipped
conf/predictors/snapdragon665.json is checked to be untouched."""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import spaces
from search import measurements
from search.calibrate import Request, calibrate, calibration_set, split
from search.config import compose, resolve
from search.errors import UserError
from search.latency import Predictor, features, for_target
from search.measurements import Measurement
from tests.cli import environment

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "conf" / "predictors" / "snapdragon665.json"
A50 = ROOT / "conf" / "measurements" / "fbnet_samsung_a50.csv"
MB_CONF = yaml.safe_load((ROOT / "conf" / "space" / "mobilenetv2.yaml").read_text())
FB = spaces.create("fbnet")
REPORT_KEYS = {"n", "mape", "within_5pct", "within_10pct", "spearman"}

# A known linear latency model over the fbnet (all-fp32) features; terms it leaves out cost nothing.
TRUE = {"network": 2.0}
for _cls, _f in (("dense", 1.0), ("grouped", 1.3), ("depthwise3", 2.0), ("depthwise5", 2.5)):
    TRUE |= {f"{_cls}.fp32.macs": 0.1 * _f, f"{_cls}.fp32.activations": 3.0 * _f,
             f"{_cls}.fp32.weights": 0.4 * _f, f"{_cls}.fp32.layers": 0.15 * _f}


def true_latency(candidate) -> float:
    return sum(TRUE.get(k, 0.0) * v for k, v in features(FB.layers(candidate), {32: "fp32"}, False).items())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(autouse=True, scope="module")
def shipped_predictor_untouched():
    before = sha256(SHIPPED)
    yield
    assert sha256(SHIPPED) == before, "a test overwrote conf/predictors/snapdragon665.json"


# --- calibration_set -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mobilenet():
    return spaces.create(**MB_CONF | {"input_shape": (1, 28, 28), "num_classes": 10})


def test_calibration_set_is_distinct_and_deterministic(mobilenet):
    a = calibration_set(mobilenet, 40, seed=3)
    assert len(a) == 40 and len(set(a)) == 40
    assert all(c.space == "mobilenetv2" for c in a)
    assert calibration_set(mobilenet, 40, seed=3) == a
    assert calibration_set(mobilenet, 40, seed=4) != a
    for c in a:
        assert mobilenet.decode(mobilenet.encode(c)) == c  # every one a valid network of the space


def test_calibration_set_spans_the_space(mobilenet):
    cs = calibration_set(mobilenet, 40, seed=0)
    layers = [mobilenet.layers(c) for c in cs]
    macs = [sum(x.macs for x in net) for net in layers]
    assert min(macs) < 0.3 * max(macs)
    mean_bits = [np.mean([x.bits for x in net]) for net in layers]
    assert max(mean_bits) - min(mean_bits) > 10
    assert min(mean_bits) < 8 and max(mean_bits) > 24  # low-bit and high-bit dominated ones
    # width and precision drawn apart: large low-bit networks and small float ones too, so a fit can tell them apart
    big, low = np.array(macs) > np.median(macs), np.array(mean_bits) < np.median(mean_bits)
    assert 0.25 < np.mean(big == low) < 0.75


def test_calibration_set_starts_with_the_baselines(mobilenet):
    cs = calibration_set(mobilenet, 10, seed=0)
    baselines = [spaces.Candidate.of(mobilenet.name, p) for p in mobilenet.baselines().values()]
    assert cs[:len(baselines)] == baselines and len(set(cs)) == 10


# --- split ---------------------------------------------------------------------------------------


def fbnet_rows(n: int, seed: int, start: int = 0) -> list[Measurement]:
    return [Measurement(str(start + i), c, true_latency(c)) for i, c in enumerate(calibration_set(FB, n, seed))]


def test_split_holds_out_a_seeded_share():
    rows = fbnet_rows(20, seed=0)
    fit_rows, held_out = split(rows, seed=0, holdout=0.25)
    assert len(held_out) == 5 and len(fit_rows) == 15
    assert sorted(r.arch_id for r in fit_rows + held_out) == sorted(r.arch_id for r in rows)
    assert split(rows, seed=0, holdout=0.25) == (fit_rows, held_out)
    assert split(rows, seed=1, holdout=0.25) != (fit_rows, held_out)
    fit3, held3 = split(rows, seed=0, holdout=0.25, fit_rows=3)
    assert fit3 == fit_rows[:3] and held3 == held_out
    given = fbnet_rows(4, seed=1, start=100)
    assert split(rows, seed=0, holdout=0.25, held_out=given)[1] == given  # an evaluate file: every row is fitted
    with pytest.raises(UserError, match="at least 2 rows to fit"):
        split(rows[:2], seed=0, holdout=0.5)


# --- the command line ----------------------------------------------------------------------------


def run_cli(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    (tmp_path / "home").mkdir(exist_ok=True)
    return subprocess.run([sys.executable, "-m", "search.calibrate", *overrides], cwd=tmp_path,
                          env=environment(tmp_path / "home"), capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cli_fits_scores_saves_and_logs(tmp_path):
    rows = [Measurement(r.arch_id, r.candidate, r.latency_ms, iqr_ms=0.02 * r.latency_ms, runs=10)
            for r in fbnet_rows(120, seed=11)]
    fit_rows, eval_rows = rows[:80], rows[80:]
    measurements.write(tmp_path / "FIT.csv", FB, fit_rows)
    measurements.write(tmp_path / "EVAL.csv", FB, eval_rows)
    predictor_path, db = tmp_path / "out" / "pred.json", tmp_path / "m.db"

    # the target's own rows only (`target.published=null`): these are synthetic, from one cost model, and the
    # published sets would pull the shared structure towards theirs
    result = run_cli(tmp_path, "target=snapdragon665", "space=fbnet", "benchmarks=FIT.csv", "evaluate=EVAL.csv",
                     "target.published=null", f"target.predictor={predictor_path}", f"tracking.uri=sqlite:///{db}")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert REPORT_KEYS <= report.keys()
    assert report["n"] == len(eval_rows)
    console = result.stdout + result.stderr  # libraries' INFO lines go to the run folder's log file only
    assert "Creating initial MLflow database tables" not in console and not re.search(r"\bINFO\b", console)
    log = (tmp_path / "outputs" / "calibrate" / "snapdragon665" / "calibrate.log").read_text()
    assert "Creating initial MLflow database tables" in log
    assert report["within_10pct"] > 0.95 and report["within_5pct"] > 0.9
    assert report["mape"] < 0.02 and report["spearman"] > 0.99
    assert report["noise_floor"] == pytest.approx(0.02)

    predictor = Predictor.load(predictor_path)
    target = resolve(compose(["target=snapdragon665"], "calibrate"))["target"]
    assert predictor.target == "snapdragon665" and predictor.scale == target["proxy"]["scale"]
    assert for_target(target | {"predictor": str(predictor_path)}) == predictor
    provenance = predictor.provenance
    assert provenance["digest"] == measurements.digest(fit_rows)
    assert provenance["fit_rows"] == len(fit_rows) and provenance["heldout_rows"] == len(eval_rows)
    assert provenance["measurements"] == str(tmp_path / "FIT.csv")
    proxy = f"{target['proxy']['device']}; {target['proxy']['assumption']}"
    assert provenance["proxy"] == proxy
    assert predictor.describe()["latency.proxy"] == proxy
    assert predictor.describe()["latency.measurements_sha256"] == measurements.digest(fit_rows)
    assert provenance["report"]["within_10pct"] == report["within_10pct"]

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("calibration")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    for key in REPORT_KEYS:
        assert run.data.metrics[key] == pytest.approx(report[key]), key
    assert run.data.params["digest"] == measurements.digest(fit_rows)
    assert run.data.params["target"] == "snapdragon665" and run.data.params["space"] == "fbnet"
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["pred.json"]
    copy = Path(client.download_artifacts(run.info.run_id, "pred.json", str(tmp_path / "dl")))
    assert copy.read_bytes() == predictor_path.read_bytes()


@pytest.mark.slow
def test_cli_malformed_benchmarks_exit_2_with_one_line(tmp_path):
    measurements.write(tmp_path / "BAD.csv", FB, fbnet_rows(6, seed=1))
    lines = (tmp_path / "BAD.csv").read_text().splitlines()
    lines[2] = lines[2].replace("k3_e1", "k7_e1").replace("k5_e6", "k7_e1").replace("skip", "k7_e1")
    assert "k7_e1" in lines[2]
    (tmp_path / "BAD.csv").write_text("\n".join(lines) + "\n")
    predictor_path = tmp_path / "out" / "pred.json"

    result = run_cli(tmp_path, "target=snapdragon665", "space=fbnet", "benchmarks=BAD.csv",
                     f"target.predictor={predictor_path}", f"tracking.uri=sqlite:///{tmp_path / 'm.db'}")
    assert result.returncode == 2, result.stderr
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1, result.stderr
    assert "BAD.csv:3:" in errors[0] and "column ops" in errors[0] and "k7_e1" in errors[0]
    assert not predictor_path.exists()
    assert not (tmp_path / "out").exists()
    assert result.stdout.strip() == ""


# --- the shipped A50 measurements ----------------------------------------------------------------


def test_a50_fit_on_100_rows_meets_the_bar(tmp_path, monkeypatch):
    """A real-data regression check: 100 random rows fitted, the other 4,900 scored."""
    monkeypatch.chdir(tmp_path)  # MLflow puts a sqlite store's artifacts under ./mlruns
    cfg = resolve(compose(["target=snapdragon665", "space=fbnet", "fit_rows=100", "holdout=0.98",
                           f"target.predictor={tmp_path}/p.json", f"tracking.uri=sqlite:///{tmp_path}/m.db"],
                          "calibrate"))
    report = calibrate(Request.of(cfg))
    assert report.n == 4900
    # measured 90.7% (34 rows above the bar) and 0.882 (AMD EPYC; fitted with the published sets, as the target is); a seeded split and a
    # deterministic fit, so only float rounding differs between CPUs
    assert report.within_10pct >= 0.90
    assert report.spearman > 0.85
    predictor = for_target(cfg["target"])
    assert predictor.provenance["fit_rows"] == 100 and predictor.provenance["heldout_rows"] == 4900
    assert predictor.provenance["measurements"] == "conf/measurements/fbnet_samsung_a50.csv"
    assert predictor.provenance["digest"] == measurements.digest(measurements.read(A50, FB))
    assert all(c >= 0 for c in predictor.coefficients.values())
    assert list((tmp_path / "mlruns").rglob("p.json")), "the predictor is logged as an artifact"


@pytest.mark.slow
def test_cli_measuring_on_this_host_shows_progress_and_keeps_library_logs_in_the_file(tmp_path):
    result = run_cli(tmp_path, "target=host", "runner=host", "networks=4", "runner.warmup=1", "runner.passes=3",
                     "runner.min_seconds=0", f"cache_dir={tmp_path}/cache", f"tracking.uri=sqlite:///{tmp_path}/m.db")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "exporting: 100%" in result.stderr and "4/4" in result.stderr
    assert "measuring 4 networks: 100%" in result.stderr
    console = result.stdout + result.stderr
    assert not re.search(r"\bINFO\b|Replaced initializer|Increased scale", console), console[-3000:]
    assert re.search(r"\[INFO\]", (tmp_path / "outputs" / "calibrate" / "host" / "calibrate.log").read_text())
