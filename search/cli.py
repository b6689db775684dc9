"""The three commands' shared front: check plain `key=value` overrides before Hydra creates a run folder (so a bad
value leaves nothing behind), then run the command as Hydra's app (which also serves --help, -m, ...), handing it
what the check prepared. A user error ends a command with one line and exit code 2."""
from __future__ import annotations

import sys
from typing import Any, Callable, TypeVar

from .config import CONF_DIR, compose, resolve
from .errors import UserError

Checked = TypeVar("Checked")


def fail(e: UserError) -> None:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def command(config_name: str, check: Callable[[dict[str, Any]], Checked],
            task: Callable[[dict[str, Any], Checked | None], None]) -> None:
    """Check the command line's config, then `task(config, what check returned)` in Hydra. The task gets None
    where no check saw its config (Hydra flags, a multirun's jobs) and checks it itself."""
    checked = None
    if not any(arg.startswith("-") for arg in sys.argv[1:]):
        try:
            checked = check(resolve(compose(sys.argv[1:], config_name)))
        except UserError as e:
            fail(e)
    hydra_app(config_name, lambda cfg: task(cfg, checked))


def hydra_app(config_name: str, task: Callable[[dict[str, Any]], None]) -> None:
    """`task` on each config Hydra composes (its run folder, log file and overrides set up), as plain data."""
    import hydra
    from omegaconf import DictConfig

    @hydra.main(config_path=str(CONF_DIR), config_name=config_name, version_base="1.3")
    def app(cfg: DictConfig) -> None:
        try:
            task(resolve(cfg))
        except UserError as e:
            fail(e)

    app()
