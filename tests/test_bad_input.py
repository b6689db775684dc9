"""Bad input, as a user gives it: each row runs the command's entry point (`python -m search` or
`python -m search.calibrate`) in a fresh folder and must end with exit code 2 and exactly one
line naming the key or file at fault, no traceback, and nothing written (no MLflow store, no
Optuna journal, no study or Hydra folder, no predictor): the folder is as it was before.

A few rows, one of each kind, run the real command in a new interpreter (two at a time: each is
mostly start-up), so the console is exactly what a user sees; the others call the same `main` in
this process, with its arguments, folder and home, and fail if the command got past its checks."""
from __future__ import annotations

import contextlib
import gzip
import importlib
import io
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from search import cli as search_cli
from tests.cli import ROOT, environment

A50 = (ROOT / "conf" / "measurements" / "fbnet_samsung_a50.csv").read_text().splitlines()[:6]
OPS_1 = A50[2].split(",")[1]
MNIST = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
         "t10k-labels-idx1-ubyte.gz")


# --- what a row puts in its folder first -------------------------------------------------------

def empty_folder(tmp: Path) -> None:
    (tmp / "empty").mkdir()


def not_an_image(tmp: Path) -> None:
    (tmp / "images" / "cat").mkdir(parents=True)
    (tmp / "images" / "cat" / "a.png").write_text("not a picture")


def cifar_wrong_size(tmp: Path) -> None:
    (tmp / "cifar").mkdir()
    (tmp / "cifar" / "data_batch_1.bin").write_bytes(bytes(1000))


def cifar_pickled_only(tmp: Path) -> None:
    (tmp / "cifar" / "cifar-10-batches-py").mkdir(parents=True)
    (tmp / "cifar" / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"\x80\x04K\x01.")


def idx_corrupt(where: str, drop: str | None = None):
    """Four idx files in `where` (under the row's folder), the first not gzip; without `drop`."""
    def setup(tmp: Path) -> None:
        folder = tmp / where
        folder.mkdir(parents=True)
        for name in MNIST:
            (folder / name).write_bytes(gzip.compress(bytes(16)))
        (folder / MNIST[0]).write_bytes(b"this is not gzip")
        if drop:
            (folder / drop).unlink()
    return setup


def not_sqlite(tmp: Path) -> None:
    (tmp / "mlflow.db").write_text("a text file where the MLflow database should be\n")


def write(tmp: Path, name: str, lines: list[str]) -> None:
    (tmp / name).write_text("\n".join(lines) + "\n")


def bench_missing_column(tmp: Path) -> None:
    write(tmp, "bench.csv", [line.rpartition(",")[0] for line in A50])


def bench_latency_a_word(tmp: Path) -> None:
    write(tmp, "bench.csv", [*A50[:2], A50[2].rpartition(",")[0] + ",fast", *A50[3:]])


def bench_unknown_op(tmp: Path) -> None:
    write(tmp, "bench.csv", [*A50[:3], A50[3].replace(" skip", " k7_e9", 1), *A50[4:]])


def bench_good(tmp: Path) -> None:
    write(tmp, "bench.csv", A50)


def bench_and_bad_eval(tmp: Path) -> None:
    bench_good(tmp)
    write(tmp, "eval.csv", [A50[0], f"x,{OPS_1},-4"])


SEARCH = "search"
CALIBRATE = "search.calibrate"
FBNET = ["target=snapdragon665", "space=fbnet"]

