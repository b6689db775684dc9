"""`python -m search [key=value ...]`: compose the config with Hydra, check it, run the study."""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from . import preflight
from .config import CONF_DIR, CONFIG_NAME, command, fail, resolve
from .errors import UserError


@hydra.main(config_path=str(CONF_DIR), config_name=CONFIG_NAME, version_base="1.3")
def _main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from .study import run

    try:
        plain = resolve(cfg)
        if HydraConfig.get().mode == RunMode.MULTIRUN:  # `command` checked a single run before Hydra wrote anything
            preflight.study(plain)
        run(plain, HydraConfig.get().overrides.task)
    except UserError as e:
        fail(e)
    except KeyboardInterrupt:  # the study has already said how to resume
        sys.exit(130)


def main() -> None:
    command(CONFIG_NAME, preflight.study, _main)


if __name__ == "__main__":
    main()
