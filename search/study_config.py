"""What `python -m search` is told, as one frozen, typed value: checked once (`validate`, each bad value
named by its key), then read as fields. The same type holds a config read back from a study's MLflow run
(`recorded`), where a key added since the study was made takes its default, so an old study still
promotes. And the one place that builds what the config and the data make together: the space, the
latency predictor, the supernet's cache key."""
from __future__ import annotations

import copy
import inspect
import re
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, cast

import spaces

from . import latency, storage
from .config import (CONFIG_NAME, GROUPS, ConfigError, check_flag, check_int, check_mapping, check_number,
                     check_text, file_values, first_line, space_error, space_name, unknown_keys, validate_target,
                     value_at)
from .objectives import BUDGETS, DIRECTIONS

RAY_ADDRESS = re.compile(r"(?:ray://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):([0-9]{1,5})")


@dataclass(frozen=True)
class Ray:
    """Where trials run: a local Ray (`address` None) or a cluster, and what each trial takes of it."""

    address: str | None
    num_cpus: int | None  # a local Ray's; None: all cores
    cpus_per_trial: int
    gpus_per_trial: float
    max_retries: int  # re-runs of a trial whose worker process died
    in_order: bool  # tell results in the order trials were asked: the same seed makes the same study


@dataclass(frozen=True)
class StudyConfig:
    """The study's settings. The plug-in sections (target, space, data, supernet, finetune, sampler) stay the
    mappings their owners read (`latency.for_target`, `spaces.create`, `data.load`, `supernet.train`, ...)."""

    raw: Mapping[str, Any]  # the resolved config as given: what MLflow records and a resume compares
    seed: int  # data split, supernet, fine-tuning
    search_seed: int | None  # the sampler's; None: `seed`
    n_trials: int  # complete trials the study should hold
    where: storage.Location
    objectives: tuple[str, ...]
    budget: Mapping[str, float | None]  # upper bounds, as Optuna constraints
    refresh_every: int  # publish the front every this many complete trials
    reference: Mapping[str, float]  # the hypervolume's reference point
    target: Mapping[str, Any]
    space: Mapping[str, Any]  # without the data's shape: `space_settings` adds it
    data: Mapping[str, Any]
    supernet: Mapping[str, Any]
    finetune: Mapping[str, Any]
    sampler: Mapping[str, Any]
    tracking_uri: str
    ray: Ray
    cache_dir: str

    @classmethod
    def of(cls, cfg: Mapping[str, Any]) -> StudyConfig:
        """From resolved config data that `validate` has checked (or a study recorded, through `recorded`)."""
        return cls(cfg, cfg["seed"], cfg["search_seed"], cfg["n_trials"], storage.Location.of(cfg["study"]),
                   tuple(cfg["objectives"]), dict(cfg["budget"]), cfg["pareto"]["every"],
                   dict(cfg["pareto"]["reference"]), cfg["target"], cfg["space"], cfg["data"], cfg["supernet"],
                   cfg["finetune"], cfg["sampler"], cfg["tracking"]["uri"], Ray(**cfg["ray"]), cfg["cache_dir"])

    @property
    def name(self) -> str:
        return self.where.name

    @property
    def file(self) -> str:
        """The target's deployable format: what size_kb counts."""
        return self.target["file"]

    def space_settings(self, input_shape: tuple[int, ...], num_classes: int) -> dict[str, Any]:
        """The space's settings with the data's shape: what a worker rebuilds the space from."""
        return {**self.space, "input_shape": tuple(input_shape), "num_classes": num_classes}

    def build_space(self, input_shape: tuple[int, ...], num_classes: int) -> spaces.SearchSpace:
        """The space on data of this shape; settings that depend on the data (a resolution above its size)
        are one line naming the key."""
        try:
            return cast(spaces.SearchSpace, spaces.create(**self.space_settings(input_shape, num_classes)))  # validated
        except ValueError as e:
            raise space_error(e) from None

    def predictor(self) -> latency.Predictor:
        return latency.for_target(self.target)

    def supernet_key(self, init: Mapping[str, Any] | None) -> str:
        """The trained supernet's cache key: what shapes its weights (the initial weights by content)."""
        from . import supernet  # torch: not needed to check a config

        return supernet.cache_key(self.space, self.data, self.seed, {**self.supernet,
                                                                     "init": supernet.init_digest(init)})


