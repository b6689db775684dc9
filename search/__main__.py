"""`python -m search [key=value ...]`: compose the config with Hydra, check it, run the study."""
from __future__ import annotations

import sys
from typing import Any

from . import preflight
from .cli import command
from .config import CONFIG_NAME


def _run(cfg: dict[str, Any], ready: preflight.Ready | None) -> None:
    """The study, on what the check read; a multirun's job checks its own config and reads its own data."""
    from hydra.core.hydra_config import HydraConfig

    from .study import run

    try:
        run(ready or preflight.study(cfg), HydraConfig.get().overrides.task)
    except KeyboardInterrupt:  # the study has already said how to resume
        sys.exit(130)


def main() -> None:
    command(CONFIG_NAME, preflight.study, _run)


if __name__ == "__main__":
    main()
