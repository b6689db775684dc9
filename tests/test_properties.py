"""Property tests of config validation (search.study_config.validate and the command-line composition
in front of it): any value of any checked key is accepted or refused with one ConfigError line
naming the key, never another exception; values inside the documented ranges are accepted and
values outside them refused. And the latency budget's floor: no network of the space is predicted
faster, and it is the exact minimum. (The measurement-file parser's properties are in
test_measurements.py.)"""
from __future__ import annotations

import copy
import itertools
import math
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import spaces
from search.backends import HOLDS
from search.config import ConfigError, compose, resolve
from search.study_config import validate
from search.latency import for_target
from search.preflight import cheapest_layers
from search.errors import UserError
from search.objectives import BUDGETS, DIRECTIONS

BASE = resolve(compose(["data=digits"]))
SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BITS = (2, 3, 4, 5, 6, 7, 8, 16, 32)

junk = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8),
                 st.lists(st.integers() | st.text(max_size=3) | st.floats(), max_size=3),
                 st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
finite = st.floats(allow_nan=False, allow_infinity=False)


def whole(minimum: int, maximum: int = 10**9):
    """(valid, invalid) values of a whole number >= minimum."""
    return st.integers(minimum, maximum), st.integers(max_value=minimum - 1) | finite | st.text(max_size=4) | st.booleans()


def number(minimum: float, strict: bool):
    """(valid, invalid) values of a finite number > minimum (>= if not strict)."""
    valid = st.floats(minimum, 1e6, exclude_min=strict) | st.integers(math.ceil(minimum) + strict, 10**6)
    invalid = (st.floats(max_value=minimum, exclude_max=not strict) | st.sampled_from([math.nan, math.inf, -math.inf])
               | st.text(max_size=4) | st.booleans() | st.none())
    return valid, invalid


def choices(allowed, must: list, valid_values, invalid_values):
    """(valid, invalid) lists: some of `allowed` including every one of `must`; or one that breaks it."""
    valid = st.lists(st.sampled_from(allowed), max_size=5).map(lambda v: [*must, *v])
    invalid = st.one_of(
        st.lists(valid_values.filter(lambda v: v not in must), max_size=4),         # a required value missing
        st.tuples(valid, invalid_values).map(lambda t: [*t[0], t[1]]),            # a value not allowed
        st.text(max_size=4), st.none(), st.integers())                            # not a list at all
    return valid, invalid


