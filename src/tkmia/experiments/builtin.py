"""The built-in benchmark: what `tkmia run` with no arguments attacks, and with what.

Each method's default hyper-parameters live in the method registry
(:mod:`tkmia.experiments.methods`), chosen once on the *validation* split of the built-in
dataset with the grid command in docs/benchmark.md ("How the defaults were chosen"), never on the
test split that the benchmark reports.
"""

from __future__ import annotations

from tkmia.experiments.methods import method_spec
from tkmia.experiments.settings import MethodConfig

DEFAULT_GROUPS = {"digits": ["sevens", "red_low"]}
DEFAULT_K = [2, 3]
DEFAULT_N = [1, 2]
DEFAULT_SAMPLES = {"digits": 200}
FALLBACK_SAMPLES = 1000
#: images optimised at once: for the built-in dataset a working set that holds a whole
#: setting (200 images), since on a CPU its model runs as fast at 256 as at 64 (docs/experiments.md,
#: "Batching"); elsewhere 64 keeps a ResNet at 448 px within
#: a GPU's memory.
DEFAULT_BATCH_SIZE = {"digits": 256}
FALLBACK_BATCH_SIZE = 64


#: SPEC §7 variants the default run adds next to the paper's rule, per method: TkMIA with
#: the measure-preserving rule and with 8-bit-proof images (docs/beyond-the-paper.md)
DEFAULT_VARIANTS: dict[str, list[dict[str, str | int]]] = {
    "tkmia": [{"success_rule": "preserve"}, {"quantize": 8}],
}


#: images per setting the default variants attack (the first of the selection the paper's
#: rows attack), so that `make run` stays within 5 minutes (docs/beyond-the-paper.md)
VARIANT_SAMPLES = {"digits": 50}


def with_default_variants(configs: list[MethodConfig]) -> list[MethodConfig]:
    """``configs`` with :data:`DEFAULT_VARIANTS` of each configuration inserted after it
    (what `tkmia run` attacks when neither ``--methods`` nor a SPEC §7 option is given)."""
    out = []
    for config in configs:
        out.append(config)
        for change in DEFAULT_VARIANTS.get(config.method, []):
            out.append(MethodConfig(config.method, **(config.params | change)))
    return out


def default_method(method: str) -> MethodConfig:
    """The method with its default hyper-parameters.

    Args:
        method: a registry name.

    Returns:
        Its configuration with the registry's defaults.

    Raises:
        InputError: ``method`` is not in the registry.
    """
    return MethodConfig(method, **method_spec(method).defaults)
