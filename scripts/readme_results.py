"""The README's generated results sections: each script rewrites its own section between
`<!-- results:NAME -->` and `<!-- /results:NAME -->`, and says which machine produced it."""
from __future__ import annotations

import os
import platform
import re
from pathlib import Path


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
