"""No network is evaluated twice: a candidate's identity is the network it builds, and the driver tells a
trial of a network already evaluated (or being evaluated) that result instead of training it again. The
driver runs here on fake workers (tests/drivers.py): nothing trains, so no Ray."""
from __future__ import annotations

import numpy as np
import optuna
import pytest
import torch
from mlflow import MlflowClient

import spaces
from search import front, pareto
from search.study_config import StudyConfig
from spaces.candidate import identity
from tests.drivers import FakeWorkers, config, digits_space, make_driver, runs

optuna.logging.set_verbosity(optuna.logging.WARNING)


# --- identity -----------------------------------------------------------------------------------------


def test_choices_that_build_the_same_network_are_the_same_network(tmp_path):
    """Widths 0.2 and 0.25 both round the 16-channel stem to 4 channels; sparsity 0.1 of a 16-channel expansion
    rounds back to 16 channels (no effect). Their networks are identical, weights included; other choices differ."""
    space = digits_space(config(tmp_path, 2), widths=[0.2, 0.25, 1.0], sparsity=[0.0, 0.1])
    base = space.baselines()["float"] | {"width.stem": 0.25, "width.s0": 0.25}
    a = spaces.Candidate.of(space.name, base)
    b = spaces.Candidate.of(space.name, base | {"width.stem": 0.2, "sparsity.b1.expand": 0.1})
    assert a != b and identity(space, a) == identity(space, b) and hash(identity(space, a)) == hash(identity(space, b))
    torch.manual_seed(0)
    supernet = space.supernet()
    built = space.subnet(supernet, a).state_dict(), space.subnet(supernet, b).state_dict()
    assert built[0].keys() == built[1].keys() and all(torch.equal(built[0][k], built[1][k]) for k in built[0])

    others = [base | {"width.stem": 1.0}, base | {"bits.head": 8}, base | {"sparsity.b1.expand": 0.1, "width.s0": 1.0}]
    keys = {identity(space, spaces.Candidate.of(space.name, p)) for p in [base, *others]}
    assert len(keys) == 4
    float_, int8 = (identity(space, spaces.Candidate.of(space.name, p)) for p in space.baselines().values())
    assert float_ != int8  # the baselines enqueued at study start are never repeats of each other
    plain = (str, int, float, type(None))  # None: a layer whose residual add a space leaves to the predictor
    assert all(isinstance(v, plain) or all(isinstance(x, plain) or all(isinstance(y, plain) for y in x) for x in v)
               for v in identity(space, a))


# --- the driver ---------------------------------------------------------------------------------------


def test_a_repeat_of_a_complete_trial_is_told_its_result_and_not_trained(tmp_path, capsys):
    """A sampler that proposes only the float network after the baselines: every further trial is a repeat of
    trial 0 (same values, metrics, weights; repeat_of), costs no Ray slot, and the study still ends at n_trials."""
    cfg = config(tmp_path, 5)
    float_params = digits_space(cfg).baselines()["float"]
    workers = FakeWorkers(slots=1)
    d = make_driver(cfg, workers, optuna.samplers.PartialFixedSampler(float_params, optuna.samplers.RandomSampler(0)))
    d.loop()
    assert workers.submitted == [0, 1] and d.complete == 5 and d.repeats == 3
    trials = d.study.trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 5
    for t in trials[2:]:
        assert t.user_attrs["repeat_of"] == 0 and t.values == trials[0].values and t.params == trials[0].params
        assert {k: v for k, v in t.user_attrs.items() if k != "repeat_of"} == \
            {k: v for k, v in trials[0].user_attrs.items() if k != "baseline"}
    assert trials[0].user_attrs["accuracy"] == 90.0 and "repeat_of" not in trials[0].user_attrs

    by_number, client = runs(cfg), MlflowClient(cfg["tracking"]["uri"])
    for n in (2, 3, 4):
        run = by_number[n]
        assert run.info.status == "FINISHED" and run.data.tags["repeat_of"] == "0"
        assert run.data.metrics == by_number[0].data.metrics  # repeat_of is a tag, not a metric
        assert "weights.npz" in {f.path for f in client.list_artifacts(run.info.run_id)}
    assert "repeat_of" not in by_number[0].data.tags

    pts = pareto.points(trials, cfg["objectives"])
    assert [p.trial for p in pts] == [0, 1]  # the front holds the original only
    assert "repeats=3" in capsys.readouterr().err  # the progress bar
    front.summary(pts, StudyConfig.of(cfg), "1", d.complete, d.repeats)
    assert "5 complete trials (3 repeats" in capsys.readouterr().out


@pytest.mark.parametrize("fails", [False, True])
def test_a_repeat_of_a_running_trial_waits_for_its_result(tmp_path, fails):
    """Trial 2 proposes the int8 network while trial 1 still trains it: it takes no slot, and gets trial 1's
    result when that arrives; if trial 1 fails, it fails with it (the sampler may propose the network again)."""
    cfg = config(tmp_path, 3)
    space = digits_space(cfg)
    workers = FakeWorkers(slots=2, fail={1} if fails else set(), duration=lambda n: 1 + n)  # 0 ends first
    d = make_driver(cfg, workers)
    d.study.enqueue_trial(space.baselines()["int8"])
    d.loop()
    trials = d.study.trials
    State = optuna.trial.TrialState
    if not fails:
        assert workers.submitted == [0, 1] and d.repeats == 1 and d.failed == 0
        assert trials[2].state == State.COMPLETE and trials[2].user_attrs["repeat_of"] == 1
        assert trials[2].values == trials[1].values == [91.0, trials[1].user_attrs["latency_ms"]]
        with np.load(MlflowClient(cfg["tracking"]["uri"]).download_artifacts(
                runs(cfg)[2].info.run_id, "weights.npz", str(tmp_path))) as npz:
            assert npz["w"].tolist() == [1.0, 1.0, 1.0]  # trial 1's weights
    else:
        assert workers.submitted[:2] == [0, 1] and 2 not in workers.submitted and d.failed == 2
        assert [trials[1].state, trials[2].state] == [State.FAIL, State.FAIL]
        error = runs(cfg)[2].data.tags["error"]
        assert error.startswith("repeat of trial 1, which failed: RuntimeError")
        assert d.complete == 3 and d.repeats == 0  # the study went on with other networks


def test_a_resumed_study_knows_the_networks_of_its_earlier_runs(tmp_path):
    cfg = config(tmp_path, 2)
    first = FakeWorkers(slots=2)
    make_driver(cfg, first).loop()
    assert first.submitted == [0, 1]

    cfg = config(tmp_path, 3)  # resumed: a new driver, a study loaded from the journal, a new Tracker
    again = FakeWorkers(slots=2)
    d = make_driver(cfg, again)
    assert len(d.evaluated) == 2 and d.complete == 2
    d.study.enqueue_trial(digits_space(cfg).baselines()["int8"])
    d.loop()
    assert again.submitted == [] and d.repeats == 1
    t = d.study.trials[2]
    assert t.user_attrs["repeat_of"] == 1 and t.values == d.study.trials[1].values
    stored = MlflowClient(cfg["tracking"]["uri"]).list_artifacts(runs(cfg)[2].info.run_id)
    assert "weights.npz" in {f.path for f in stored}  # trial 1's, found through MLflow (an earlier driver's run)
    assert make_driver(cfg, FakeWorkers(slots=2)).repeats == 1  # counted again on the next resume
