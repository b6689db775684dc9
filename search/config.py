"""The composed config: Hydra composition for the command line, then one check of every value
before any compute starts. A bad value becomes one line naming the key and what is allowed."""
from __future__ import annotations

import functools
import hashlib
import math
import re
from pathlib import Path
from typing import Any, Mapping, cast

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
import yaml

import spaces
from spaces.precision import BITS

from .backends import HOLDS
from .errors import UserError
from .latency import KERNELS
from .runners import RUNNERS

ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = ROOT / "conf"
CONFIG_NAME = "search"
GROUPS = ("target", "space", "data", "sampler")

# `${project:conf/...}`: a file shipped with the project, wherever the command runs from.
OmegaConf.register_new_resolver("project", lambda path: str(ROOT / path), replace=True)


def multirun_job() -> str:
    """`${multirun_job:}`: in a Hydra multirun, `-` and the job's overrides (Hydra's override_dirname,
    less the keys a resumed study may change), so each job of `-m seed=0,1` runs a study of its own
    and running the same sweep again resumes each; empty in a single run."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return ""
    job = HydraConfig.get().job
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", job.override_dirname).strip("_.-") or f"job{job.num}"
    if len(name) > 80:  # a folder and an MLflow experiment are named after it
        name = f"{name[:70]}_{hashlib.sha256(job.override_dirname.encode()).hexdigest()[:8]}"
    return f"-{name}"


OmegaConf.register_new_resolver("multirun_job", multirun_job, replace=True)


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
        unknown = re.match(r"Could not override '([^']+)'", str(e))
        if unknown:
            raise ConfigError(f"{unknown[1]}: no such key to set (a misspelt name?)") from None
        raise ConfigError(first_line(e)) from None


def first_line(e: Exception) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    text = " ".join(lines[:2]) if lines else type(e).__name__
    return re.sub(r"\s+", " ", text)


def resolve(cfg: DictConfig) -> dict[str, Any]:
    """Plain data (no Hydra section), interpolations resolved; a missing value names its key. The target's file
    format narrows the space's bits to the precisions its files can hold (`backends.HOLDS`)."""
    try:
        out = cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True))  # a mapping
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        raise ConfigError(f"{key}: a value is required here" if key else first_line(e)) from None
    target, space = out.get("target"), out.get("space")
    if isinstance(target, dict) and target.get("file") in HOLDS and isinstance(space, dict) \
            and isinstance(space.get("bits"), list):
        # only bit-widths a space may offer are narrowed: anything else stays, for validation to name
        held = HOLDS[target["file"]]
        space["bits"] = [b for b in space["bits"] if b in held or isinstance(b, bool) or b not in BITS]
    return out


# The value checks every command's own check uses (search, promote, calibrate): one message format for all.
def check_int(cfg: Mapping, key: str, minimum: int, allow_none: bool = False) -> None:
    value = value_at(cfg, key)
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key}: must be an integer >= {minimum}{' or null' if allow_none else ''}, got {value!r}")


def check_number(cfg: Mapping, key: str, minimum: float = 0.0, allow_none: bool = False, strict: bool = True) -> None:
    value = value_at(cfg, key)
    if value is None and allow_none:
        return
    bad = isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
    if bad or (value <= minimum if strict else value < minimum):
        bound = f"> {minimum}" if strict else f">= {minimum}"
        raise ConfigError(f"{key}: must be a number {bound}{' or null' if allow_none else ''}, got {value!r}")


def check_flag(cfg: Mapping, key: str) -> None:
    if not isinstance(value_at(cfg, key), bool):
        raise ConfigError(f"{key}: must be true or false, got {value_at(cfg, key)!r}")


def value_at(cfg: Mapping, key: str) -> Any:
    """The value at a dotted key; a missing one is a ConfigError naming it."""
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise ConfigError(f"{key}: missing")
        node = node[part]
    return node


def check_text(cfg: Mapping, key: str, what: str, allow_none: bool = False) -> None:
    value = value_at(cfg, key)
    if not (value is None and allow_none) and (not isinstance(value, str) or not value.strip()):
        raise ConfigError(f"{key}: must be {what}{' or null' if allow_none else ''}, got {value!r}")


