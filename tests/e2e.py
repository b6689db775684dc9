"""The commands as a user runs them, for the end-to-end tests: a subprocess in a fresh folder with its
own HOME (so a test sees anything written there) and no inherited Ray settings."""
import os
import subprocess
import sys
from pathlib import Path

# digits with a 3-epoch supernet: every end-to-end test uses these, so the session trains it once
DIGITS = ["data=digits", "supernet.epochs=3", "finetune.bn_batches=2"]


def env(folder: Path) -> dict[str, str]:
    (folder / "home").mkdir(exist_ok=True)
    return {k: v for k, v in os.environ.items() if not k.startswith("RAY_")} | {"HOME": str(folder / "home")}


def command(folder: Path, module: str, *overrides: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *overrides], cwd=folder, env=env(folder),
                          capture_output=True, text=True, timeout=timeout)
