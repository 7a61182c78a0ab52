"""Writing whole files so that an interruption never leaves a torn one, only inside the
folders tkmia owns, one writer per folder.

Every file tkmia writes in one go (``config.json``, summaries, tables, figures, example
images, checkpoints) is first written to a temporary file ``.<name>.tkmia-<pid>.tmp`` in
the same folder, flushed to disk and then renamed over the target, which POSIX makes
atomic: a reader sees the old file or the new one, never a part. (Records are appended
instead; see :mod:`tkmia.experiments.records`.) A process killed between the write and the
rename leaves its temporary file behind; :func:`remove_stale_temporaries` removes those of
processes that no longer run (only names of that pattern, only in the folders tkmia
writes), and ``tkmia run`` / ``tkmia train`` / ``tkmia universal`` call it when they end.

A results folder has one writer at a time: :func:`folder_lock` holds an exclusive
``fcntl.flock`` on ``<folder>/.tkmia.lock`` (released by the kernel when the process ends,
so the lock of a killed process is simply taken over). While a folder is locked, every
file written under it by :func:`atomic_path` is checked with :func:`check_inside`: never
through a symbolic link, so nothing outside the folder is ever written.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tkmia.errors import InputError

__all__ = [
    "LOCK_NAME",
    "atomic_path",
    "check_inside",
    "folder_lock",
    "remove_stale_temporaries",
    "temporary_path",
    "write_text_atomic",
]

#: tkmia's own temporary names: ``.<name>.tkmia-<pid>.tmp`` (never another program's)
_TEMPORARY = re.compile(r"^\.(.+)\.tkmia-(\d+)\.tmp$")
#: the lock file of a folder held by :func:`folder_lock`
LOCK_NAME = ".tkmia.lock"
#: the sub-folders (glob patterns) of a results or checkpoint folder that tkmia writes
OWNED_FOLDERS = ("records/*", "examples/*", "deltas/*", "figures")
#: folders this process holds a :func:`folder_lock` on (absolute paths) → nesting depth
_HELD: dict[str, int] = {}


def temporary_path(path: Path) -> Path:
    """Where this process writes ``path`` before renaming it: ``.<name>.tkmia-<pid>.tmp``."""
    return path.with_name(f".{path.name}.tkmia-{os.getpid()}.tmp")


def check_inside(root: Path, path: Path) -> Path:
    """``path``, after checking that it lies under ``root`` and that no folder or file on
    the way from ``root`` down to it is a symbolic link (``root`` itself may be one).

    Raises:
        InputError: ``path`` is not under ``root``, has a ``..`` part, or a link on the way
            (the message names the link and the fix).
    """
    if ".." in Path(path).parts:  # before abspath, which would drop it lexically
        raise InputError(f"{str(path)!r}: a path with '..' in a results folder is refused")
    try:
        relative = Path(os.path.abspath(path)).relative_to(os.path.abspath(root))
    except ValueError:
        raise InputError(
            f"{str(path)!r} lies outside the results folder {str(root)!r}; tkmia writes only "
            "inside it"
        ) from None
    current = root
    for part in relative.parts:
        current = current / part
        if current.is_symlink():
            raise InputError(
                f"{str(current)!r} is a symbolic link; tkmia writes only inside the results "
                f"folder {str(root)!r} and never through a link (it could lead outside): "
                "remove the link, or pass another --out"
            )
    return path


def _check_held(path: Path) -> None:
    """:func:`check_inside` for ``path`` if it lies in a folder this process has locked."""
    absolute = os.path.abspath(path)
    for root in _HELD:
        if absolute.startswith(root.rstrip(os.sep) + os.sep):
            check_inside(Path(root), Path(absolute))


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Give a temporary path to write ``path``'s content to; on leaving the block it is
    flushed to disk and renamed to ``path``, or removed if the block raised.

    The parent folder is created if needed. Writers that infer a format from the file
    name's suffix (``savefig``) must be told the format explicitly.

    Raises:
        InputError: ``path`` lies in a folder locked by :func:`folder_lock` and there is a
            symbolic link on the way to it.
    """
    _check_held(path)
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


def _owned_folders(folder: Path) -> Iterator[Path]:
    """``folder`` and its :data:`OWNED_FOLDERS` (no symbolic link among them)."""
    yield folder
    for pattern in OWNED_FOLDERS:
        for sub in sorted(folder.glob(pattern)):
            if sub.is_dir() and not sub.is_symlink() and not sub.parent.is_symlink():
                yield sub


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove the temporary files left in ``folder`` and the sub-folders tkmia writes
    (:data:`OWNED_FOLDERS`) by processes that no longer run on this host; returns what was
    removed.

    Only regular files named as :func:`temporary_path` names them are touched: another
    program's file, even one that looks alike (``.notes.123.tmp``), or a file in a folder
    tkmia does not write is never removed. Call it when no other process of the same run
    can still be writing (a distributed run: after the last barrier, on rank 0).
    """
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for sub in _owned_folders(folder):
        for path in sub.iterdir():
            match = _TEMPORARY.match(path.name)
            if match is None or path.is_symlink() or not path.is_file():
                continue
            if not _running(int(match.group(2))):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def _holder(fd: int) -> str:
    """The process id written in a lock file (``unknown`` if none can be read)."""
    text = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
    return text if text.isdigit() else "unknown"


@contextmanager
def folder_lock(folder: Path, command: str = "tkmia") -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (created if needed) for the block: a second
    process that asks for it gets an :class:`InputError` at once. Re-entrant within one
    process. The lock file ``<folder>/.tkmia.lock`` holds the holder's process id; the
    kernel releases the lock when that process ends, so a stale lock is taken over.

    Args:
        folder: the results (or checkpoint) folder.
        command: what the holder runs, for the message (``tkmia run``).

    Raises:
        InputError: another process holds the lock (``OUT is in use by process N``), or
            the lock file is a symbolic link.
    """
    key = os.path.abspath(folder)
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    folder.mkdir(parents=True, exist_ok=True)
    path = check_inside(folder, folder / LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise InputError(
                f"{str(folder)!r} is in use by process {_holder(fd)} (another tkmia command "
                f"writes there); wait until it ends, or pass another folder to {command}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        _HELD[key] = 1
        try:
            yield
        finally:
            del _HELD[key]
    finally:
        os.close(fd)  # releases the lock
