"""Published on-device latencies of MobileNet-family networks (conf/measurements/published_mobilenets.csv: tables
copied by hand from their sources, one row per network, device, thread count and precision) as measurement sets a
predictor can be calibrated and validated on, and the fp32/int8 pairs an int8 speed-up is fitted from.

A set is one table's rows on one device, thread count and precision: within a set only the network changes, so
one speed scale per set absorbs the device, clock, threads and runtime, and what is left is the structure of
what costs what. Each row's network is rebuilt from its family, width and resolution (`search.describe`); a
family that cannot be rebuilt here is left out and said so (`Skipped`).
"""
from __future__ import annotations

import csv
import functools
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from spaces import Layer

from . import describe

# The families the file holds that `search.describe` builds, by the file's `model_family`.
FAMILIES = {"MobileNetV1": "mobilenet_v1", "MobileNetV2": "mobilenet_v2", "MobileNetV3-Large": "mobilenet_v3_large",
            "MobileNetV3-Small": "mobilenet_v3_small", "MnasNet (AutoML, hosted 09_07_2018)": "mnasnet"}
# Why the others are not: what a user of the validation table needs to know.
UNDESCRIBED = {"MnasNet-A1": "MnasNet-A1 (squeeze-excite, its own block list) is not built here; torchvision's "
                             "MnasNet is B1",
               "MobileNetV3-Large-minimalistic": "the minimalistic MobileNetV3s are not in torchvision",
               "MobileNetV3-Small-minimalistic": "the minimalistic MobileNetV3s are not in torchvision",
               "OFA subnet (MobileNetV3 design space)": "OFA subnets are named by latency, not by architecture"}
PRECISIONS = {"fp32": 32, "int8": 8}


@dataclass(frozen=True)
class Row:
    """One published latency of a network we can describe."""

    row_id: str
    table: str  # the source table's id (T01 ...)
    set: str  # table, device, threads and precision: what one speed scale covers
    network: str  # the file's model name
    layers: tuple[Layer, ...]
    bits: int  # 32 or 8
    latency_ms: float


@dataclass(frozen=True)
class Skipped:
    row_id: str
    network: str
    why: str


def read(path: str | Path) -> tuple[list[Row], list[Skipped]]:
    """The rows whose networks can be described, and the others with the reason."""
    rows, skipped = [], []
    with open(path, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            family, precision = r["model_family"], r["precision"]
            if family not in FAMILIES:
                skipped.append(Skipped(r["row_id"], r["model_name"], UNDESCRIBED.get(family, f"{family}: not built here")))
                continue
            if precision not in PRECISIONS:
                skipped.append(Skipped(r["row_id"], r["model_name"], f"precision {precision!r}: neither fp32 nor int8"))
                continue
            threads = r["threads"].split(" ")[0]
            layers = _layers(FAMILIES[family], float(r["width"]), int(r["res"]))
            rows.append(Row(r["row_id"], r["table_id"], f"{r['table_id']} {r['device']}, {threads} thread(s), {precision}",
                            r["model_name"], layers, PRECISIONS[precision], float(r["latency_ms"])))
    return rows, skipped


@functools.lru_cache(maxsize=None)
def _layers(family: str, width: float, resolution: int) -> tuple[Layer, ...]:
    return tuple(describe.built(family, width, resolution))


def sets(rows: Sequence[Row], bits: int | None = None) -> dict[str, list[Row]]:
    """Rows by set (optionally of one precision), in file order."""
    out: dict[str, list[Row]] = {}
    for row in rows:
        if bits is None or row.bits == bits:
            out.setdefault(row.set, []).append(row)
    return out


def float_sets(rows: Sequence[Row], leave_out: str | None = None) -> dict[str, tuple[list[list[Layer]], list[float]]]:
    """The float sets as (networks, latencies): what a structure is fitted on (int8 rows fit only the speed-up);
    `leave_out` names a table whose sets are left out."""
    return {name: ([list(r.layers) for r in group], [r.latency_ms for r in group])
            for name, group in sets(rows, bits=32).items() if group[0].table != leave_out}


@dataclass(frozen=True)
class Speedup:
    """An int8 speed-up over fp32 fitted from same-network pairs, per era of runtime: each era's geometric mean, its
    90% bootstrap interval and its number of pairs. The newest era sets the value a target uses: int8 gains shrank
    as float kernels got faster, and phones run today's runtime."""

    eras: dict[str, tuple[float, tuple[float, float], int]]  # oldest first

    @property
    def newest(self) -> tuple[float, tuple[float, float], int]:
        return list(self.eras.values())[-1]


def speedup(path: str | Path, core_class: str, eras: dict[str, Sequence[str]], seed: int = 0) -> Speedup:
    """The int8 speed-up on cores of `core_class` (e.g. "A73-class": Armv8.0, no dot-product), from the derived
    pairs file (conf/measurements/int8_speedup_pairs_derived.csv); `eras` lists each era's tables, oldest first."""
    with open(path, newline="", encoding="utf-8") as f:
        pairs = [(r["table_group"], float(r["fp32_over_int8_DERIVED"])) for r in csv.DictReader(f)
                 if r["core_class"].startswith(core_class)]
    rng = random.Random(seed)
    out = {}
    for era, tables in eras.items():
        logs = [math.log(v) for table, v in pairs if table in tables]
        if not logs:
            raise ValueError(f"{path}: no fp32/int8 pair on {core_class} cores in tables {', '.join(tables)} ({era})")
        boot = sorted(sum(rng.choice(logs) for _ in logs) / len(logs) for _ in range(2000))
        out[era] = (round(math.exp(sum(logs) / len(logs)), 2),
                    (round(math.exp(boot[100]), 2), round(math.exp(boot[1899]), 2)), len(logs))
    return Speedup(out)
