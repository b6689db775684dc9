"""The repository itself: a merge left half done once shipped its conflict markers in the README."""
from __future__ import annotations

import re
import subprocess

from tests.cli import ROOT

MARKER = re.compile(r"^(<{7} |={7}$|>{7} )", re.MULTILINE)


def test_no_tracked_text_file_holds_a_merge_conflict_marker():
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    found = []
    for name in filter(None, files):
        path = ROOT / name.decode()
        data = path.read_bytes() if path.is_file() else b""
        if b"\0" not in data[:8192]:  # text only
            text = data.decode("utf-8", "replace")
            found += [f"{name.decode()}:{text.count(chr(10), 0, m.start()) + 1}" for m in MARKER.finditer(text)]
    assert not found, f"merge conflict markers at {', '.join(found)}"
