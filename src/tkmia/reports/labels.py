"""What tables and figures call a method configuration, and the order they list them in."""

from __future__ import annotations

from tkmia.experiments.methods import HYPERPARAMETERS, REGISTRY
from tkmia.experiments.settings import MethodConfig

#: how a hyper-parameter is written in a label, where not its short name
SYMBOLS = {"lam": "λ"}


def config_label(config: MethodConfig, detailed: bool = False) -> str:
    """The method's title, with its hyper-parameters when ``detailed`` (for a grid, where a
    method appears with several configurations): ``TkMIA (lr=0.0001, λ=0.001, it=300)``,
    ``kFool (it=300)``."""
    if not detailed:
        return config.title
    params = ", ".join(
        f"{SYMBOLS.get(name, HYPERPARAMETERS[name].short)}={value}"
        for name, value in config.params.items()
        if HYPERPARAMETERS[name].implicit is None  # SPEC §7's options are in the title
    )
    return f"{config.title} ({params})"


def method_rank(config: MethodConfig) -> int:
    """The method's place in the registry (the paper's table order)."""
    return list(REGISTRY).index(config.method)