# (id, command, overrides ({tmp} is the row's folder), set-up or None, what the one line must name)
CASES = [
    # config values: types
    ("n_trials-not-a-number", SEARCH, ["n_trials=abc"], None, "n_trials"),
    ("seed-a-fraction", SEARCH, ["seed=1.5"], None, "seed"),
    ("lr-a-word", SEARCH, ["supernet.lr=fast"], None, "supernet.lr"),
    ("widths-not-numbers", SEARCH, ["space.widths=[a,1.0]"], None, "space.widths"),
    # config values: ranges
    ("n_trials-zero", SEARCH, ["n_trials=0"], None, "n_trials"),
    ("val_size-one", SEARCH, ["data.val_size=1.0"], None, "data.val_size"),
    # unknown names
    ("target-unknown", SEARCH, ["target=nope"], None, "target"),
    ("sampler-unknown", SEARCH, ["sampler=grid"], None, "sampler"),
    ("cpus_per_trial-above-the-local-ray", SEARCH, ["ray.num_cpus=2", "ray.cpus_per_trial=3"], None, "ray.cpus_per_trial"),
    ("gpus_per_trial-above-this-machine", SEARCH, ["ray.gpus_per_trial=4096"], None, "ray.gpus_per_trial"),
    ("key-unknown", SEARCH, ["n_trail=5"], None, "n_trail"),
    ("key-unknown-appended", SEARCH, ["+supernet.momentum=0.9"], None, "supernet.momentum"),
    ("objective-unknown", SEARCH, ["objectives=[accuracy,energy]"], None, "objectives"),
    ("sampler-not-optuna", SEARCH, ["sampler._target_=os.system"], None, "sampler._target_"),
    # what the space and the target allow
    ("bits-without-32", SEARCH, ["space.bits=[3]"], None, "space.bits"),
    ("bits-not-allowed", SEARCH, ["space.bits=[12,32]"], None, "space.bits"),
    ("sparsity-one", SEARCH, ["space.sparsity=[0.0,1.0]"], None, "space.sparsity"),
    ("sparsity-negative", SEARCH, ["space.sparsity=[-0.1,0.0]"], None, "space.sparsity"),
    ("budget-below-fastest-network", SEARCH, ["budget.latency_ms=0.5"], None, "budget.latency_ms"),
    ("resolution-above-the-data", SEARCH, ["space.resolutions=[6,12]"], None, "space.resolutions"),  # digits: 8 px
    ("depth-zero", SEARCH, ["space.depths=[0]"], None, "space.depths"),
    ("predictor-missing", SEARCH, ["target=host"], None, "host.json"),
    ("file-unknown", SEARCH, ["target.file=pte"], None, "target.file"),
    ("file-not-what-the-runner-times", SEARCH, ["target=host-litert", "target.file=onnx"], None, "target.file"),
    # data folders and files
    ("data-root-unset", SEARCH, ["data=cifar10"], None, "data.root"),
    ("data-root-missing", SEARCH, ["data=imagefolder", "data.root={tmp}/nowhere"], None, "data.root"),
    ("data-root-empty", SEARCH, ["data=imagefolder", "data.root={tmp}/empty"], empty_folder, "data.root"),
    ("image-not-an-image", SEARCH, ["data=imagefolder", "data.root={tmp}/images"], not_an_image, "a.png"),
    ("cifar10-wrong-size", SEARCH, ["data=cifar10", "data.root={tmp}/cifar"], cifar_wrong_size, "data_batch_1.bin"),
    ("cifar10-pickled-only", SEARCH, ["data=cifar10", "data.root={tmp}/cifar"], cifar_pickled_only, "data.root"),
    ("mnist-cache-corrupt", SEARCH, ["data=mnist"], idx_corrupt("cache/mnist"), MNIST[0]),
    ("fashion-cache-corrupt", SEARCH, ["data=fashion_mnist"], idx_corrupt("cache/fashion_mnist"), MNIST[0]),
    ("fashion-root-corrupt", SEARCH, ["data=fashion_mnist", "data.root={tmp}/fm"], idx_corrupt("fm"), MNIST[0]),
    ("fashion-root-lacks-file", SEARCH, ["data=fashion_mnist", "data.root={tmp}/fm"], idx_corrupt("fm", MNIST[3]),
     MNIST[3]),
    ("fashion-root-missing", SEARCH, ["data=fashion_mnist", "data.root={tmp}/nowhere"], None, "data.root"),
    # services
    ("tracking-unreachable", SEARCH, ["tracking.uri=http://127.0.0.1:9"], None, "tracking.uri"),
    ("tracking-folder-missing", SEARCH, ["tracking.uri=sqlite:///{tmp}/nowhere/mlflow.db"], None, "tracking.uri"),
    ("tracking-not-sqlite", SEARCH, [], not_sqlite, "tracking.uri"),
    ("storage-unreachable", SEARCH, ["study.storage=postgresql://u@127.0.0.1:9/optuna"], None, "study.storage"),
    ("ray-unreachable", SEARCH, ["ray.address=127.0.0.1:9"], None, "ray.address"),
    ("ray-address-malformed", SEARCH, ["ray.address=just-a-host"], None, "ray.address"),
    # calibration: measurement files, values, services
    ("bench-missing-column", CALIBRATE, [*FBNET, "benchmarks=bench.csv"], bench_missing_column, "bench.csv:1"),
    ("bench-latency-a-word", CALIBRATE, [*FBNET, "benchmarks=bench.csv"], bench_latency_a_word, "bench.csv:3"),
    ("bench-unknown-op", CALIBRATE, [*FBNET, "benchmarks=bench.csv"], bench_unknown_op, "bench.csv:4"),
    ("bench-missing", CALIBRATE, [*FBNET, "benchmarks={tmp}/nowhere.csv"], None, "nowhere.csv"),
    ("evaluate-negative-latency", CALIBRATE, [*FBNET, "benchmarks=bench.csv", "evaluate=eval.csv"],
     bench_and_bad_eval, "eval.csv:2"),
    ("calibrate-holdout-above-one", CALIBRATE, [*FBNET, "holdout=1.5"], None, "holdout"),
    ("calibrate-runner-threads-zero", CALIBRATE, ["target=host", "runner=host", "runner.threads=0"], None, "runner"),
    ("calibrate-tracking-unreachable", CALIBRATE, [*FBNET, "benchmarks=bench.csv",
                                                   "tracking.uri=http://127.0.0.1:9"], bench_good, "tracking.uri"),
]


# one row of each kind runs as a new interpreter
REAL = {"n_trials-not-a-number", "key-unknown", "budget-below-fastest-network", "mnist-cache-corrupt",
        "tracking-not-sqlite", "ray-unreachable", "bench-missing-column", "calibrate-runner-threads-zero"}


