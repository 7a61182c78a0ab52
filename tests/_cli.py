"""Helpers of the command-line and results-folder tests: the one-error-line check and a
process that holds a folder's lock."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, str(os.getpid()).encode())
print("held", flush=True)
time.sleep(60)
"""


def one_error(capsys, *expected: str) -> str:
    """stderr so far is one ``tkmia: error:`` line, no traceback, with each ``expected``."""
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tkmia: error: "), err
    assert "Traceback" not in err
    for text in expected:
        assert text in err, (text, err)
    return err


@contextmanager
def lock_held_by_another_process(lock: Path) -> Iterator[int]:
    """A separate process holds ``fcntl.flock`` on ``lock`` (its pid written there) for the
    block; yields its pid. It is killed on leaving, which releases the lock."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(lock)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
