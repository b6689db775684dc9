"""Faults with real processes and real signals, on one study, in the order a bad afternoon brings them:
a worker process killed mid-trial, a second driver started on the same study, Ctrl-C, the driver
SIGKILLed, then a resume that finishes the study. Afterwards Optuna and MLflow must agree: every
complete trial once, the interrupted ones FAIL (KILLED runs), the crashed one FAILED with its cause."""
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

from tests.cli import DIGITS, env

pytestmark = pytest.mark.slow
STUDY = "faults"
N_TRIALS = 40
# a trial long enough (40 fine-tune steps, a few seconds) that a poll finds it running, short enough not to
# make the afternoon long: about ten trials run in it
ARGS = [*DIGITS, "finetune.steps=40", "ray.num_cpus=1", "ray.max_retries=0", f"study.name={STUDY}",
        "cache_dir=cache", "pareto.every=100"]
LONG = f"n_trials={N_TRIALS}"  # more than the interrupted drivers can finish, however fast the machine


class Driver:
    """`python -m search` as a user starts it, in its own session so a kill takes its local Ray too."""

    def __init__(self, folder: Path, *extra: str):
        self.folder = folder
        self.log = open(folder / f"driver-{time.time_ns()}.log", "w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "search", *ARGS, *extra, f"tracking.uri={uri(folder)}"],
                                     cwd=folder, env=env(folder), stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()

    def wait_for(self, condition, what: str, timeout: float = 1800) -> None:
        """Poll for an event (not a fixed time: training takes longer on a slower CPU); the ceiling only stops a
        hung driver."""
        deadline = time.time() + timeout
        while not condition():
            assert self.proc.poll() is None, f"driver ended before {what}:\n{self.output()[-3000:]}"
            assert time.time() < deadline, f"timed out waiting for {what}:\n{self.output()[-3000:]}"
            time.sleep(0.2)

    def finish(self, timeout: float = 1800) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill_all()

    def kill_all(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(120)


def uri(folder: Path) -> str:
    return f"sqlite:///{folder / 'mlflow.db'}"


def study(folder: Path) -> optuna.Study:
    storage = JournalStorage(JournalFileBackend(str(folder / "outputs" / STUDY / "optuna.journal")))
    return optuna.load_study(study_name=STUDY, storage=storage)


def count(folder: Path, state: TrialState) -> int:
    journal = folder / "outputs" / STUDY / "optuna.journal"
    return len(study(folder).get_trials(states=(state,))) if journal.exists() else 0


def running_task(pid: int) -> bool:
    """Whether a process is a Ray worker running a task now (Ray titles it ray::<function>, ray::IDLE between tasks)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::_task")
    except OSError:
        return False


def trial_tasks(session: int) -> list[int]:
    """Pids of the Ray worker processes of a driver's session running a task now; other Ray sessions on the
    machine are left alone."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and running_task(int(entry.name)) and os.getsid(int(entry.name)) == session:
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def kill_a_running_trial(driver: Driver) -> None:
    """SIGKILL a worker process of the driver's session while it runs a trial: its title is read again just
    before the signal, so a trial that ended after the scan is not mistaken for a running one (that worker
    would be idle, and no trial would fail)."""
    def killed() -> bool:
        for pid in trial_tasks(driver.proc.pid):
            if running_task(pid):
                os.kill(pid, signal.SIGKILL)
                return True
        return False
    driver.wait_for(killed, "a running trial to kill")


@pytest.fixture(scope="module")
def afternoon(tmp_path_factory, shared_cache):
    folder = tmp_path_factory.mktemp("faults")
    (folder / "cache").symlink_to(shared_cache)
    events = {}

    first = Driver(folder, LONG)
    try:
        first.wait_for(lambda: "full-width validation accuracy" in first.output(), "the supernet")
        first.wait_for(lambda: count(folder, TrialState.COMPLETE) >= 1, "a complete trial")
        kill_a_running_trial(first)  # a worker process dies mid-trial
        first.wait_for(lambda: count(folder, TrialState.FAIL) >= 1, "the crashed trial to FAIL")
        first.wait_for(lambda: count(folder, TrialState.COMPLETE) >= 2, "2 complete trials")

        second = Driver(folder, LONG)  # the same study, while the first still runs it
        events["second"] = (second.finish(600), second.output())

        first.wait_for(lambda: bool(trial_tasks(first.proc.pid)), "a running trial")
        sent = time.time()
        first.proc.send_signal(signal.SIGINT)
        events["sigint"] = (first.proc.wait(600), time.time() - sent, first.output())
    finally:
        first.kill_all()
    events["after_sigint"] = {s: count(folder, s) for s in (TrialState.COMPLETE, TrialState.FAIL, TrialState.RUNNING)}

    resumed = Driver(folder, LONG)
    try:
        resumed.wait_for(lambda: "validation accuracy" in resumed.output() and trial_tasks(resumed.proc.pid),
                         "a trial after resume")  # the supernet comes from the cache: any task is a trial
        resumed.kill_all()  # SIGKILL: the driver and its local Ray, mid-trial
    finally:
        resumed.kill_all()
    events["after_sigkill"] = {s: count(folder, s) for s in (TrialState.COMPLETE, TrialState.FAIL, TrialState.RUNNING)}

    events["target"] = count(folder, TrialState.COMPLETE) + 3  # the last driver finishes the study here
    last = Driver(folder, f"n_trials={events['target']}", "ray.max_retries=1")  # a retry covers a dying worker
    try:
        last.wait_for(lambda: "resumed:" in last.output(), "the second resume")
        kill_a_running_trial(last)
    finally:
        events["last"] = (last.finish(), last.output())
    return folder, events


def test_a_second_driver_on_a_running_study_stops_with_a_clear_line(afternoon):
    _, events = afternoon
    code, output = events["second"]
    assert code == 2 and "being run by another process" in output and "Traceback" not in output


def test_ctrl_c_stops_promptly_and_says_how_to_resume(afternoon):
    _, events = afternoon
    code, seconds, output = events["sigint"]
    assert code == 130 and seconds < 60, (code, seconds, output[-2000:])  # stops promptly, on any machine
    assert "Resume with the same command" in output and "Traceback" not in output
    assert events["after_sigint"][TrialState.RUNNING] == 0


def test_sigkill_leaves_a_running_trial_that_the_resume_marks_failed(afternoon):
    _, events = afternoon
    assert events["after_sigkill"][TrialState.RUNNING] >= 1
    code, output = events["last"]
    assert code == 0, output[-3000:]
    assert "trial(s) a stopped driver left running are marked FAIL" in output


def test_optuna_and_mlflow_agree_after_everything(afternoon):
    folder, events = afternoon
    trials = study(folder).trials
    states = Counter(t.state for t in trials)
    assert states[TrialState.COMPLETE] == events["target"] and states[TrialState.RUNNING] == 0
    # the crashed worker and SIGKILL's trial; Ctrl-C fails the trials still running then, none if they had all finished
    assert states[TrialState.FAIL] >= 2
    # the worker killed under ray.max_retries=1 was re-run, not failed
    before = events["after_sigkill"]
    assert states[TrialState.FAIL] == before[TrialState.FAIL] + before[TrialState.RUNNING]

    client = MlflowClient(uri(folder))
    experiment = client.get_experiment_by_name(STUDY).experiment_id
    runs = client.search_runs([experiment], "tags.`search.role` = 'trial'", max_results=1000)
    numbers = Counter(int(r.data.tags["trial"]) for r in runs)
    assert max(numbers.values()) == 1, "a trial has two runs"
    by_number = {int(r.data.tags["trial"]): r for r in runs}
    for t in trials:
        run = by_number.get(t.number)
        if t.state == TrialState.COMPLETE:
            assert run.info.status == "FINISHED" and run.data.metrics["accuracy"] == t.user_attrs["accuracy"]
        elif run is not None:
            assert run.info.status in ("FAILED", "KILLED")
    statuses = Counter(r.info.status for r in runs)
    assert statuses["KILLED"] >= 1 and statuses["RUNNING"] == 0  # SIGKILL's trial; Ctrl-C's too if one still ran
    crashed = [r for r in runs if r.info.status == "FAILED"]
    assert crashed and all("died" in r.data.tags["error"].lower() or "crash" in r.data.tags["error"].lower()
                           for r in crashed), [r.data.tags.get("error") for r in crashed]


def test_two_studies_at_once_share_one_mlflow_store_and_one_optuna_storage(tmp_path, shared_cache):
    (tmp_path / "cache").symlink_to(shared_cache)
    shared = [f"tracking.uri={uri(tmp_path)}", f"study.storage=sqlite:///{tmp_path / 'optuna.db'}", "cache_dir=cache",
              *DIGITS, "finetune.steps=5", "ray.num_cpus=1", "n_trials=4"]
    procs = {name: subprocess.Popen([sys.executable, "-m", "search", *shared, f"study.name={name}"], cwd=tmp_path,
                                    env=env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for name in ("left", "right")}
    outputs = {name: p.communicate(timeout=600)[0] for name, p in procs.items()}
    assert all(p.returncode == 0 for p in procs.values()), {n: o[-2000:] for n, o in outputs.items()}
    client = MlflowClient(uri(tmp_path))
    for name in procs:
        stored = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'optuna.db'}")
        assert len(stored.get_trials(states=(TrialState.COMPLETE,))) == 4
        runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
        assert Counter(r.data.tags["search.role"] for r in runs) == {"study": 1, "trial": 4}
        assert all(r.info.status == "FINISHED" for r in runs)
