"""`python -m search [key=value ...]`: compose the config with Hydra, check it, run the study."""
from __future__ import annotations

import sys
from typing import Any

from . import preflight
from .cli import command
from .config import CONFIG_NAME
from .data import Dataset


def _run(cfg: dict[str, Any], data: Dataset | None) -> None:
    """The study, on the data the check loaded; a multirun's job checks its own config and loads its own data."""
    from hydra.core.hydra_config import HydraConfig

    from .study import run

    if data is None:
        data = preflight.study(cfg)
    try:
        run(cfg, HydraConfig.get().overrides.task, data)
    except KeyboardInterrupt:  # the study has already said how to resume
        sys.exit(130)


def main() -> None:
    command(CONFIG_NAME, preflight.study, _run)


if __name__ == "__main__":
    main()
