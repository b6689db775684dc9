"""Screenshots of the MLflow UI against a real finished study, taken in headless Chromium, for the README.

    .venv/bin/python scripts/ui_screenshot.py                     # the study scripts/search_report.py ran
    .venv/bin/python scripts/ui_screenshot.py --folder DIR --study NAME --out docs/

Starts `mlflow ui` on 127.0.0.1 (a free port) against DIR/mlflow.db and saves two pages: the study's runs
filtered to the Pareto front (`tags.pareto = "true"`), and the study run's `pareto/pareto.png` artifact.
Needs Chromium (Debian: `apt-get install chromium`).
"""
from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from mlflow import MlflowClient

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(url: str, server: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while True:
        try:
            urllib.request.urlopen(url, timeout=5).read()
            return
        except OSError:
            if server.poll() is not None or time.time() > deadline:
                raise SystemExit(f"mlflow ui did not answer at {url}")
            time.sleep(0.5)


def shoot(browser: str, url: str, out: Path, size: str = "1600,1000") -> None:
    with tempfile.TemporaryDirectory() as profile:  # a throwaway profile: nothing lands in HOME
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={profile}", f"--window-size={size}", "--virtual-time-budget=20000",
                        f"--screenshot={out}", url], check=True, capture_output=True, timeout=180)
    print(f"{out}  <-  {url}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, default=ROOT / "outputs" / "report")
    parser.add_argument("--study", default="report-default")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        raise SystemExit("no Chromium found: apt-get install chromium")
    uri = f"sqlite:///{(args.folder / 'mlflow.db').resolve()}"
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(args.study)
    if experiment is None:
        raise SystemExit(f"{uri}: no experiment {args.study!r}")
    parent = client.search_runs([experiment.experiment_id], "tags.`search.role` = 'study'")[0].info.run_id
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
                               "--port", str(port)], cwd=args.folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait(f"{base}/health", server)
        args.out.mkdir(parents=True, exist_ok=True)
        front = urllib.parse.quote('tags.pareto = "true"')
        shoot(browser, f"{base}/#/experiments/{experiment.experiment_id}/runs?searchFilter={front}",
              args.out / "mlflow-front-runs.png")
        shoot(browser, f"{base}/#/experiments/{experiment.experiment_id}/runs/{parent}/artifacts/pareto/pareto.png",
              args.out / "mlflow-study-run.png")
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
