"""Small helpers shared by every layer of the code base: EasyDict, UserError, atomic writes, seed parsing, logging."""
from __future__ import annotations

import errno
import os
import re
import secrets
import sys
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


class WriteError(UserError, OSError):
    """Writing a file failed (disk full, file size limit, permissions). Nothing was left under the final name."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def make_temp_beside(path: str | os.PathLike, suffix: str = ".tmp") -> str:
    """Create a new empty hidden file next to `path` and return its name.

    Unlike tempfile.mkstemp (always mode 0600), the file is created with mode 0666 minus the umask, the mode any
    other new file of the process gets, so that the file keeps it once renamed into place.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{suffix}"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return str(tmp)
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file next to '{path}'")


def _fsync_path(path: str | os.PathLike, directory: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except OSError:
        if directory:
            return  # some platforms and file systems cannot open a directory: best effort
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write_fn: Callable[[str], None]) -> None:
    """Call `write_fn(tmp_path)`, flush it to disk and move it into place with os.replace.

    The final name holds either the previous file or the complete new one, also if the process is killed or the disk
    fills up meanwhile; the new file gets the umask's mode. A failed write raises WriteError (a UserError and an
    OSError) after removing the temporary file.
    """
    path = Path(path)
    tmp = None
    try:
        tmp = make_temp_beside(path)
        write_fn(tmp)
        _fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, WriteError):
            reason = exc.strerror or str(exc)
            if exc.errno in (errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)):
                reason += " (the disk or a file size limit is full)"
            raise WriteError(exc.errno, f"Could not write '{path}': {reason}. Nothing was written under that name; "
                                        f"earlier files are intact.") from exc
        raise
    _fsync_path(path.parent, directory=True)


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
