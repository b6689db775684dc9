"""The adb runner against a fake `adb` that replays recorded output of the real benchmark tools
(tests/fixtures/adb, README there for where each format comes from)."""
import os
from pathlib import Path

import pytest

from search.errors import UserError
from search.runners import adb as adb_module
from search.runners.adb import AdbError, AdbRunner, parse_benchmark_model, parse_peak_memory, parse_perf_test

from tests.conftest import ADB_FIXTURES as FIXTURES, SERIAL

REMOTE = "/data/local/tmp/compression-search"


def files(tmp_path: Path, tool: str, n: int, suffix: str) -> tuple[Path, dict[str, Path], Path]:
    (tmp_path / "models").mkdir()
    binary = tmp_path / tool
    binary.write_bytes(b"\x7fELF")
    models = {f"m{i}": tmp_path / "models" / f"m{i}{suffix}" for i in range(n)}
    for p in models.values():
        p.write_bytes(b"model")
    reference = tmp_path / f"ref{suffix}"
    reference.write_bytes(b"reference")
    return binary, models, reference


def tool_calls(calls: list[list[str]], tool: str) -> list[list[str]]:
    return [c for c in calls if c[3:4] == [f"{REMOTE}/{tool}"]]


def test_benchmark_model_output_parses_to_the_printed_median_and_percentile_iqr():
    t = parse_benchmark_model((FIXTURES / "benchmark_model.txt").read_text())
    # the timed runs (count=51), not the warm-up line; p5=19139 p95=20398 us -> IQR = 1259 * 1.349 / 3.290
    assert t.runs == 51 and t.median_ms == pytest.approx(19.900)
    assert t.iqr_ms == pytest.approx(1.259 * 1.34898 / 3.28971, rel=1e-4)


def test_benchmark_model_without_percentiles_falls_back_to_mean_and_std():
    t = parse_benchmark_model((FIXTURES / "benchmark_model_no_percentiles.txt").read_text())
    assert (t.runs, t.median_ms) == (50, pytest.approx(79.678))
    assert t.iqr_ms == pytest.approx(1.349 * 2.050, rel=1e-3)


def test_benchmark_model_all_same_runs():
    t = parse_benchmark_model("INFO: count=5 curr=1500(all same) p5=1500 median=1500 p95=1500\n")
    assert (t.median_ms, t.iqr_ms, t.runs) == (1.5, 0.0, 5)


def test_perf_test_output_parses_p50_and_iqr_in_milliseconds():
    t = parse_perf_test((FIXTURES / "onnxruntime_perf_test.txt").read_text())
    # P50 0.0232931 s, P90 0.0239929 s -> IQR = 0.6998 ms * 1.349 / 1.2816
    assert (t.runs, t.median_ms) == (50, pytest.approx(23.2931))
    assert t.iqr_ms == pytest.approx(0.6998 * 1.34898 / 1.28155, rel=1e-4)


def test_older_perf_test_statistics_format_parses():
    old = "Total iterations:1000\nAverage time cost:58.8053 ms\nP50 Latency is 0.0587108 sec\nP90 Latency is 0.0599845 sec\n"
    t = parse_perf_test(old)
    assert (t.runs, t.median_ms) == (1000, pytest.approx(58.7108))


