"""The composed config: Hydra composition for the command line, then one check of every value
before any compute starts. A bad value becomes one line naming the key and what is allowed."""
from __future__ import annotations

import math
import re
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

import spaces

from .errors import UserError
from .latency import KERNELS
from .objectives import BUDGETS, DIRECTIONS

ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = ROOT / "conf"
CONFIG_NAME = "search"
GROUPS = ("target", "space", "data", "sampler")

# `${project:conf/...}`: a file shipped with the project, wherever the command runs from.
OmegaConf.register_new_resolver("project", lambda path: str(ROOT / path), replace=True)


class ConfigError(UserError):
    pass


def options(group: str) -> list[str]:
    """The files of a config group: the values `group=...` accepts."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def compose(overrides: list[str], config_name: str = CONFIG_NAME) -> DictConfig:
    """Compose the config as `python -m search` (or another entry point) would."""
    for override in overrides:
        group, _, value = override.partition("=")
        if (CONF_DIR / group).is_dir() and value not in options(group):
            raise ConfigError(f"{group}: unknown option {value!r}; allowed: {', '.join(options(group))}")
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            return hydra_compose(config_name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(_first_line(e)) from None


def fail(e: UserError) -> None:
    """A user error ends the command with one line and exit code 2."""
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def command(config_name: str, check: Callable[[dict[str, Any]], None], hydra_main: Callable[[], None]) -> None:
    """An entry point: check plain `key=value` overrides before Hydra creates a run folder (so a
    bad value leaves nothing behind), then hand over to Hydra (which also serves --help, -m, ...)."""
    overrides = sys.argv[1:]
    if not any(arg.startswith("-") for arg in overrides):
        try:
            check(resolve(compose(overrides, config_name)))
        except UserError as e:
            fail(e)
    hydra_main()


def _first_line(e: Exception) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    text = " ".join(lines[:2]) if lines else type(e).__name__
    return re.sub(r"\s+", " ", text)


def resolve(cfg: DictConfig) -> dict[str, Any]:
    """Plain data (no Hydra section), interpolations resolved; a missing value names its key."""
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        raise ConfigError(f"{key}: a value is required here" if key else _first_line(e)) from None


def _int(cfg: Mapping, key: str, minimum: int, allow_none: bool = False) -> None:
    value = _get(cfg, key)
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key}: must be an integer >= {minimum}{' or null' if allow_none else ''}, got {value!r}")


def _number(cfg: Mapping, key: str, minimum: float = 0.0, allow_none: bool = False, strict: bool = True) -> None:
    value = _get(cfg, key)
    if value is None and allow_none:
        return
    bad = isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
    if bad or (value <= minimum if strict else value < minimum):
        bound = f"> {minimum}" if strict else f">= {minimum}"
        raise ConfigError(f"{key}: must be a number {bound}{' or null' if allow_none else ''}, got {value!r}")


def _get(cfg: Mapping, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise ConfigError(f"{key}: missing")
        node = node[part]
    return node


def validate(cfg: Mapping[str, Any]) -> None:
    """Every value the search reads, checked before any compute. `cfg` is resolved plain data."""
    _int(cfg, "seed", 0)
    _int(cfg, "n_trials", 1)
    name = _get(cfg, "study.name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ConfigError(f"study.name: letters, digits and . _ - only, got {name!r}")
    objectives = _get(cfg, "objectives")
    if not isinstance(objectives, list) or not objectives or len(set(objectives)) != len(objectives) \
            or any(o not in DIRECTIONS for o in objectives):
        raise ConfigError(f"objectives: a list of distinct names from {', '.join(DIRECTIONS)}, got {objectives!r}")
    budget = _get(cfg, "budget")
    for key in budget:
        if key not in BUDGETS:
            raise ConfigError(f"budget.{key}: unknown budget; allowed: {', '.join(BUDGETS)}")
        _number(cfg, f"budget.{key}", allow_none=True)
    _int(cfg, "pareto.every", 1)
    for key in objectives:
        _number(cfg, f"pareto.reference.{key}", strict=False)
    for key in ("epochs", "batch_size"):
        _int(cfg, f"supernet.{key}", 1)
    _int(cfg, "supernet.random_subnets", 0)
    _number(cfg, "supernet.lr")
    for key, minimum in (("steps", 0), ("batch_size", 1), ("bn_batches", 1)):
        _int(cfg, f"finetune.{key}", minimum)
    _number(cfg, "finetune.lr", strict=False)
    _number(cfg, "finetune.temperature")
    uri = _get(cfg, "tracking.uri")
    if not isinstance(uri, str) or not uri:
        raise ConfigError(f"tracking.uri: must be an MLflow tracking URI, got {uri!r}")
    address = _get(cfg, "ray.address")
    if address is not None and not isinstance(address, str):
        raise ConfigError(f"ray.address: must be HOST:PORT, auto or null, got {address!r}")
    _int(cfg, "ray.num_cpus", 1, allow_none=True)
    _int(cfg, "ray.cpus_per_trial", 1)
    _int(cfg, "ray.max_retries", 0)
    _number(cfg, "ray.gpus_per_trial", strict=False)
    _validate_space(cfg)
    _validate_target(cfg)


def _validate_space(cfg: Mapping[str, Any]) -> None:
    space = _get(cfg, "space")
    if space.get("name") not in spaces.SPACES:
        raise ConfigError(f"space.name: unknown space {space.get('name')!r}; allowed: {', '.join(spaces.SPACES)}")
    if not hasattr(spaces.SPACES[space["name"]], "supernet"):
        raise ConfigError(f"space: {space['name']} has no weight-sharing supernet, so it cannot be searched; "
                          f"it is for latency calibration (python -m search.calibrate space={space['name']})")
    try:
        spaces.create(**{"input_shape": (1, 32, 32), "num_classes": 10, **space})
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"space: {e}") from None


def _validate_target(cfg: Mapping[str, Any]) -> None:
    validate_target(_get(cfg, "target"), _get(cfg, "space.bits"))


def validate_target(target: Mapping[str, Any], bits: list[int]) -> None:
    """A target declares how each bit-width runs, where its measurements and predictor live,
    and, for a proxy, which device was measured and how latencies are scaled."""
    cfg = {"target": target}
    kernels = {int(k): v for k, v in _get(cfg, "target.kernels").items()}
    for b in bits:
        if b not in kernels:
            raise ConfigError(f"target.kernels: no entry for {b}-bit layers (space.bits); "
                              f"{target['name']} declares {sorted(kernels)}")
    for b, kernel in kernels.items():
        if kernel not in KERNELS:
            raise ConfigError(f"target.kernels.{b}: unknown kernel {kernel!r}; allowed: {', '.join(KERNELS)}")
    if not isinstance(_get(cfg, "target.sparse_kernels"), bool):
        raise ConfigError("target.sparse_kernels: must be true or false")
    for kernel in _get(cfg, "target.speedups"):
        if kernel not in KERNELS:
            raise ConfigError(f"target.speedups.{kernel}: unknown kernel; allowed: {', '.join(KERNELS)}")
        _number(cfg, f"target.speedups.{kernel}")
    if _get(cfg, "target.measurements.space") not in spaces.SPACES:
        raise ConfigError(f"target.measurements.space: unknown space; allowed: {', '.join(spaces.SPACES)}")
    for key in ("measurements.file", "predictor"):
        if not isinstance(_get(cfg, f"target.{key}"), str):
            raise ConfigError(f"target.{key}: must be a file path")
    if target.get("proxy") is not None:
        _number(cfg, "target.proxy.scale")
        for key in ("device", "assumption"):
            if not isinstance(_get(cfg, f"target.proxy.{key}"), str):
                raise ConfigError(f"target.proxy.{key}: a proxy target must say which device was measured and why it stands in")
