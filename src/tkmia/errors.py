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


class LowSuccessWarning(UserWarning):
    """An attack succeeded on fewer than half of its images (issue 35): its defaults may
    not suit the model; the message gives the figure and what to try."""


#: below this success rate a run warns (:class:`LowSuccessWarning`, and a line of
#: ``tkmia run``)
LOW_SUCCESS = 0.5


def low_success_advice(name: str, rate: float, images: int) -> str:
    """The warning text for an attack ``name`` that succeeded on a fraction ``rate`` of
    ``images`` images."""
    return (
        f"{name} succeeded on {rate:.0%} of {images} images (below {LOW_SUCCESS:.0%}): try a "
        "larger max_iter, or for the loss-based attacks a larger lr (e.g. 10x; in Python "
        "atk.min_step = 3e-5), or check "
        "the model with tkmia inspect (a wrong --normalize or --classes shows as a low "
        "test mAP); see docs/own-model.md"
    )
