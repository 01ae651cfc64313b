"""Small helpers shared by every layer of the code base: EasyDict, UserError, atomic writes, seed parsing, logging."""
from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable


class EasyDict(dict):
    """A dict whose keys can also be read and written as attributes."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as exc:
            raise AttributeError(name) from exc

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        del self[name]


class UserError(Exception):
    """An error caused by user input. The CLIs print its message (no traceback) and exit with status 1."""


def atomic_write(path: str | os.PathLike, write_fn: Callable[[str], None]) -> None:
    """Call `write_fn(tmp_path)` and move the result into place with os.replace (never a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write_fn(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    def _write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
    atomic_write(path, _write)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def parse_int_list(spec: str) -> list[int]:
    """Parse seeds given as '0-7', '1,5,9' or a mix ('0-3,10'). Raises UserError on bad input."""
    if spec is None or str(spec).strip() == "":
        raise UserError("Empty seed list: give seeds like '0-7' or '1,5,9'.")
    out: list[int] = []
    for part in str(spec).split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if hi < lo:
                raise UserError(f"Bad range '{part}': the end ({hi}) is smaller than the start ({lo}).")
            out.extend(range(lo, hi + 1))
        elif re.fullmatch(r"\d+", part):
            out.append(int(part))
        else:
            raise UserError(f"Bad seed '{part}' in '{spec}': use non-negative integers like '0-7' or '1,5,9'.")
    return out


class Logger:
    """Duplicate everything written to stdout/stderr into a log file (append mode, line buffered)."""

    def __init__(self, file_name: str | None = None, file_mode: str = "a") -> None:
        self.file = open(file_name, file_mode, buffering=1, encoding="utf-8") if file_name else None
        self.stdout, self.stderr = sys.stdout, sys.stderr
        sys.stdout = self
        sys.stderr = self

    def write(self, text: str) -> None:
        if not text:
            return
        if self.file is not None:
            self.file.write(text)
        self.stdout.write(text)

    def flush(self) -> None:
        if self.file is not None:
            self.file.flush()
        self.stdout.flush()

    def close(self) -> None:
        self.flush()
        if sys.stdout is self:
            sys.stdout = self.stdout
        if sys.stderr is self:
            sys.stderr = self.stderr
        if self.file is not None:
            self.file.close()
            self.file = None


def format_table(rows: Iterable[Iterable[Any]], header: Iterable[str]) -> str:
    """Plain-text table with aligned columns."""
    rows = [[str(c) for c in r] for r in rows]
    header = [str(h) for h in header]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def cache_dir() -> Path:
    """Cache folder for generated datasets and metric statistics ($HNG_CACHE_DIR, default ~/.cache/hypernerfgan)."""
    root = os.environ.get("HNG_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "hypernerfgan")
    return Path(root)


def run_cli(main: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a click entry point so UserError prints a clear message and exits with status 1 (no traceback)."""
    import click

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            rv = main(*args, standalone_mode=False, **kwargs)
            sys.exit(rv if isinstance(rv, int) else 0)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except UserError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(1)
        except click.exceptions.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(1)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
    return wrapper
