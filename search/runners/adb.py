"""Latency of exported models measured on an Android phone over adb, with the phone-side benchmark tool of the
runtime that will ship them (TFLite/LiteRT `benchmark_model` or onnxruntime's `onnxruntime_perf_test`), so a
latency predictor can be fitted to the target device rather than to the host.

Both tools print summary statistics only, never the individual runs, so a Timing is rebuilt from what they print:
- benchmark_model (LiteRT tflite/tools/benchmark/benchmark_model.cc, BenchmarkModel::Run): one line per phase from
  tsl::Stat::OutputToStream, `count=N first= curr= min= max= avg= std=` in microseconds, warm-up first, then the
  timed runs; builds with StatWithPercentiles append `p5= median= p95=`.
- onnxruntime_perf_test (onnxruntime/test/perftest/performance_runner.cc, PerformanceRunner::Run and
  PerformanceResult::DumpToFile): `Total inference requests: N`, `Average inference time cost: X ms`, and, when no
  result file is given, `Min/Max/P50/P90/P95/P99/P999 Latency: X s` in seconds (older builds: `P50 Latency is X sec`).

Peak memory: benchmark_model with `--report_peak_memory_footprint=true` prints `Overall peak memory footprint (MB)
via periodic monitoring: X` (BenchmarkLoggingListener::OnBenchmarkEnd); onnxruntime_perf_test always prints
`Peak working set size: N bytes`.
"""
from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

from tqdm import tqdm

from search.errors import UserError
from search.runners.host import Timing

MODEL_SUFFIXES = {"benchmark_model": (".tflite",), "onnxruntime_perf_test": (".onnx", ".ort")}
BACKENDS = {"benchmark_model": "litert", "onnxruntime_perf_test": "onnx"}  # whose files each tool runs
ADB_TIMEOUT_S, PUSH_TIMEOUT_S, RUN_TIMEOUT_S = 60.0, 600.0, 1800.0
_Z = NormalDist().inv_cdf
_IQR_SIGMAS = _Z(0.75) - _Z(0.25)  # 1.349: the IQR of a normal distribution, in standard deviations
_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


class AdbError(UserError):
    """The phone, adb or the benchmark tool failed; the message names the serial, command or file at fault."""


def _iqr(percentiles: Mapping[float, float]) -> float | None:
    """IQR from printed percentiles. Neither tool prints quartiles, so the printed pair nearest the quartiles is
    rescaled by normal quantiles: exact if quartiles were printed, a normal-shape approximation otherwise
    (p5/p95 for benchmark_model; P50/P90 for onnxruntime_perf_test, which errs high on right-skewed latencies)."""
    lo = min((q for q in percentiles if q <= 50), key=lambda q: abs(q - 25), default=None)
    hi = min((q for q in percentiles if q >= 50), key=lambda q: abs(q - 75), default=None)
    if lo is None or hi is None or lo == hi:
        return None
    return max(0.0, (percentiles[hi] - percentiles[lo]) * _IQR_SIGMAS / (_Z(hi / 100) - _Z(lo / 100)))


def parse_benchmark_model(text: str) -> Timing:
    """The timed runs of a benchmark_model log: its last `count=` line (the first is the warm-up).
    Median: `median=` when printed, else the mean (`avg=`) stands in for it. IQR: from p5/p95 when printed, else
    1.349 * std, both assuming normally distributed run times. Raises ValueError if there is no such line."""
    stats = [line for line in text.splitlines() if re.match(r"(INFO: )?count=\d", line.strip())]
    if not stats:
        raise ValueError("no 'count=' timing line")
    s = {k: float(v) for k, v in re.findall(rf"(\w+)=({_NUM})", stats[-1])}
    if s["count"] < 1:
        raise ValueError("count=0: no run was timed")
    if "avg" not in s:  # Stat prints `count=N curr=V(all same)` when every run took equally long
        s.update(avg=s["curr"], std=0.0)
    pct: dict[float, float] = {q: s[k] for q, k in ((5, "p5"), (50, "median"), (95, "p95")) if k in s}
    iqr = _iqr(pct)
    return Timing(pct.get(50, s["avg"]) / 1e3, (_IQR_SIGMAS * s["std"] if iqr is None else iqr) / 1e3, int(s["count"]))


def parse_perf_test(text: str) -> Timing:
    """The summary of an onnxruntime_perf_test run: median = P50, IQR from P50/P90 (see _iqr), runs = requests.
    Raises ValueError if the percentiles or the request count are missing (they print without a result file)."""
    pct = {float(f"{d[:2]}.{d[2:]}" if len(d) > 2 else d): float(v) * 1e3
           for d, v in re.findall(rf"^P(\d+) Latency(?::| is) ?({_NUM}) ?s", text, re.M)}
    runs = re.search(r"^(?:Total inference requests: ?|Total iterations: ?|Runs:)(\d+)", text, re.M)
    iqr = _iqr(pct)
    if 50 not in pct or iqr is None:
        raise ValueError("no 'P50 Latency' / 'P90 Latency' lines")
    if runs is None:
        raise ValueError("no 'Total inference requests' line")
    return Timing(pct[50], iqr, int(runs.group(1)))


