"""Exceptions for user mistakes.

Everything a user can get wrong (a shape, a range, a path, a name) raises
:class:`InputError`, a :class:`ValueError`, with a message that says what was wrong and
what was expected. The command line turns these into one line on stderr and exit code 2.
"""

from __future__ import annotations


class InputError(ValueError):
    """A value given by the user is not valid; the message says what was expected."""


class MissingFileError(InputError, FileNotFoundError):
    """A file or folder the user pointed at (or that a layout requires) does not exist."""


class BadImageError(InputError):
    """An image file listed by a dataset is missing, unreadable or not a valid image."""
