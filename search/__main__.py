"""`python -m search [key=value ...]`: compose the config with Hydra, check it, run the study."""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from .config import CONF_DIR, CONFIG_NAME, compose, resolve, validate
from .errors import UserError


def _fail(e: UserError) -> None:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


@hydra.main(config_path=str(CONF_DIR), config_name=CONFIG_NAME, version_base="1.3")
def _main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from .study import run

    try:
        run(resolve(cfg), HydraConfig.get().overrides.task)
    except UserError as e:
        _fail(e)


def main() -> None:
    overrides = sys.argv[1:]
    if not any(arg.startswith("-") for arg in overrides):
        # Check before Hydra creates the run folder, so a bad value leaves nothing behind.
        try:
            validate(resolve(compose(overrides)))
        except UserError as e:
            _fail(e)
    _main()


if __name__ == "__main__":
    main()
