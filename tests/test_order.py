"""Tell order: with `ray.in_order`, what the sampler has seen when it proposes a trial depends on the trial's number
alone, so the same seed makes the same study whichever worker finishes first. Fake workers (tests/drivers.py) on a
simulated clock make the finishing order; nothing trains."""
from __future__ import annotations

import random

import optuna
import pytest

from search.config import ConfigError
from search.study_config import validate
from tests.drivers import FakeWorkers, config, make_driver

optuna.logging.set_verbosity(optuna.logging.WARNING)


def study(tmp_path, in_order: bool, timing: int) -> tuple[list, list[int]]:
    """A 16-trial study on 2 fake workers whose trials take random times (drawn from `timing`): its trials'
    parameters and values, and the order the driver told the worker-trained trials in."""
    rng, durations = random.Random(timing), {}
    workers = FakeWorkers(slots=2, duration=lambda n: durations.setdefault(n, rng.uniform(1, 3)))
    d = make_driver(config(tmp_path / f"{in_order}-{timing}", 16, f"ray.in_order={str(in_order).lower()}"), workers)
    d.loop()
    told = sorted((t for t in d.study.trials if "repeat_of" not in t.user_attrs), key=lambda t: t.datetime_complete)
    return [(t.params, t.values) for t in d.study.trials], [t.number for t in told]


def test_in_order_the_same_seed_makes_the_same_study_whichever_worker_finishes_first(tmp_path):
    (a, told_a), (b, told_b) = study(tmp_path, True, timing=1), study(tmp_path, True, timing=2)
    assert a == b and told_a == sorted(told_a) and told_b == sorted(told_b)
    (c, told_c), (e, told_e) = study(tmp_path, False, timing=1), study(tmp_path, False, timing=2)
    assert told_c != sorted(told_c) and told_e != sorted(told_e)  # results told as they came
    assert c != e  # so TPE saw other trials when it proposed: another study


def test_in_order_is_a_flag(tmp_path):
    with pytest.raises(ConfigError, match=r"^ray.in_order: must be true or false, got 'yes'"):
        validate(config(tmp_path, 2, "ray.in_order=yes"))


def test_stopping_keeps_the_results_that_wait_for_an_older_trial(tmp_path, capsys):
    """Ctrl-C while trial 0 still trains and trial 1 has finished (its result waiting for trial 0's): trial 1 is
    kept, trial 0 is FAIL."""
    workers = FakeWorkers(slots=2, duration=lambda n: 10.0 if n == 0 else 1.0)
    d = make_driver(config(tmp_path, 4), workers)
    d.start()
    d.start()
    workers.clock = 5.0
    d.stop([])
    State = optuna.trial.TrialState
    assert [t.state for t in d.study.trials] == [State.FAIL, State.COMPLETE] and d.complete == 1
    assert "1 complete trials kept, 1 running trial(s) marked FAIL" in capsys.readouterr().out
