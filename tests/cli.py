"""The commands as a user runs them, from this checkout."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def environment(home: Path) -> dict[str, str]:
    """This process's environment without Ray's variables, with a home folder of its own, and this
    checkout first on the import path: a test runs the code next to it, whatever is installed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return env | {"HOME": str(home), "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))}


def env(folder: Path) -> dict[str, str]:
    """`environment` with the home folder `folder/home` (created), where a test can see what was written."""
    (folder / "home").mkdir(exist_ok=True)
    return environment(folder / "home")


# digits with a 3-epoch supernet: every end-to-end study uses these, so the session trains it once
# (in the `shared_cache` fixture's folder)
DIGITS = ["data=digits", "supernet.epochs=3", "finetune.bn_batches=2"]


def command(folder: Path, module: str, *overrides: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    """`python -m module overrides...` in `folder`, as a user runs it."""
    return subprocess.run([sys.executable, "-m", module, *overrides], cwd=folder, env=env(folder),
                          capture_output=True, text=True, timeout=timeout)


def quick(script: str, mark: str, tmp_path: Path, shared_cache: Path) -> tuple[Path, Path]:
    """`scripts/<script> --quick` on the shared cache, writing its README section into a copy of the README (never
    the real one); returns its folder and that copy."""
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n<!-- results:{mark} -->\nold\n<!-- /results:{mark} -->\nafter\n")
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "cache").symlink_to(shared_cache)
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / script), "--quick", "--folder", str(folder),
                           "--readme", str(readme)], cwd=tmp_path, env=env(tmp_path), capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    text = readme.read_text()
    assert text.startswith("before\n") and text.endswith("after\n") and "\nold\n" not in text
    return folder, readme