def check_mapping(cfg: Mapping, key: str, allow_none: bool = False) -> Mapping:
    value = value_at(cfg, key)
    if not isinstance(value, Mapping) and not (value is None and allow_none):
        raise ConfigError(f"{key}: must be a mapping of settings{' or null' if allow_none else ''}, got {value!r}")
    return value or {}


FREE_FORM = ("sampler", "budget")  # checked against the sampler's parameters and BUDGETS instead


@functools.cache
def file_values(config_name: str, groups: tuple[str, ...]) -> dict[str, Any]:
    """What the config files define: the command's own keys, and per group every option's keys."""
    def load(path: Path) -> dict:
        return yaml.safe_load(path.read_text()) or {}

    schema = {k: v for k, v in load(CONF_DIR / f"{config_name}.yaml").items() if k not in ("defaults", "hydra")}
    for group in groups:
        schema[group] = {}
        for option in options(group):
            schema[group] |= load(CONF_DIR / group / f"{option}.yaml")
    return schema


def unknown_keys(cfg: Mapping[str, Any], config_name: str, groups: tuple[str, ...]) -> None:
    """A key that no config file defines (a typo, or a setting of another command) is refused by
    name rather than ignored. Checked two levels deep: sections and group options, and their keys."""
    schema = file_values(config_name, groups)
    for key, value in cfg.items():
        if key not in schema:
            raise ConfigError(f"{key}: unknown key; allowed: {', '.join(schema)}")
        if isinstance(schema[key], Mapping) and isinstance(value, Mapping) and key not in FREE_FORM:
            for inner in value:
                if inner not in schema[key]:
                    raise ConfigError(f"{key}.{inner}: unknown key; allowed: {', '.join(map(str, schema[key]))}")


def validate_calibration(cfg: Mapping[str, Any]) -> None:
    """Every value `python -m search.calibrate` reads (its files are read by calibrate.check)."""
    unknown_keys(cfg, "calibrate", ("target", "space", "runner"))
    check_int(cfg, "seed", 0)
    check_int(cfg, "networks", 3)
    shape = value_at(cfg, "input_shape")
    if not isinstance(shape, list) or len(shape) != 3 or not all(isinstance(n, int) and not isinstance(n, bool)
                                                                   and n >= 1 for n in shape):
        raise ConfigError(f"input_shape: must be [channels, height, width], whole numbers >= 1, got {shape!r}")
    check_int(cfg, "num_classes", 1)
    for key in ("benchmarks", "evaluate"):
        check_text(cfg, key, "a measurement file", allow_none=True)
    holdout = value_at(cfg, "holdout")
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float)) or not 0 < holdout < 1:
        raise ConfigError(f"holdout: must be a number in (0, 1), got {holdout!r}")
    check_int(cfg, "fit_rows", 2, allow_none=True)
    check_text(cfg, "tracking.uri", "an MLflow tracking URI")
    check_text(cfg, "tracking.experiment", "an MLflow experiment name")
    check_text(cfg, "cache_dir", "a folder path")
    kinds = ("auto", "file", *RUNNERS)  # auto: the target's own way; file: fit on measurements taken before
    if check_mapping(cfg, "runner").get("kind") not in kinds:
        raise ConfigError(f"runner.kind: must be {', '.join(kinds)}, got {cfg['runner'].get('kind')!r}")
    space_name(cfg)
    validate_target(value_at(cfg, "target"), [])


def space_name(cfg: Mapping[str, Any]) -> Mapping[str, Any]:
    """The `space` section, whose name must be a registered space."""
    space = check_mapping(cfg, "space")
    if not isinstance(space.get("name"), str) or space["name"] not in spaces.SPACES:
        raise ConfigError(f"space.name: unknown space {space.get('name')!r}; allowed: {', '.join(spaces.SPACES)}")
    return space


def space_error(e: Exception) -> ConfigError:
    """A space's ValueError starts with the setting it is about ("bits: ..."): name it as a key."""
    text = first_line(e)
    return ConfigError(f"space.{text}" if re.match(r"[a-z_]+(\.[a-z_]+)*: ", text) else f"space: {text}")