def recorded(cfg: Mapping[str, Any]) -> StudyConfig:
    """A config a study recorded (its MLflow run's config.yaml), made by this code or older code: a section's key
    added since takes today's default, whose value keeps the old meaning (as `preflight.refuse_changed` reads an
    absent key). The groups (target, space, data, sampler) are kept as recorded: a default target's keys are not
    another target's."""
    defaults = copy.deepcopy(file_values(CONFIG_NAME, GROUPS))  # conf/search.yaml's values, read as YAML: no Hydra
    merged = dict(cfg)
    for key, value in defaults.items():
        if key in GROUPS:
            continue
        if key not in cfg:
            merged[key] = value
        elif isinstance(value, Mapping) and isinstance(cfg[key], Mapping):
            merged[key] = {**value, **cfg[key]}
    return StudyConfig.of(merged)


def validate(cfg: Mapping[str, Any]) -> StudyConfig:
    """Every value the search reads, checked before any compute, and then the study's config as one value.
    `cfg` is resolved plain data."""
    unknown_keys(cfg, CONFIG_NAME, GROUPS)
    check_int(cfg, "seed", 0)
    if value_at(cfg, "seed") >= 2**32:
        raise ConfigError(f"seed: must be an integer in [0, 2**32), got {value_at(cfg, 'seed')!r}")
    check_int(cfg, "search_seed", 0, allow_none=True)
    check_int(cfg, "n_trials", 1)
    name = value_at(cfg, "study.name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ConfigError(f"study.name: letters, digits and . _ - only, got {name!r}")
    check_text(cfg, "study.dir", "a folder path")
    check_text(cfg, "study.storage", "an Optuna storage URL", allow_none=True)
    check_text(cfg, "cache_dir", "a folder path")
    objectives = value_at(cfg, "objectives")
    if not isinstance(objectives, list) or not objectives \
            or any(not isinstance(o, str) or o not in DIRECTIONS for o in objectives) \
            or len(set(objectives)) != len(objectives):
        raise ConfigError(f"objectives: a list of distinct names from {', '.join(DIRECTIONS)}, got {objectives!r}")
    for key in check_mapping(cfg, "budget"):
        if key not in BUDGETS:
            raise ConfigError(f"budget.{key}: unknown budget; allowed: {', '.join(BUDGETS)}")
        check_number(cfg, f"budget.{key}", allow_none=True)
    check_int(cfg, "pareto.every", 1)
    for key in objectives:
        check_number(cfg, f"pareto.reference.{key}", strict=False)
    for key in ("epochs", "batch_size"):
        check_int(cfg, f"supernet.{key}", 1)
    check_int(cfg, "supernet.random_subnets", 0)
    check_number(cfg, "supernet.lr")
    init = value_at(cfg, "supernet.init")
    if init is not None and (not isinstance(init, str) or not init):
        raise ConfigError(f"supernet.init: a weights file (.pth or .safetensors) or null, got {init!r}")
    for key, minimum in (("steps", 0), ("batch_size", 1), ("bn_batches", 1)):
        check_int(cfg, f"finetune.{key}", minimum)
    check_number(cfg, "finetune.lr", strict=False)
    check_number(cfg, "finetune.temperature")
    check_text(cfg, "tracking.uri", "an MLflow tracking URI")
    address = value_at(cfg, "ray.address")
    match = RAY_ADDRESS.fullmatch(address) if isinstance(address, str) else None
    if address is not None and address not in ("auto", "local") and not (match and 0 < int(match[2]) < 65536):
        raise ConfigError(f"ray.address: must be HOST:PORT, ray://HOST:PORT, auto, local or null, got {address!r}")
    check_int(cfg, "ray.num_cpus", 1, allow_none=True)
    check_int(cfg, "ray.cpus_per_trial", 1)
    check_int(cfg, "ray.max_retries", 0)
    check_number(cfg, "ray.gpus_per_trial", strict=False)
    check_flag(cfg, "ray.in_order")
    _validate_data(cfg)
    _validate_sampler(cfg)
    _validate_space(cfg)
    validate_target(value_at(cfg, "target"), value_at(cfg, "space.bits"))
    return StudyConfig.of(cfg)


def _validate_data(cfg: Mapping[str, Any]) -> None:
    from .data import DataError, Source

    try:
        Source.of(check_mapping(cfg, "data"))
    except DataError as e:
        raise ConfigError(str(e)) from None


def _validate_sampler(cfg: Mapping[str, Any]) -> None:
    """An Optuna sampler class (nothing else is instantiated from the config) with settings it takes."""
    import optuna

    sampler = check_mapping(cfg, "sampler")
    if sampler.get("_target_") == "optuna.samplers.PartialFixedSampler":  # fixes some choices, samples the rest
        if not isinstance(sampler.get("fixed_params"), Mapping) or set(sampler) != {"_target_", "fixed_params",
                                                                                     "base_sampler"}:
            raise ConfigError("sampler: PartialFixedSampler takes fixed_params (a mapping) and base_sampler")
        return _validate_sampler({"sampler": sampler["base_sampler"]})
    target = sampler.get("_target_")
    name = target.removeprefix("optuna.samplers.") if isinstance(target, str) else ""
    cls = getattr(optuna.samplers, name, None) if name in optuna.samplers.__all__ and name != target else None
    if not (isinstance(cls, type) and issubclass(cls, optuna.samplers.BaseSampler)) \
            or "seed" not in inspect.signature(cls).parameters:
        raise ConfigError(f"sampler._target_: must be an Optuna sampler that takes a seed "
                          f"(optuna.samplers.NSGAIISampler, ...), got {target!r}")
    settings = {k: v for k, v in sampler.items() if k != "_target_"}
    parameters = inspect.signature(cls).parameters
    for key, value in settings.items():
        if key not in parameters or key in ("seed", "constraints_func"):
            raise ConfigError(f"sampler.{key}: not a setting of {name} (seed and constraints come from the study)")
        default = parameters[key].default  # samplers check few settings themselves: a wrong type fails mid-study
        if isinstance(default, (bool, int, float)) and not _same_kind(value, default):
            raise ConfigError(f"sampler.{key}: must be {type(default).__name__} like its default {default!r}, "
                              f"got {value!r}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cls(**settings, seed=0)  # type: ignore[call-arg]  # checked above: it takes a seed
    except (TypeError, ValueError) as e:
        raise ConfigError(f"sampler: {name} refuses its settings: {first_line(e)}") from None


def _same_kind(value: Any, default: bool | int | float) -> bool:
    """Is `value` the kind of number (or flag) `default` is? An int stands for a float, a flag for neither."""
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    return isinstance(value, int) or (isinstance(default, float) and isinstance(value, float))


def _validate_space(cfg: Mapping[str, Any]) -> None:
    space = space_name(cfg)
    if not hasattr(spaces.SPACES[space["name"]], "supernet"):
        raise ConfigError(f"space: {space['name']} has no weight-sharing supernet, so it cannot be searched; "
                          f"it is for latency calibration (python -m search.calibrate space={space['name']})")
    sizes = space.get("resolutions")  # checked against the data's size once it is loaded (preflight)
    side = max([32, *(r for r in sizes if isinstance(r, int))] if isinstance(sizes, (list, tuple)) else [32])
    try:
        spaces.create(**{"input_shape": (1, side, side), "num_classes": 10, **space})
    except (ValueError, TypeError, KeyError) as e:
        raise space_error(e) from None