def parse_peak_memory(text: str) -> float | None:
    """The tool's peak memory footprint in MB, or None when it did not print one."""
    if m := re.search(rf"Overall peak memory footprint \(MB\) via periodic monitoring: ({_NUM})", text):
        return float(m.group(1))
    if m := re.search(r"^Peak working set size: ?(\d+)(?: bytes)?", text, re.M):
        return int(m.group(1)) / 2**20
    return None


@dataclass(frozen=True)
class Sustained:
    """One model run without pause for `seconds`, timed in `parts` consecutive parts: a phone that throttles when
    it heats up shows it as `last` slower than `first` ("fast for 10 seconds but overheated after 30")."""

    first: Timing
    last: Timing
    seconds: float
    parts: int
    peak_memory_mb: float | None  # the largest the tool reported over the parts

    @property
    def slowdown(self) -> float:
        """Median latency of the last part over the first: 1.0 when the phone holds its speed."""
        return self.last.median_ms / self.first.median_ms


PARSERS: dict[str, Callable[[str], Timing]] = {"benchmark_model": parse_benchmark_model,
                                               "onnxruntime_perf_test": parse_perf_test}


def _useful_line(text: str) -> str:
    """The line of a tool's output that best says what went wrong: the first error-like one, else the first."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    bad = [line for line in lines if re.search(r"error|fail|not found|cannot|denied|invalid", line, re.I)]
    return ((bad or lines or ["(no output)"])[0])[:200]


class AdbRunner:
    """Measures models one at a time on the phone `serial` with `tool` (a local Android build at `binary`),
    pushed once to `remote_dir`. Threads, runs and warm-up runs go to the tool's own flags, then `flags`, which
    may override them. onnxruntime_perf_test has no warm-up flag: it always makes exactly one warm-up run."""

    def __init__(self, serial: str, tool: str, binary: str | Path, flags: Sequence[str] = (),
                 remote_dir: str = "/data/local/tmp/compression-search", adb: str = "adb", threads: int = 4,
                 runs: int = 50, warmup: int = 10) -> None:
        if tool not in MODEL_SUFFIXES:
            raise AdbError(f"adb runner: unknown tool {tool!r}; expected one of {sorted(MODEL_SUFFIXES)}")
        if not Path(binary).is_file():
            raise AdbError(f"adb runner: {tool} binary not found: {binary}")
        if threads < 1 or runs < 1 or warmup < 0:
            raise AdbError(f"adb runner: need threads >= 1, runs >= 1, warmup >= 0 (got {threads}, {runs}, {warmup})")
        self.serial, self.tool, self.binary, self.flags = serial, tool, Path(binary), tuple(flags)
        self.remote_dir, self.adb = remote_dir.rstrip("/"), adb
        self.threads, self.runs, self.warmup = threads, runs, warmup
        self._device: dict[str, str] | None = None
        self._remote_tool: str | None = None

    @property
    def backend(self) -> str:
        """The export backend whose files the tool runs (search.backends)."""
        return BACKENDS[self.tool]

    def settings(self) -> dict:
        """Plain data recorded with a fitted predictor: what was measured, how, and on which phone."""
        device = self._check_device()
        return {"runner": "adb", "serial": self.serial, "tool": self.tool, "binary": self.binary.name,
                "flags": list(self.flags), "threads": self.threads, "runs": self.runs,
                "warmup": self.warmup if self.tool == "benchmark_model" else 1,
                "device_model": device["model"], "abi": device["abi"]}

    def measure(self, models: Mapping[str, Path], reference: Path) -> tuple[dict[str, Timing], list[Timing]]:
        """Every model, plus the reference at the start, after every 10 models and at the end, so drift of the
        phone (thermal throttling, background load) over the run shows in the reference's timings."""
        for path in (reference, *models.values()):
            self._check_model(Path(path))
        self._install()
        remote_reference = self._push(Path(reference), "reference")
        references = [self._time(Path(reference), remote_reference)]
        timings: dict[str, Timing] = {}
        for i, (name, path) in enumerate(tqdm(models.items(), desc="measuring", unit="network", dynamic_ncols=True), 1):
            timings[name] = self._time(Path(path), self._push(Path(path), "model"))
            if i % 10 == 0 or i == len(models):
                references.append(self._time(Path(reference), remote_reference))
        return timings, references

    def sustained(self, model: Path, seconds: float = 60.0, parts: int = 6) -> Sustained:
        """`model` run for `seconds` without pause, as `parts` back-to-back runs of the tool of `seconds / parts`
        each (neither tool prints single run times, so a part's median is the finest view of speed over time),
        with the tool's peak memory footprint."""
        if not seconds > 0 or isinstance(parts, bool) or not isinstance(parts, int) or parts < 2:
            raise AdbError(f"sustained run: need seconds > 0 and parts >= 2 (got {seconds!r}, {parts!r})")
        self._check_model(Path(model))
        self._install()
        remote = self._push(Path(model), "model")
        outputs = [self._run(Path(model), remote, seconds / parts)
                   for _ in tqdm(range(parts), desc=f"sustained {seconds:g} s", unit="part", dynamic_ncols=True)]
        timings = [self._parse(Path(model), out) for out in outputs]
        memory = [m for m in map(parse_peak_memory, outputs) if m is not None]
        return Sustained(timings[0], timings[-1], float(seconds), parts, max(memory, default=None))

    def _check_model(self, path: Path) -> None:
        if path.suffix not in MODEL_SUFFIXES[self.tool]:
            raise AdbError(f"{self.tool} cannot run {path}: expected a {' or '.join(MODEL_SUFFIXES[self.tool])} file")
        if not path.is_file():
            raise AdbError(f"model file not found: {path}")

    def _adb(self, *args: str, timeout: float = ADB_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        cmd = [self.adb, "-s", self.serial, *args]
        try:
            return subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=timeout, check=False)
        except FileNotFoundError:
            raise AdbError(f"adb not found: {self.adb!r} (install Android platform-tools or pass adb=)") from None
        except subprocess.TimeoutExpired:
            raise AdbError(f"`{shlex.join(cmd[:6])}` timed out after {timeout:g} s") from None

    def _ok(self, *args: str, timeout: float = ADB_TIMEOUT_S) -> str:
        p = self._adb(*args, timeout=timeout)
        if p.returncode != 0:
            raise AdbError(f"`adb -s {self.serial} {shlex.join(args)}` failed (exit {p.returncode}): "
                           f"{_useful_line(p.stdout + p.stderr)}")
        return p.stdout.strip()

    def _check_device(self) -> dict[str, str]:
        if self._device is None:
            p = self._adb("get-state")
            if p.returncode != 0 or p.stdout.strip() != "device":
                raise AdbError(f"Android device {self.serial!r} is not ready: `adb -s {self.serial} get-state` said "
                               f"{_useful_line(p.stdout + p.stderr)!r}")
            self._device = {"model": self._ok("shell", "getprop", "ro.product.model"),
                            "abi": self._ok("shell", "getprop", "ro.product.cpu.abi")}
        return self._device

    def _install(self) -> str:
        if self._remote_tool is None:
            self._check_device()
            remote = f"{self.remote_dir}/{self.binary.name}"
            self._ok("shell", "mkdir", "-p", shlex.quote(self.remote_dir))
            self._ok("push", str(self.binary), self.remote_dir + "/", timeout=PUSH_TIMEOUT_S)
            self._ok("shell", "chmod", "755", shlex.quote(remote))
            self._remote_tool = remote
        return self._remote_tool

    def _push(self, model: Path, role: str) -> str:
        remote = f"{self.remote_dir}/{role}{model.suffix}"  # one slot per role: the phone never fills up
        self._ok("push", str(model), remote, timeout=PUSH_TIMEOUT_S)
        return remote

    def _tool_args(self, remote_model: str, seconds: float | None) -> list[str]:
        """The tool's flags for one run: `runs` timed runs, or as many as fit in `seconds` (then with the peak
        memory footprint, which benchmark_model reports only when asked)."""
        if self.tool == "benchmark_model":
            runs = ([f"--num_runs={self.runs}"] if seconds is None else
                    ["--num_runs=1", f"--min_secs={seconds:g}", f"--max_secs={seconds:g}",
                     "--report_peak_memory_footprint=true"])
            return [f"--graph={remote_model}", f"--num_threads={self.threads}", *runs,
                    f"--warmup_runs={self.warmup}", *self.flags]
        # -I: random inputs (no test_data_set dirs); -s: print the percentiles; the model path comes last
        runs = ["-m", "times", "-r", str(self.runs)] if seconds is None else ["-m", "duration", "-t", f"{seconds:g}"]
        return ["-I", "-s", *runs, "-x", str(self.threads), "-e", "cpu", *self.flags, remote_model]

    def _time(self, model: Path, remote_model: str) -> Timing:
        return self._parse(model, self._run(model, remote_model))

    def _run(self, model: Path, remote_model: str, seconds: float | None = None) -> str:
        """The tool's output for one run on the phone; AdbError naming the tool and its error if it failed."""
        words = [self._install(), *self._tool_args(remote_model, seconds)]
        p = self._adb("shell", *map(shlex.quote, words), timeout=RUN_TIMEOUT_S)  # the phone's sh re-splits them
        out = p.stdout + "\n" + p.stderr
        if p.returncode != 0:
            raise AdbError(f"{self.tool} failed on {self.serial} for {model} (exit {p.returncode}): {_useful_line(out)}")
        return out

    def _parse(self, model: Path, out: str) -> Timing:
        try:
            return PARSERS[self.tool](out)
        except (ValueError, KeyError) as e:
            raise AdbError(f"{self.tool} output for {model} on {self.serial} not understood ({e}): "
                           f"{_useful_line(out)}") from None