def test_tflite_commands_serial_flags_and_reference_schedule(tmp_path, fake_adb):
    binary, models, reference = files(tmp_path, "benchmark_model", 23, ".tflite")
    runner = AdbRunner(SERIAL, "benchmark_model", binary, flags=["--use_xnnpack=true"], threads=2, runs=30, warmup=5)
    timings, refs = runner.measure(models, reference)
    calls = fake_adb()
    assert all(c[:2] == ["-s", SERIAL] for c in calls)
    assert calls[0] == ["-s", SERIAL, "get-state"]
    assert ["-s", SERIAL, "push", str(binary), f"{REMOTE}/"] in calls
    assert ["-s", SERIAL, "shell", "chmod", "755", f"{REMOTE}/benchmark_model"] in calls
    assert sum(c[2:3] == ["push"] and c[3] == str(binary) for c in calls) == 1  # the binary is pushed once
    assert ["-s", SERIAL, "push", str(models["m7"]), f"{REMOTE}/model.tflite"] in calls
    runs = tool_calls(calls, "benchmark_model")
    assert runs[1][4:] == [f"--graph={REMOTE}/model.tflite", "--num_threads=2", "--num_runs=30", "--warmup_runs=5",
                           "--use_xnnpack=true"]
    graphs = ["ref" if c[4].endswith("reference.tflite") else "m" for c in runs]
    # reference at the start, after models 10 and 20, and at the end
    assert graphs == ["ref"] + ["m"] * 10 + ["ref"] + ["m"] * 10 + ["ref"] + ["m"] * 3 + ["ref"]
    assert list(timings) == list(models) and len(refs) == 4
    assert timings["m0"] == adb_module.Timing(pytest.approx(19.9), pytest.approx(0.516, abs=1e-3), 51)


def test_onnxruntime_commands_and_settings(tmp_path, fake_adb):
    binary, models, reference = files(tmp_path, "onnxruntime_perf_test", 10, ".onnx")
    runner = AdbRunner(SERIAL, "onnxruntime_perf_test", binary, threads=3, runs=40)
    timings, refs = runner.measure(models, reference)
    runs = tool_calls(fake_adb(), "onnxruntime_perf_test")
    assert runs[0][4:] == ["-I", "-s", "-m", "times", "-r", "40", "-x", "3", "-e", "cpu", f"{REMOTE}/reference.onnx"]
    assert len(runs) == 12 and len(refs) == 2  # 10 models: start and end (end coincides with "after 10")
    assert timings["m3"].median_ms == pytest.approx(23.2931) and timings["m3"].runs == 50
    assert runner.settings() == {"runner": "adb", "serial": SERIAL, "tool": "onnxruntime_perf_test",
                                 "binary": "onnxruntime_perf_test", "flags": [], "threads": 3, "runs": 40,
                                 "warmup": 1, "device_model": "Pixel 7", "abi": "arm64-v8a"}
    assert sum(c[2:3] == ["get-state"] for c in fake_adb()) == 1  # the device is checked once


def test_peak_memory_of_either_tool():
    assert parse_peak_memory((FIXTURES / "benchmark_model_10s.txt").read_text()) == 17.4102
    assert parse_peak_memory((FIXTURES / "onnxruntime_perf_test.txt").read_text()) == pytest.approx(46.046, abs=1e-3)
    assert parse_peak_memory((FIXTURES / "benchmark_model.txt").read_text()) is None  # not asked for: not printed


def test_sustained_run_compares_its_last_part_with_its_first(tmp_path, fake_adb, monkeypatch):
    binary, models, _ = files(tmp_path, "benchmark_model", 1, ".tflite")
    cool, hot = FIXTURES / "benchmark_model_10s.txt", FIXTURES / "benchmark_model_10s_throttled.txt"
    monkeypatch.setenv("FAKE_ADB_TOOL_OUTPUT", os.pathsep.join(map(str, [cool, cool, hot])))
    s = AdbRunner(SERIAL, "benchmark_model", binary, threads=4, warmup=10).sustained(models["m0"], 30, parts=3)
    runs = tool_calls(fake_adb(), "benchmark_model")
    assert len(runs) == 3 and all(r[4:] == [f"--graph={REMOTE}/model.tflite", "--num_threads=4", "--num_runs=1",
                                            "--min_secs=10", "--max_secs=10", "--report_peak_memory_footprint=true",
                                            "--warmup_runs=10"] for r in runs)
    # medians of the timed runs in each part's last count= line: 19.926 ms cool, 26.293 ms throttled
    assert (s.first.median_ms, s.last.median_ms) == (pytest.approx(19.926), pytest.approx(26.293))
    assert s.slowdown == pytest.approx(26.293 / 19.926) and s.first.runs > 400
    assert (s.seconds, s.parts, s.peak_memory_mb) == (30.0, 3, 17.5352)  # the largest peak of the three parts