def common(command: str, tmp: Path) -> list[str]:
    """Where a run would write, all inside the row's folder (a row's own overrides come later and win)."""
    where = [f"tracking.uri=sqlite:///{tmp}/mlflow.db", f"cache_dir={tmp}/cache"]
    if command == SEARCH:
        return [*where, "data=digits", f"study.dir={tmp}/study"]
    return [*where, f"target.predictor={tmp}/predictor.json"]


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def arguments(command: str, overrides: list[str], tmp: Path) -> list[str]:
    return [a.format(tmp=tmp) for a in [*common(command, tmp), *overrides]]


def run(command: str, overrides: list[str], tmp: Path) -> subprocess.CompletedProcess:
    """The command as a user runs it, importing this checkout's code, with a home folder of its own."""
    return subprocess.run([sys.executable, "-m", command, *arguments(command, overrides, tmp)], cwd=tmp,
                          env=environment(tmp / "home"), capture_output=True, text=True, timeout=120)


def call(command: str, overrides: list[str], tmp: Path) -> subprocess.CompletedProcess:
    """The command's `main` in this process, as `run` would start it; its Hydra app (where the study or
    calibration begins) is replaced by a message, so a row whose input passed the checks fails its test."""
    module = importlib.import_module(f"{command}.__main__" if command == SEARCH else command)
    args = arguments(command, overrides, tmp)
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        patch.setattr(sys, "argv", [command, *args])
        patch.chdir(tmp)
        patch.setenv("HOME", str(tmp / "home"))
        patch.setattr(search_cli, "hydra_app", lambda *a: print("the input passed every check", file=sys.stderr))
        try:
            module.main()
            code = 0
        except SystemExit as e:
            code = e.code
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Every row's folder, its contents before the run, and the run."""
    def prepare(case) -> tuple[Path, dict]:
        name, _, _, setup, _ = case
        tmp = tmp_path_factory.mktemp(name)
        (tmp / "home").mkdir()
        if setup:
            setup(tmp)
        return tmp, snapshot(tmp)

    def real(case):
        tmp, before = prepare(case)
        return case[0], (tmp, before, run(case[1], case[2], tmp))

    with ThreadPoolExecutor(max_workers=2) as pool:
        done = dict(pool.map(real, [c for c in CASES if c[0] in REAL]))
    for case in CASES:
        if case[0] not in REAL:
            tmp, before = prepare(case)
            done[case[0]] = (tmp, before, call(case[1], case[2], tmp))
    return done


@pytest.mark.slow
@pytest.mark.parametrize("name,names", [(c[0], c[4]) for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line_naming_it_and_writes_nothing(results, name, names):
    tmp, before, result = results[name]
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 2, output[-3000:]
    assert "Traceback" not in output
    lines = output.splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith("error: ") and names in lines[0], lines[0]
    assert snapshot(tmp) == before
    for written in ("study", "outputs", "mlruns", "predictor.json"):
        assert not (tmp / written).exists()


def test_the_table_covers_enough_bad_inputs():
    assert len(CASES) >= 24 and len({c[0] for c in CASES}) == len(CASES)
    assert REAL <= {c[0] for c in CASES} and {c[1] for c in CASES if c[0] in REAL} == {SEARCH, CALIBRATE}


@pytest.mark.parametrize("content", [b"", b"not a zip file", b"PK\x03\x04 truncated"], ids=["empty", "text", "truncated"])
def test_a_corrupt_supernet_cache_entry_names_it(tmp_path, content):
    """Read after the data and the predictor, so not in the table above (the study has started Ray by then)."""
    from search import supernet
    from search.errors import UserError

    path = tmp_path / "supernets" / "abc.npz"
    path.parent.mkdir()
    path.write_bytes(content)
    with pytest.raises(UserError, match=r"^cache_dir: .*abc\.npz is not a readable supernet.*delete it"):
        supernet.load_or_train("abc", tmp_path, lambda: pytest.fail("a corrupt entry is not silently replaced"))


def test_ray_address_auto_must_answer_where_it_leads(monkeypatch):
    """`auto` is resolved as `ray.init` resolves it (here through RAY_ADDRESS), then preflighted like HOST:PORT."""
    import socket

    from ray._private.services import get_node_ip_address

    from search import preflight
    from search.config import ConfigError

    host = get_node_ip_address()  # Ray turns a loopback RAY_ADDRESS into this node's address
    with socket.socket() as server:
        server.bind((host, 0))  # bound, not yet listening: a connection is refused
        port = server.getsockname()[1]
        monkeypatch.setenv("RAY_ADDRESS", f"{host}:{port}")
        with pytest.raises(ConfigError, match=rf"^ray\.address: cannot reach {host}:{port} .*where auto leads"):
            preflight.ray_reachable("auto")
        server.listen()
        preflight.ray_reachable("auto")


def test_a_bad_setting_is_reported_before_torch_loads(tmp_path):
    """Checking a command's settings needs no torch (seconds to import): a typo is reported at once."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", SEARCH, "n_trials=abc"], cwd=tmp_path,
                          env=environment(tmp_path / "home"), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "error: n_trials" in done.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "search.config" in imported and "torch" not in imported
