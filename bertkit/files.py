"""Writing outputs so that a crash, a full disk or Ctrl-C never leaves one that looks complete.

Everything is written under a temporary sibling name and renamed into place once whole: readers
see the old version or the new one, never half of either.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from safetensors import SafetensorError


def staging_path(path: Path, suffix: str = "tmp") -> Path:
    """The hidden sibling a file or folder is written under before it is renamed into place.

    It names the process, so two processes writing the same path at once (ranks fetching the
    same model into an empty cache) never remove each other's work in progress.
    """
    return path.with_name(f".{path.name}.{os.getpid()}.{suffix}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary sibling of ``path`` to write (a file, or a folder to fill); when the
    block ends without an error it replaces ``path``, otherwise it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_path(path)
    remove(staging)
    try:
        yield staging
        replace(staging, path)
    finally:
        remove(staging)


def failed_write(error: BaseException) -> bool:
    """Whether ``error`` is a write that failed for want of room. A full disk fails whichever
    file is being written: Python's own writes with ENOSPC (or EDQUOT), safetensors with an
    I/O SafetensorError, torch.save with "enforce fail at inline_container.cc" (PyTorch's zip
    writer, a RuntimeError that gives no reason)."""
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(error, SafetensorError):
        return "I/O error" in str(error)
    return isinstance(error, RuntimeError) and "inline_container" in str(error)


class DiskFull(OSError):
    """A write that failed for want of room, in one line: what was being written, the error
    that stopped it (``cause``), and what is kept."""

    def __init__(self, message: str, cause: BaseException | None = None):
        super().__init__(message)  # one argument: it pickles (from a worker process) as is
        self.cause = cause


@contextlib.contextmanager
def reporting_full_disk(what: str | os.PathLike, kept: str) -> Iterator[None]:
    """Turns a write that fails for want of room (`failed_write`) into one `DiskFull` naming
    ``what`` was being written and what is ``kept``; other errors pass unchanged. Nested, the
    outermost names the failure (the checkpoint, not a file in its staging folder)."""
    try:
        yield
    except (OSError, RuntimeError, SafetensorError) as error:
        if isinstance(error, DiskFull):
            error = error.cause or error
        elif not failed_write(error):
            raise
        raise DiskFull(f"could not write {what} ({error}); is the disk full? {kept}",
                       error) from None


def replace(source: str | os.PathLike, path: str | os.PathLike) -> None:
    """Rename the finished file or folder ``source`` to ``path``, replacing what is there."""
    source, path = Path(source), Path(path)
    if source.is_dir() and path.is_dir():  # a folder cannot be replaced by rename
        old = staging_path(path, "old")
        remove(old)
        os.replace(path, old)
        os.replace(source, path)
        remove(old)
    else:
        os.replace(source, path)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) atomically."""
    with reporting_full_disk(path, "Its earlier version, if any, is kept."), \
            atomic_path(path) as staging:
        staging.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, value) -> None:
    """Replace ``path`` with ``value`` as indented JSON, atomically."""
    write_text(path, json.dumps(value, indent=2) + "\n")


def remove(path: Path) -> None:
    """Delete a file or a folder tree, if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
