"""The README's generated results sections: each script rewrites its own section between
`<!-- results:NAME -->` and `<!-- /results:NAME -->`, and says which machine produced it."""
from __future__ import annotations

import os
import platform
import re
import sys
from pathlib import Path
from typing import Any, NamedTuple


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown CPU")
    return f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}"


def write_readme(section: str, readme: Path, mark: str) -> None:
    text = readme.read_text()
    pattern = re.compile(rf"(<!-- results:{mark} -->\n)(?:.*?\n)?(<!-- /results:{mark} -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"{readme}: no <!-- results:{mark} --> section to rewrite")
    readme.write_text(pattern.sub(lambda m: m.group(1) + section + "\n" + m.group(2), text))


class Evaluation(NamedTuple):
    """What a study's trials were evaluated with: a script evaluates networks beside them on these."""

    config: Any  # the StudyConfig
    data: Any
    space: Any
    supernet: Any

    def inputs(self, workers: Any) -> Any:
        """What `Inputs.submit` evaluates a candidate with, shared on `workers`."""
        from search.study import Inputs

        settings = self.config.space_settings(self.data.input_shape, self.data.num_classes)
        return Inputs(settings, workers.share(self.data), workers.share(self.supernet), self.config.finetune)


def evaluation(cfg: dict) -> Evaluation:
    """The study's data, space and cached supernet (trained by the study: a script never trains one), from its
    resolved config."""
    from search import data, supernet
    from search.study_config import StudyConfig

    config = StudyConfig.of(cfg)
    d = data.load(config.data, config.seed, config.cache_dir)
    trained, _ = supernet.load_or_train(config.supernet_key(None), config.cache_dir,
                                        lambda: sys.exit("the study's supernet is not cached"))
    return Evaluation(config, d, config.build_space(d.input_shape, d.num_classes), trained)