def validate_target(target: Mapping[str, Any], bits: list[int]) -> None:
    """A target declares how each bit-width runs, where its measurements and predictor live,
    and, for a proxy, which device was measured and how latencies are scaled."""
    cfg = {"target": target}
    check_mapping(cfg, "target")
    check_text(cfg, "target.name", "the target's name")
    _validate_file(target)  # first: the space's bits were narrowed by it
    kernels = {}
    for b, kernel in check_mapping(cfg, "target.kernels").items():
        if isinstance(b, bool) or not re.fullmatch(r"[0-9]+", str(b)):
            raise ConfigError(f"target.kernels.{b}: keys are bit-widths (whole numbers)")
        if not isinstance(kernel, str) or kernel not in KERNELS:
            raise ConfigError(f"target.kernels.{b}: unknown kernel {kernel!r}; allowed: {', '.join(KERNELS)}")
        kernels[int(b)] = kernel
    for b in bits:
        if b not in kernels:
            raise ConfigError(f"target.kernels: no entry for {b}-bit layers (space.bits); "
                              f"{target['name']} declares {sorted(kernels)}")
    check_flag(cfg, "target.sparse_kernels")
    for kernel in check_mapping(cfg, "target.speedups"):
        if kernel not in KERNELS:
            raise ConfigError(f"target.speedups.{kernel}: unknown kernel; allowed: {', '.join(KERNELS)}")
        check_number(cfg, f"target.speedups.{kernel}")
    for kernel, span in (target.get("speedup_range") or {}).items():  # the evidence's lowest and highest
        used = target["speedups"].get(kernel)
        if used is None or not isinstance(span, list) or len(span) != 2 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in span) \
                or not span[0] <= used <= span[1]:
            raise ConfigError(f"target.speedup_range.{kernel}: [lowest, highest] evidenced speed-up around "
                              f"target.speedups.{kernel} ({used}), got {span!r}")
    if "border_cost" in target:
        check_number(cfg, "target.border_cost", strict=False)
    check_mapping(cfg, "target.measurements")
    measured = value_at(cfg, "target.measurements.space")
    if not isinstance(measured, str) or measured not in spaces.SPACES:
        raise ConfigError(f"target.measurements.space: unknown space; allowed: {', '.join(spaces.SPACES)}")
    for key in ("measurements.file", "predictor"):
        check_text(cfg, f"target.{key}", "a file path")
    if target.get("published") is not None:
        check_mapping(cfg, "target.published")
        check_text(cfg, "target.published.file", "a file path")
        check_number(cfg, "target.published.reference_weight")
    if target.get("int8_pairs") is not None:
        check_mapping(cfg, "target.int8_pairs")
        check_text(cfg, "target.int8_pairs.file", "a file path")
        check_text(cfg, "target.int8_pairs.core_class", "a core class of the pairs file, e.g. A73-class")
        eras = check_mapping(cfg, "target.int8_pairs.eras")
        if not eras or not all(isinstance(t, list) and t and all(isinstance(x, str) for x in t) for t in eras.values()):
            raise ConfigError("target.int8_pairs.eras: each era (oldest first) a list of table ids, e.g. [T01, T07]")
        if "int8" not in target["speedups"]:
            raise ConfigError("target.speedups.int8: the value int8_pairs fits must be written here")
    if check_mapping(cfg, "target.proxy", allow_none=True):
        check_number(cfg, "target.proxy.scale")
        for key in ("device", "assumption"):
            if not isinstance(value_at(cfg, f"target.proxy.{key}"), str):
                raise ConfigError(f"target.proxy.{key}: a proxy target must say which device was measured and why it stands in")
    if check_mapping(cfg, "target.runner").get("kind") not in RUNNERS:
        raise ConfigError(f"target.runner.kind: must be {' or '.join(RUNNERS)}, got {target['runner'].get('kind')!r}")


def _validate_file(target: Mapping[str, Any]) -> None:
    """`target.file` is the export format the target runs (its trials' size_kb counts that file), and its runner
    (when it names a known kind: else checked later) must time that format."""
    from .runners import backend_of

    file = target.get("file")
    if file not in HOLDS:
        raise ConfigError(f"target.file: the export format the target runs, one of {', '.join(HOLDS)}; got {file!r}")
    runner = target.get("runner")
    if not isinstance(runner, Mapping) or runner.get("kind") not in RUNNERS:
        return
    runs = backend_of(runner)
    if runs is not None and runs != file:
        raise ConfigError(f"target.file: {file}, but the target's {runner['kind']} runner times {runs} files")
