"""Checks a command runs before it writes anything (Hydra's run folder, the Optuna journal, MLflow,
a predictor file): what the config names must exist, be readable and answer. Each failure is one
ConfigError or other UserError naming the key or the file."""
from __future__ import annotations

import json
import socket
from dataclasses import dataclass
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

import spaces

from . import data, latency, storage
from .config import ROOT, ConfigError
from .study_config import Ray, StudyConfig, validate

TIMEOUT_S = 5.0
DEFAULT_PORTS = {"postgresql": 5432, "postgres": 5432, "mysql": 3306, "mssql": 1433, "redis": 6379}
SQLITE_HEADER = b"SQLite format 3\x00"


@dataclass(frozen=True)
class Ready:
    """What the check read, handed to the study so nothing is read twice."""

    config: StudyConfig
    data: data.Dataset
    space: spaces.SearchSpace  # on the data's shape
    predictor: latency.Predictor
    init: Mapping[str, Any] | None  # `supernet.init`'s weights, checked against the space


def study(cfg: Mapping[str, Any]) -> Ready:
    """Everything `python -m search` reads from the user: the values, the latency predictor, the
    tracking server, the Optuna storage, the Ray cluster, the data and the initial weights (read now
    for the study, so once) and a latency budget some network of the space can meet."""
    config = validate(cfg)
    predictor = config.predictor()
    reachable("tracking.uri", config.tracking_uri)
    if config.where.url:
        reachable("study.storage", config.where.url)
    refuse_changed(config)
    ray_reachable(config.ray.address)
    local_ray_fits(config.ray)
    dataset = data.load(config.data, config.seed, config.cache_dir)
    space = config.build_space(dataset.input_shape, dataset.num_classes)
    init = None
    if config.supernet["init"]:  # the weights file fits the space's full-width network, or one line names the key
        from . import supernet

        init = supernet.initial_weights(config.space_settings(dataset.input_shape, dataset.num_classes),
                                        config.supernet["init"])
    budget = config.budget.get("latency_ms")
    if budget is not None:
        fastest = predictor.fastest(cheapest_layers(space))
        if budget < fastest:
            raise ConfigError(f"budget.latency_ms: {budget} ms is below what any network of space {space.name} "
                              f"can reach on {config.target['name']} (predicted floor {fastest:.3f} ms)")
    return Ready(config, dataset, space, predictor, init)


def cheapest_layers(space: spaces.SearchSpace) -> list[list[spaces.Layer]]:
    """For each layer, its descriptor at each bit-width of the space, in the space's smallest and
    sparsest network (with non-negative coefficients, as fitted, nothing smaller is faster)."""
    networks = [space.layers(space.cheapest(bits)) for bits in space.bits]
    return [list(options) for options in zip(*networks)]


def reachable(key: str, uri: str) -> None:
    """A tracking or storage URI that cannot work fails in seconds, naming its key: a server that
    does not answer, an SQLite file whose folder is missing or that is not an SQLite database."""
    try:
        parts = urlsplit(uri)
        scheme = parts.scheme.split("+")[0].lower()
        host, port = parts.hostname, parts.port
    except ValueError as e:
        raise ConfigError(f"{key}: not a URI: {uri!r} ({e})") from None
    if scheme == "sqlite":
        _sqlite(key, uri)
    elif scheme in ("http", "https"):
        _http(key, uri)
    elif host and (port or scheme in DEFAULT_PORTS):
        connect(key, host, port or DEFAULT_PORTS[scheme])


def _sqlite(key: str, uri: str) -> None:
    path = uri.partition(":///")[2].partition("?")[0]
    if not path or path == ":memory:":
        return
    file = Path(path)
    if not file.parent.is_dir():
        raise ConfigError(f"{key}: the folder {file.parent} of {uri} does not exist")
    if file.exists():
        try:
            with file.open("rb") as f:
                head = f.read(len(SQLITE_HEADER))
        except OSError as e:
            raise ConfigError(f"{key}: cannot read {file}: {e.strerror or e}") from None
        if head and head != SQLITE_HEADER:
            raise ConfigError(f"{key}: {file} is not an SQLite database")


