"""The repository's own files, for the tests that read the whole tree (documentation links, wording)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Never part of the project's sources: virtual environments, caches, run outputs, build products.
_SKIP_DIRS = {".git", ".venv", "venv", "__pycache__", ".pytest_cache", ".ruff_cache", "build", "dist", "runs",
              "node_modules", ".ipynb_checkpoints"}


def repo_files() -> list[Path]:
    """Every file git would commit (tracked, plus untracked files that are not ignored), relative to the root.

    Without git (e.g. an unpacked archive), every file under the root except the directories in _SKIP_DIRS and
    *.egg-info."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                             capture_output=True, check=True).stdout.decode("utf-8")
        names = [n for n in out.split("\0") if n]
        return sorted({Path(n) for n in names if (REPO / n).is_file()})
    except (OSError, subprocess.CalledProcessError):
        found = []
        for root, dirs, files in os.walk(REPO):
            dirs[:] = [d for d in dirs if d not in _SKIP_DIRS and not d.endswith(".egg-info")]
            found += [Path(root, f).relative_to(REPO) for f in files]
        return sorted(found)


def read_text(path: Path) -> str | None:
    """The file's text, or None for a binary file (not UTF-8, or NUL bytes)."""
    data = (REPO / path).read_bytes()
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None
