"""The scale of ``success="stealth"`` in a run (SPEC §7.6): per setting, the interquartile
range of each label-free statistic over the clean scores of the setting's selected
(eligible) images, computed once and handed to every stealth attack of the setting, and
written to ``records/<setting>/stealth.json`` (so the records can be checked against it).

Only the clean images enter: the IQR comes from :class:`CleanScores`, which scores the
unattacked split, never from an attack's output.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from tkmia.attacks.stealth import STEALTH_RHO, rule_parts
from tkmia.experiments.plan import SettingPlan
from tkmia.experiments.scoring import CleanScores
from tkmia.experiments.settings import MethodConfig
from tkmia.files import write_text_atomic
from tkmia.score_stats import LABEL_FREE_NAMES, label_free_iqr

__all__ = ["STEALTH_FILE", "read_reference", "setting_references"]

#: the file of a setting's folder that holds its stealth scale
STEALTH_FILE = "stealth.json"


def _stealthy(method: MethodConfig) -> bool:
    return rule_parts(str(method.params.get("success_rule", "paper")))[1]


def setting_references(
    cache: CleanScores,
    plans: Sequence[SettingPlan],
    methods: Sequence[MethodConfig],
    out: Path | None,
) -> dict[str, torch.Tensor]:
    """``{setting key: (4,) IQR}`` for every setting with images that a stealth method
    attacks; written to ``out/records/<setting>/stealth.json`` when ``out`` is given."""
    refs: dict[str, torch.Tensor] = {}
    for plan in plans:
        if not plan.indices or not any(_stealthy(m) and m.runs_on(plan.setting) for m in methods):
            continue
        clean = cache.scores[torch.tensor(plan.indices)]
        refs[plan.setting.key] = label_free_iqr(clean, plan.setting.k)
        if out is not None:
            data = {
                "iqr": dict(zip(LABEL_FREE_NAMES, refs[plan.setting.key].tolist(), strict=True)),
                "rho": STEALTH_RHO,
                "images": len(plan.indices),
            }
            path = out / "records" / plan.setting.key / STEALTH_FILE
            write_text_atomic(path, json.dumps(data, indent=2) + "\n")
    return refs


def read_reference(setting_dir: Path) -> tuple[torch.Tensor, float] | None:
    """``(iqr (4,), rho)`` of a setting's folder, or ``None`` when it has none."""
    path = setting_dir / STEALTH_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    iqr = torch.tensor([data["iqr"][name] for name in LABEL_FREE_NAMES], dtype=torch.float64)
    return iqr, float(data["rho"])