def test_sustained_run_with_onnxruntime_runs_for_a_duration(tmp_path, fake_adb):
    binary, models, _ = files(tmp_path, "onnxruntime_perf_test", 1, ".onnx")
    s = AdbRunner(SERIAL, "onnxruntime_perf_test", binary, threads=2).sustained(models["m0"], 60)
    runs = tool_calls(fake_adb(), "onnxruntime_perf_test")
    assert len(runs) == 6 and runs[0][4:] == ["-I", "-s", "-m", "duration", "-t", "10", "-x", "2", "-e", "cpu",
                                              f"{REMOTE}/model.onnx"]
    assert s.slowdown == 1.0 and s.peak_memory_mb == pytest.approx(46.046, abs=1e-3)


@pytest.mark.parametrize("seconds,parts", [(0, 6), (60, 1), (60, 2.5)])
def test_sustained_run_refuses_bad_settings_before_touching_the_phone(tmp_path, fake_adb, seconds, parts):
    binary, models, _ = files(tmp_path, "benchmark_model", 1, ".tflite")
    with pytest.raises(AdbError, match="seconds > 0 and parts >= 2"):
        AdbRunner(SERIAL, "benchmark_model", binary).sustained(models["m0"], seconds, parts)
    assert fake_adb() == []


@pytest.mark.parametrize("serial", ["OFFLINE9", "NOSUCH42"])
def test_unavailable_device_names_the_serial(tmp_path, fake_adb, serial):
    binary, models, reference = files(tmp_path, "benchmark_model", 1, ".tflite")
    with pytest.raises(AdbError, match=serial) as e:
        AdbRunner(serial, "benchmark_model", binary).measure(models, reference)
    assert isinstance(e.value, UserError) and "\n" not in str(e.value)
    assert "offline" in str(e.value) or "not found" in str(e.value)


def test_unparseable_output_names_the_tool(tmp_path, fake_adb, monkeypatch):
    binary, models, reference = files(tmp_path, "onnxruntime_perf_test", 1, ".onnx")
    garbage = tmp_path / "garbage.txt"
    garbage.write_text("Segmentation fault\n")
    monkeypatch.setenv("FAKE_ADB_TOOL_OUTPUT", str(garbage))
    with pytest.raises(AdbError, match=r"onnxruntime_perf_test output .* not understood.*Segmentation fault"):
        AdbRunner(SERIAL, "onnxruntime_perf_test", binary).measure(models, reference)


def test_tool_failure_names_the_tool_and_its_error(tmp_path, fake_adb, monkeypatch):
    binary, models, reference = files(tmp_path, "benchmark_model", 1, ".tflite")
    monkeypatch.setenv("FAKE_ADB_TOOL_OUTPUT", str(FIXTURES / "benchmark_model_failed.txt"))
    monkeypatch.setenv("FAKE_ADB_TOOL_RC", "1")
    with pytest.raises(AdbError, match=r"benchmark_model failed on R5CT12ABC .*exit 1.*ERROR: tensorflow/lite"):
        AdbRunner(SERIAL, "benchmark_model", binary).measure(models, reference)


def test_bad_inputs_fail_before_touching_the_phone(tmp_path, fake_adb):
    binary, models, reference = files(tmp_path, "benchmark_model", 1, ".onnx")
    with pytest.raises(AdbError, match="unknown tool 'snpe'"):
        AdbRunner(SERIAL, "snpe", binary)
    with pytest.raises(AdbError, match="binary not found: .*nope"):
        AdbRunner(SERIAL, "benchmark_model", tmp_path / "nope")
    with pytest.raises(AdbError, match=r"benchmark_model cannot run .*ref\.onnx"):
        AdbRunner(SERIAL, "benchmark_model", binary).measure(models, reference)
    with pytest.raises(AdbError, match="adb not found: '/no/adb'"):
        AdbRunner(SERIAL, "benchmark_model", binary, adb="/no/adb").settings()
    assert fake_adb() == []


def test_no_shell_true_anywhere():
    assert "shell=True" not in Path(adb_module.__file__).read_text()
