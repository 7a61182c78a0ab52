"""Writing whole files so that an interruption never leaves a torn one.

Every file tkmia writes in one go (``config.json``, summaries, tables, figures, example
images, checkpoints) is first written to a temporary file ``.<name>.<pid>.tmp`` in the
same folder, flushed to disk and then renamed over the target, which POSIX makes atomic:
a reader sees the old file or the new one, never a part. (Records are appended instead;
see :mod:`tkmia.experiments.records`.) A process killed between the write and the rename
leaves its temporary file behind; :func:`remove_stale_temporaries` removes those of
processes that no longer run, and ``tkmia run`` / ``tkmia train`` call it when they end.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "remove_stale_temporaries", "temporary_path", "write_text_atomic"]

_TEMPORARY = re.compile(r"^\..+\.(\d+)\.tmp$")


def temporary_path(path: Path) -> Path:
    """Where this process writes ``path`` before renaming it: ``.<name>.<pid>.tmp``."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Give a temporary path to write ``path``'s content to; on leaving the block it is
    flushed to disk and renamed to ``path``, or removed if the block raised.

    The parent folder is created if needed. Writers that infer a format from the file
    name's suffix (``savefig``) must be told the format explicitly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically."""
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8", newline="") as fh:
        fh.write(text)


def _running(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (signal 0 checks without sending)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # none, or no possible pid
        return False
    except PermissionError:  # exists, owned by another user
        pass
    return True


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove the temporary files under ``folder`` (recursively) left by processes that
    no longer run on this host; returns what was removed.

    Only names of the form :func:`temporary_path` writes are touched. Call it when no
    other process of the same run can still be writing (a distributed run: after the
    last barrier, on rank 0)."""
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for path in folder.rglob(".*.tmp"):
        match = _TEMPORARY.match(path.name)
        if match and path.is_file() and not _running(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
