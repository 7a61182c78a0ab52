"""tkmia: attacks and audits for top-k multi-label classifiers.

The measure-imperceptible attack TkMIA (ACM MM 2023), its baselines TkML-AP-U, kFool and
ML-CW-U, the top-k ranking measures and the paper's evaluation protocol.
"""

from tkmia.errors import InputError, MissingFileError

__version__ = "0.1.0"
__all__ = ["InputError", "MissingFileError", "__version__"]