KEYS = {
    "seed": (st.integers(0, 2**32 - 1), st.integers(max_value=-1) | st.integers(min_value=2**32) | finite | st.text()),
    "n_trials": whole(1),
    "supernet.epochs": whole(1),
    "supernet.batch_size": whole(1),
    "supernet.random_subnets": whole(0),
    "supernet.lr": number(0, strict=True),
    "finetune.steps": whole(0),
    "finetune.batch_size": whole(1),
    "finetune.bn_batches": whole(1),
    "finetune.lr": number(0, strict=False),
    "finetune.temperature": number(0, strict=True),
    "ray.num_cpus": (st.none() | st.integers(1, 512), whole(1)[1]),
    "ray.cpus_per_trial": whole(1),
    "ray.gpus_per_trial": number(0, strict=False),
    **{f"budget.{b}": (st.none() | number(0, strict=True)[0], number(0, strict=True)[1].filter(lambda v: v is not None))
       for b in BUDGETS},
    "objectives": (st.lists(st.sampled_from(list(DIRECTIONS)), min_size=1, unique=True),
                   st.one_of(st.just([]), st.lists(st.text(max_size=6).filter(lambda o: o not in DIRECTIONS), min_size=1),
                             st.sampled_from(list(DIRECTIONS)).map(lambda o: [o, o]), st.text(max_size=6))),
    # the default target's file (a .tflite) holds 5-8 and 32 bits; the composed config is narrowed to those
    "space.bits": choices(list(HOLDS[BASE["target"]["file"]]), [32], st.sampled_from(HOLDS[BASE["target"]["file"]]),
                          st.integers().filter(lambda b: b not in BITS) | st.floats() | st.text(max_size=2)),
    "space.sparsity": choices([0.0, 0.1, 0.25, 0.5, 0.9, 0.999], [0.0], st.floats(0, 1, exclude_max=True),
                              st.floats(1.0) | st.floats(max_value=0, exclude_max=True) | st.just(math.nan)),
    "space.widths": choices([0.1, 0.25, 0.5, 0.75, 1.0], [1.0], st.floats(0, 1, exclude_min=True),
                            st.floats(1.0, exclude_min=True) | st.floats(max_value=0) | st.just(math.nan)),
    "space.granularity": (st.sampled_from(["channel", "weight"]), st.text(max_size=8).filter(lambda g: g not in ("channel", "weight"))),
    "space.head": whole(1, 512),
    "space.kernel": (st.sampled_from([1, 3, 5, 7]), st.integers(max_value=0) | st.sampled_from([2, 4, 6]) | st.text(max_size=2)),
    "data.val_size": (st.floats(0, 1, exclude_min=True, exclude_max=True),
                      st.floats(1.0) | st.floats(max_value=0.0) | st.text(max_size=3) | st.none()),
    "data.limit": (st.none() | st.integers(1, 10**6), whole(1)[1]),
    "study.name": (st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True),
                   st.text(max_size=8).filter(lambda n: not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", n))),
    "ray.address": (st.sampled_from([None, "auto", "local", "127.0.0.1:6379", "ray://head.example:10001", "[::1]:6379"]),
                    st.text(max_size=12).filter(lambda a: not re.fullmatch(r"(ray://)?[A-Za-z0-9_.-]+:[0-9]{1,5}", a)
                                                and a not in ("auto", "local")) | st.integers()),
}


def with_value(key: str, value, cfg: dict = BASE) -> dict:
    """A copy of cfg with one value replaced."""
    cfg = copy.deepcopy(cfg)
    *path, last = key.split(".")
    node = cfg
    for part in path:
        node = node[part]
    node[last] = value
    return cfg


def refused(cfg: dict) -> str | None:
    """None if validate accepts cfg, else its one-line message (any other exception fails the test)."""
    try:
        validate(cfg)
    except ConfigError as e:
        message = str(e)
        assert message and "\n" not in message
        return message
    return None


def test_the_base_config_is_valid():
    assert refused(BASE) is None


# Each key on its own (the rest of the config valid), so that every key gets its examples.
@pytest.mark.parametrize("key", sorted(KEYS))
@SETTINGS
@given(data=st.data())
def test_any_value_is_accepted_or_refused_naming_its_key(key, data):
    value = data.draw(junk | KEYS[key][0] | KEYS[key][1])
    message = refused(with_value(key, value))
    assert message is None or names(message, key), message


@pytest.mark.parametrize("key", sorted(KEYS))
@SETTINGS
@given(data=st.data())
def test_values_in_range_are_accepted(key, data):
    assert refused(with_value(key, data.draw(KEYS[key][0]))) is None


@pytest.mark.parametrize("key", sorted(KEYS))
@SETTINGS
@given(data=st.data())
def test_values_out_of_range_are_refused_naming_their_key(key, data):
    message = refused(with_value(key, data.draw(KEYS[key][1])))
    assert message is not None and names(message, key), message


def names(message: str, key: str) -> bool:
    return message.startswith(f"{key}:") or message.startswith(f"{key} ")


@SETTINGS
@given(st.dictionaries(st.sampled_from(sorted(KEYS)), st.none(), min_size=2, max_size=6).flatmap(
    lambda keys: st.fixed_dictionaries({k: KEYS[k][0] for k in keys})))
def test_several_valid_values_together_are_accepted(values):
    cfg = BASE
    for key, value in values.items():
        cfg = with_value(key, value, cfg)
    assert refused(cfg) is None


override_text = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(KEYS) + ["target", "space", "data", "sampler", "nope", "+nope", "~seed"]), override_text)
def test_any_command_line_override_is_accepted_or_one_line_user_error(key, text):
    """What `python -m search key=text` does before anything runs: compose, resolve, validate."""
    try:
        validate(resolve(compose(["data=digits", f"{key}={text}"])))
    except UserError as e:
        assert str(e) and "\n" not in str(e)


@pytest.mark.parametrize("key", sorted(KEYS))
def test_every_key_exists_in_the_composed_config(key):
    node = BASE
    for part in key.split("."):
        node = node[part]


# --- the latency budget check: the fastest network the predictor sees in the space -----------------

PREDICTOR = for_target(BASE["target"])
SPACE = spaces.create(**BASE["space"] | {"input_shape": (1, 8, 8), "num_classes": 10})
CHOICES = cheapest_layers(SPACE)


class Drawn:
    """A trial stand-in whose choices hypothesis draws."""

    def __init__(self, data):
        self.data = data

    def suggest_categorical(self, name, choices):
        return self.data.draw(st.sampled_from(choices), label=name)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_no_network_of_the_space_is_predicted_faster_than_the_budget_floor(data):
    """A budget is refused only if no network could meet it."""
    fastest = PREDICTOR.fastest(CHOICES)
    assert PREDICTOR.predict(SPACE.layers(SPACE.sample(Drawn(data)))) >= fastest * (1 - 1e-9)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, len(CHOICES) - 1), min_size=1, max_size=5, unique=True).map(sorted),
       st.integers(1, len(SPACE.bits)))
def test_fastest_is_a_floor_under_every_combination(layers, n_bits):
    """No combination of per-layer choices is predicted below the floor (brute force, a few layers at a time)."""
    choices = [CHOICES[i][:n_bits] for i in layers]
    brute = min(PREDICTOR.predict(list(network)) for network in itertools.product(*choices))
    assert 0 < PREDICTOR.fastest(choices) <= brute * (1 + 1e-12)
