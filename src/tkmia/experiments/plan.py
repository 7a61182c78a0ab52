"""What a setting attacks: the first eligible images, cut into fixed chunks."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from tkmia.experiments.scoring import CleanScores
from tkmia.experiments.settings import Setting
from tkmia.protocol import TARGETED, select_global, select_random, select_targets


def first_eligible(
    cache: CleanScores, setting: Setting, samples: int, seed: int
) -> tuple[list[int], torch.Tensor, int]:
    """The first ``samples`` eligible images of the split for ``setting``.

    Args:
        cache: the clean scores (scored further as needed).
        setting: the protocol setting that decides eligibility and the specified labels.
        samples: how many images to take.
        seed: S2's seed (each image's draw depends on it and on the image's index).

    Returns:
        ``(indices, specified (len(indices), c) bool, skipped)``: ``skipped`` counts the
        ineligible images met before the last selected one (all ineligible images of the
        split when fewer than ``samples`` are eligible); unreadable images skipped with
        ``skip_bad`` are among them.
    """
    chosen: list[int] = []
    specified_rows: list[torch.Tensor] = []
    start = 0
    step = max(4 * samples, 256)
    while len(chosen) < samples and start < len(cache):
        cache.upto(start + step)
        stop = cache.n_scored
        labels, scores = cache.labels[start:stop], cache.scores[start:stop]
        if setting.scheme == "global":
            assert setting.group_indices is not None  # Setting's invariant for S1
            spec, ok = select_global(labels, scores, setting.group_indices, setting.k)
        elif setting.scheme == TARGETED:
            assert setting.n is not None and setting.group is not None
            spec, ok = select_targets(
                labels, scores, setting.n, setting.k, setting.group, seed, range(start, stop)
            )
        else:
            assert setting.n is not None  # Setting's invariant for S2
            spec, ok = select_random(labels, scores, setting.n, setting.k, seed, range(start, stop))
        ok = ok & ~cache.bad[start:stop]
        for row in torch.nonzero(ok).flatten().tolist():
            if len(chosen) == samples:
                break
            chosen.append(start + row)
            specified_rows.append(spec[row])
        start = stop
    last = chosen[-1] + 1 if len(chosen) == samples else cache.n_scored
    skipped = last - len(chosen)
    c = cache.scores.shape[1]
    specified = (
        torch.stack(specified_rows) if specified_rows else torch.zeros(0, c, dtype=torch.bool)
    )
    return chosen, specified, skipped


def chunks(n: int, chunk_size: int) -> list[range]:
    """The fixed chunks of a selected list of ``n`` images: positions ``[s, s + m)``."""
    return [range(s, min(s + chunk_size, n)) for s in range(0, n, chunk_size)]


@dataclass
class SettingPlan:
    """What a setting attacks (the same on every rank).

    Attributes:
        setting: the protocol setting.
        indices: the selected images' dataset indices, in order.
        specified: ``(len(indices), c)`` bool, each image's specified labels (for the
            targeted scheme its targets).
        skipped: ineligible images met before the last selected one.
        bad: indices of the unreadable images met while selecting.
    """

    setting: Setting
    indices: list[int]
    specified: torch.Tensor
    skipped: int
    bad: list[int]

    def setting_json(self) -> dict[str, Any]:
        """What ``records/<setting>/setting.json`` holds."""
        bad = {"bad_image_indices": self.bad} if self.bad else {}
        return (
            asdict(self.setting)
            | {"skipped": self.skipped, "bad_images": len(self.bad)}
            | bad
            | {"indices": self.indices}
        )


def plan_setting(cache: CleanScores, setting: Setting, samples: int, seed: int) -> SettingPlan:
    """Select ``samples`` images for ``setting`` (see :func:`first_eligible`) and note the
    unreadable images met on the way."""
    indices, specified, skipped = first_eligible(cache, setting, samples, seed)
    scanned = indices[-1] + 1 if len(indices) == samples else cache.n_scored
    bad = torch.nonzero(cache.bad[:scanned]).flatten().tolist()
    return SettingPlan(setting, indices, specified, skipped, bad)
