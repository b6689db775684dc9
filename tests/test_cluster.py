"""A real two-node Ray cluster on this machine: `ray start --head` with no CPUs (as Ray advises for a cluster's
head), then `ray start --address` for a worker node with 2 CPUs, and a custom resource each (node_a, node_b). A
short study joins it with ray.address=..., as a user would: its driver is on the head's node, its supernet and
trials can run only on the worker node, two at a time. Each node runs in its own process session with its own temp dir and
an empty HOME, and is stopped by its process id (never `ray stop`, which stops every Ray on the
machine)."""
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.storages.journal import JournalFileBackend, JournalStorage

pytestmark = pytest.mark.slow

RAY = [sys.executable, "-m", "ray.scripts.scripts"]  # the `ray` command (same entry point) of this environment
STUDY = "cluster"


@dataclass
class Cluster:
    address: str
    env: dict[str, str]  # for drivers: the cluster's token, an empty HOME, this checkout's code
    folder: Path
    placed: dict[str, tuple[str, str]]  # node_a, node_b -> (its node id, where a task there imported `search`)
    slots: int  # trials a driver runs at once, counted node by node
    cpus: int  # the supernet task's: the largest node's


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def start_node(folder: Path, name: str, env: dict[str, str], cpus: int, *args: str) -> subprocess.Popen:
    """`ray start --block` in its own session, so stopping it (and anything left of it) touches only it. Its
    temp dir is short (/tmp/ray-...): Ray's socket paths in it must fit AF_UNIX's 107 bytes."""
    with open(folder / f"{name}.log", "w") as log:
        node = subprocess.Popen(
            [*RAY, "start", "--block", "--num-cpus", str(cpus), "--resources", json.dumps({name: 1}),
             "--temp-dir", tempfile.mkdtemp(prefix=f"ray-{name}-"), "--object-store-memory", str(100 * 2**20),
             "--dashboard-agent-listen-port", str(free_port()), "--disable-usage-stats", *args],
            cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 90
    while "Ray runtime started" not in (folder / f"{name}.log").read_text():
        if node.poll() is not None or time.monotonic() > deadline:
            stop_node(node)
            pytest.fail(f"ray start ({name}) did not come up:\n{(folder / f'{name}.log').read_text()[-3000:]}")
        time.sleep(0.5)
    return node


def stop_node(node: subprocess.Popen) -> None:
    """SIGTERM makes `ray start --block` stop its node's processes; whatever is left of its session is killed."""
    if node.poll() is None:
        node.terminate()
        try:
            node.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(node.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    node.wait()


# Run by a driver on the cluster, through the project's Workers (same runtime_env as a study): one task
# pinned to each node by its custom resource reports the node's id and where `search` was imported from; and
# how many trials the driver sees room for, and the CPUs of the supernet's task.
WHERE = """
import json, sys
import ray
from search.workers import Workers

def where():
    import search
    return ray.get_runtime_context().get_node_id(), search.__file__

with Workers(sys.argv[1], None, 1, 0) as workers:
    refs = {name: ray.remote(where).options(num_cpus=0, resources={name: 1}).remote() for name in sys.argv[2:]}
    print(json.dumps({"placed": {name: ray.get(ref) for name, ref in refs.items()},
                      "slots": workers.slots, "cpus": workers.cpus}))
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cluster")
    (folder / "home").mkdir()
    # Ray 2.60: a token for the whole cluster in every process's environment. RAY_AUTH_MODE=token is needed
    # too: a driver (or node) given an explicit address does not turn token auth on by itself.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")} | {
        "HOME": str(folder / "home"), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    node_env = {k: v for k, v in env.items() if k != "PYTHONPATH"}  # nodes get the project's code from the driver
    port = free_port()
    address = f"127.0.0.1:{port}"
    nodes = []
    try:
        nodes.append(start_node(folder, "node_a", node_env, 0, "--head", "--port", str(port),
                                "--ray-client-server-port", str(free_port()), "--include-dashboard", "false"))
        nodes.append(start_node(folder, "node_b", node_env, 2, "--address", address))
        where = subprocess.run([sys.executable, "-c", WHERE, address, "node_a", "node_b"], cwd=folder, env=env,
                               capture_output=True, text=True, timeout=120)
        assert where.returncode == 0, where.stderr[-3000:]
        seen = json.loads(where.stdout.splitlines()[-1])
        yield Cluster(address, env, folder, seen["placed"], seen["slots"], seen["cpus"])
    finally:
        for node in reversed(nodes):
            stop_node(node)


@pytest.fixture(scope="module")
def study(cluster):
    folder = cluster.folder
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    result = subprocess.run(
        [sys.executable, "-m", "search", "data=digits", "supernet.epochs=2", "finetune.steps=5",
         "finetune.bn_batches=2", "n_trials=4", f"ray.address={cluster.address}", f"tracking.uri={uri}",
         f"cache_dir={folder / 'cache'}", f"study.name={STUDY}"],
        cwd=folder, env=cluster.env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    return uri, result


def test_the_code_reaches_each_node_through_the_runtime_env(cluster):
    """Unpacked from the driver's py_modules into the node's own temp dir, not imported from a checkout."""
    assert set(cluster.placed) == {"node_a", "node_b"}
    for name, (_, module) in cluster.placed.items():
        assert Path(module).relative_to(tempfile.gettempdir()).parts[0].startswith(f"ray-{name}-") and "py_modules_files" in module, (name, module)


def test_the_study_completes_on_the_cluster(cluster, study):
    storage = JournalStorage(JournalFileBackend(str(cluster.folder / "outputs" / STUDY / "optuna.journal")))
    complete = optuna.load_study(study_name=STUDY, storage=storage).get_trials(
        states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == 4
    assert "trained" in study[1].stdout  # the supernet task fitted on one node
    assert "4/4" in study[1].stderr


def test_room_is_counted_node_by_node(cluster):
    """The head's 0 CPUs hold no trial: 2 slots, both on the worker node, which also sizes the supernet's task."""
    assert (cluster.slots, cluster.cpus) == (2, 2)


def test_trials_ran_on_the_worker_node_and_say_where(cluster, study):
    """Each trial run's `node` tag is where it ran, not where the driver is (the head's node)."""
    client = MlflowClient(study[0])
    runs = client.search_runs([client.get_experiment_by_name(STUDY).experiment_id], "tags.`search.role` = 'trial'")
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
    assert {r.data.tags["node"] for r in runs} == {cluster.placed["node_b"][0]} != {cluster.placed["node_a"][0]}


def test_nothing_is_written_to_the_home_folder(cluster, study):
    assert list((cluster.folder / "home").iterdir()) == []