def _http(key: str, uri: str) -> None:
    """Any HTTP answer but a gateway's failure counts: the server is there (MLflow answers /health)."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=TIMEOUT_S):
            pass
    except urllib.error.HTTPError as e:
        if e.code >= 500:
            raise ConfigError(f"{key}: {uri} answered HTTP {e.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise ConfigError(f"{key}: no answer from {uri} ({getattr(e, 'reason', e)})") from None


def connect(key: str, host: str, port: int) -> None:
    try:
        socket.create_connection((host, port), timeout=TIMEOUT_S).close()
    except OSError as e:
        raise ConfigError(f"{key}: cannot reach {host}:{port} ({e.strerror or e})") from None


def local_ray_fits(ray: Ray) -> None:
    """A local Ray must be able to hold one trial: Ray would otherwise queue it forever. (A cluster
    may still gain nodes that can, so its trials are left to wait.)"""
    import os

    import torch

    if ray.address is not None:
        return
    cpus, gpus = ray.num_cpus or os.cpu_count() or 1, torch.cuda.device_count()
    if ray.cpus_per_trial > cpus:
        raise ConfigError(f"ray.cpus_per_trial: a trial asks for {ray.cpus_per_trial} CPUs, the local Ray has {cpus}")
    if ray.gpus_per_trial > gpus:
        raise ConfigError(f"ray.gpus_per_trial: a trial asks for {ray.gpus_per_trial} GPUs, this machine has {gpus}")


def ray_reachable(address: str | None) -> None:
    """HOST:PORT must answer (Ray itself would retry for minutes). `auto` is found the way `ray.init`
    finds it (RAY_ADDRESS, else the cluster the last `ray start` on this machine recorded, else a
    running one), and must answer too; null and local start a Ray of their own."""
    if address in (None, "local"):
        return
    if address == "auto":
        from ray._private import services  # pinned Ray 2.60: ray.init's own resolution, no public equivalent

        try:
            found = services.canonicalize_bootstrap_address("auto")
        except (ConnectionError, ValueError) as e:
            raise ConfigError(f"ray.address: auto finds no running Ray cluster on this machine ({e}); start one "
                              "with `ray start --head`, or give its HOST:PORT") from None
        if not found:
            raise ConfigError("ray.address: auto finds no running Ray cluster on this machine; start one with "
                              "`ray start --head`, or give its HOST:PORT")
        host, _, port = found.removeprefix("ray://").rpartition(":")
        try:
            connect("ray.address", host.strip("[]"), int(port))
        except ConfigError as e:
            raise ConfigError(f"{e} (where auto leads: {found})") from None
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    connect("ray.address", host.strip("[]"), int(port))


CONFIG_ATTR = "search.config"  # the study's user attribute holding what its trials mean
# What a resumed study may change: how many trials, where they run and are tracked, where files live, and how the
# next networks are chosen (the sampler and its seed: a staged search resumes one study with a sampler per stage).
RESUMABLE = ("n_trials", "ray.", "tracking.", "study.dir", "study.storage", "cache_dir", "pareto.every", "sampler.",
             "search_seed")
# Keys a study may have recorded that no longer exist, whose meaning other keys hold now: a target's `bits` narrowed
# space.bits, which its file format does today (`backends.HOLDS`).
RETIRED = ("target.bits",)


def meaning(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The resolved config as flat `key: value` pairs, less what a resumed study may change: what
    makes two studies' trials comparable. Files shipped with the project are named relative to it,
    so the same study resumes from another checkout."""
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, Mapping) and node:
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
            return
        key = prefix[:-1]
        if not (key in RESUMABLE or key.startswith(tuple(p for p in RESUMABLE if p.endswith(".")))):
            if isinstance(node, str) and node.startswith(f"{ROOT}/"):
                node = node[len(str(ROOT)) + 1:]
            flat[key] = json.loads(json.dumps(node, default=str))  # as the storage gives it back

    walk(cfg, "")
    return flat


def refuse_changed(config: StudyConfig) -> None:
    """A study resumes only with the config it was created with (less RESUMABLE keys): trials made
    under another seed, data, space, target or training settings would be compared as if alike."""
    study = storage.existing(config.where)
    created = study.user_attrs.get(CONFIG_ATTR) if study else None
    if created is None:
        return
    now = meaning(config.raw)
    # a key absent on one side reads as null: a setting added later (supernet.init) whose null keeps the old meaning
    differ = sorted(k for k in created.keys() | now.keys() if created.get(k) != now.get(k) and k not in RETIRED)
    if not differ:
        return
    keys = ", ".join(differ[:6]) + (f" and {len(differ) - 6} more" if len(differ) > 6 else "")
    shown = ", ".join(f"{k}={json.dumps(created.get(k))} (now {json.dumps(now.get(k))})" for k in differ[:3])
    raise ConfigError(f"{keys}: study {config.name!r} was created with {shown}; a resumed study keeps "
                      "what its trials mean (only n_trials, ray.*, tracking.*, the sampler and where files live may change): "
                      "run this config under another study.name")
