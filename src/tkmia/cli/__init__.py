"""The `tkmia` command line: `tkmia run`, `tkmia train`, `tkmia report`, `tkmia inspect`,
`tkmia universal`, `tkmia audit`, `tkmia evaluate`, `tkmia certify`.

One module per command (:mod:`tkmia.cli.run`, :mod:`tkmia.cli.train`,
:mod:`tkmia.cli.report`, :mod:`tkmia.cli.inspect`, :mod:`tkmia.cli.universal`,
:mod:`tkmia.cli.audit`, :mod:`tkmia.cli.evaluate`, :mod:`tkmia.cli.certify`), each with
``add_parser(sub)`` and ``command(args) -> int``.
User mistakes become one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any, NoReturn

from tkmia.errors import InputError

__all__ = ["EXIT_USAGE", "build_parser", "main"]

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
#: the subcommands, in the order of `tkmia --help`
COMMANDS = ("run", "train", "report", "inspect", "universal", "audit", "evaluate", "certify")


#: the exit code when the system refuses (a full disk, no permission, out of memory)
EXIT_SYSTEM = 1
_OUT_OF_MEMORY = (
    ": an image size, batch size or sample count too large for this machine? Lower it "
    "(--image-size, --batch-size) and rerun; finished work is kept"
)
_FIXES = {
    errno.ENOSPC: "free some disk space, then rerun the same command (finished work is kept)",
    errno.EDQUOT: "free some disk space, then rerun the same command (finished work is kept)",
    errno.EACCES: "make it writable for you, or pass another --out (or folder)",
    errno.EPERM: "make it writable for you, or pass another --out (or folder)",
    errno.EROFS: "the file system is read-only: pass another --out (or folder)",
}


def system_error(err: OSError) -> str:
    """One line on an error of the operating system: what failed, where, and the fix."""
    where = f" on {str(err.filename)!r}" if err.filename is not None else ""
    what = err.strerror or type(err).__name__
    fix = _FIXES.get(err.errno or 0, "check the file and its folder, then rerun")
    return f"the system refused a file operation{where}: {what}; {fix}"


def _error_line(message: str) -> None:
    """``tkmia: error: ...`` on stderr, always exactly one line."""
    text = " ".join(line.strip() for line in message.splitlines() if line.strip())
    print(f"tkmia: error: {text}", file=sys.stderr)


class _Parser(argparse.ArgumentParser):
    """One-line errors; no abbreviated flags (``--method`` is not ``--methods``); a
    misspelled flag gets the closest ones its command has."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:  # one line, exit 2, like every other mistake
        raise InputError(f"{self.prog}: {message}{_did_you_mean(self, message)}")


def _flags(parser: argparse.ArgumentParser, command: str | None) -> list[str]:
    """The flags of ``parser`` and, if given, of its subcommand ``command``."""
    flags = list(parser._option_string_actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            flags += list(action.choices[command]._option_string_actions)
    return flags


def _did_you_mean(parser: argparse.ArgumentParser, message: str) -> str:
    """``"; did you mean --methods?"`` for each unrecognised flag that is close to one."""
    import difflib

    if not message.startswith("unrecognized arguments:"):
        return ""
    words = message.split(":", 1)[1].split()
    command = _COMMAND_SEEN[0] if _COMMAND_SEEN else None
    hints = []
    for word in words:
        flag = word.split("=", 1)[0]
        if flag.startswith("--"):
            close = difflib.get_close_matches(flag, _flags(parser, command), n=2, cutoff=0.6)
            if close:
                hints.append(f"{flag}: did you mean {' or '.join(close)}?")
    return ("; " + "; ".join(hints)) if hints else ""


#: the subcommand of the command line being parsed (for the flags' suggestions)
_COMMAND_SEEN: list[str] = []


def _module(command: str) -> ModuleType:
    return importlib.import_module(f"tkmia.cli.{command}")


def build_parser() -> argparse.ArgumentParser:
    """The `tkmia` parser with its subcommands; parse errors raise :class:`InputError`."""
    parser = _Parser(prog="tkmia", description=" ".join(__doc__.split("\n\n")[0].split()))
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for command in COMMANDS:
        _module(command).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `tkmia` command.

    Args:
        argv: the arguments after ``tkmia`` (default: ``sys.argv[1:]``).

    Returns:
        The exit code: the command's, 2 for a user mistake (one ``tkmia: error: ...`` line
        on stderr), 1 when the system refuses (a full disk, a read-only folder, out of
        memory; one such line too), 130 when interrupted.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    _COMMAND_SEEN[:] = [w for w in argv if w in COMMANDS][:1]
    try:
        args = build_parser().parse_args(argv)
        if args.command in ("run", "train", "universal", "evaluate"):
            from tkmia.runtime import retain_freed_memory

            retain_freed_memory()  # no page faults on every iteration's tensors
        return _module(args.command).command(args)
    except InputError as err:
        _error_line(str(err))
        return EXIT_USAGE
    except OSError as err:  # the system refused: a full disk, a read-only folder, ...
        _error_line(system_error(err))
        return EXIT_SYSTEM
    except MemoryError:
        _error_line(f"out of memory{_OUT_OF_MEMORY}")
        return EXIT_SYSTEM
    except RuntimeError as err:
        if type(err).__name__ != "OutOfMemoryError" and "can't allocate memory" not in str(err):
            raise
        _error_line(f"out of memory ({str(err).splitlines()[0][:120]}){_OUT_OF_MEMORY}")
        return EXIT_SYSTEM
    except KeyboardInterrupt:
        print(
            "tkmia: interrupted; finished work is saved, rerun the same command to resume",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
