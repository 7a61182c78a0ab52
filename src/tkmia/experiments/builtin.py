"""The built-in benchmark: what `tkmia run` with no arguments attacks, and with what.

Hyper-parameters were chosen once on the *validation* split of the built-in dataset with
``benchmarks/tune_builtin.py`` (see the README, "How the defaults were chosen"), never on
the test split that the benchmark reports.
"""

from __future__ import annotations

from tkmia.experiments.settings import MethodConfig

DEFAULT_GROUPS = {"digits": ["sevens", "red_low"]}
DEFAULT_K = [2, 3]
DEFAULT_N = [1, 2]
DEFAULT_SAMPLES = {"digits": 200}
FALLBACK_SAMPLES = 1000

#: per-method defaults (lr, lam, max_iter); kFool has only max_iter.
DEFAULT_HPARAMS: dict[str, dict[str, float | int | None]] = {
    "tkmia": {"lr": 0.01, "lam": 1e-3, "max_iter": 100},
    "tkmlapu": {"lr": 0.01, "lam": 1e-3, "max_iter": 100},
    "mlcwu": {"lr": 0.01, "lam": 1e-3, "max_iter": 100},
    "kfool": {"lr": None, "lam": None, "max_iter": 100},
}


def default_method(method: str) -> MethodConfig:
    """The method with its default hyper-parameters."""
    return MethodConfig(method=method, **DEFAULT_HPARAMS[method])
