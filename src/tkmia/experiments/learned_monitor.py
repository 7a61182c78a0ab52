"""The defender's reply to ``success="stealth"`` (SPEC §7.6): a *learned* label-free monitor.

The fixed label-free statistics of :mod:`tkmia.experiments.audit` are four hand-picked
functions of the scores. The learned monitor reads the largest ``d = min(c, 2k + 2)``
sigmoid scores of an image in decreasing order (the records' ``sorted_sigmoid_clean`` and
``sorted_sigmoid_adv``) and fits a logistic regression (scikit-learn, features standardised
on the fitting half) that tells adversarial images from clean ones. For one (setting,
method configuration) with ``n`` attacked images:

- **Split by image, seeded.** ``numpy.random.default_rng([seed, n, 2]).permutation(n)``:
  the first ``n // 2`` images are the fitting half (their clean *and* adversarial vectors,
  labelled 0 and 1), the other ``n − n // 2`` the scoring half. No image is on both sides,
  so the monitor never scores an image whose clean or adversarial version it was fitted on.
- **Its statistic** is the regression's decision function (the log-odds of "adversarial").
  On the scoring half it is treated exactly as a fixed label-free statistic: per-image
  AUROC (``max(AUC, 1 − AUC)``) and the two-sided batch-mean monitor's power and ``p80``,
  bootstrapped from the scoring half's images (:func:`~tkmia.experiments.audit.power_by_batch`
  with ``n`` the scoring half's size).

Records written before the sorted scores existed lack them: their groups are skipped, with a
note saying so (the fixed monitors are audited as before).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from tkmia.experiments.audit import (
    DRAWS,
    P_GRID,
    THRESHOLD_DRAWS,
    AuditGroup,
    AuditRow,
    Statistic,
    auroc,
    power_by_batch,
)
from tkmia.experiments.records import SORTED_SCORES

__all__ = ["LEARNED", "LEARNED_MONITOR", "LearnedFit", "fit_learned", "learned_audit"]

#: the monitor column of the learned monitor's rows in ``audit.csv``
LEARNED_MONITOR = "learned"
#: the learned monitor as a statistic of the audit's rows
LEARNED = Statistic("logistic", "learned", LEARNED_MONITOR)
#: the fewest images a group needs: two in each half
MIN_IMAGES = 4


@dataclass(frozen=True)
class LearnedFit:
    """The learned monitor of one group.

    Attributes:
        clean, adv: ``(m,)`` its decision function on the scoring half's clean and
            adversarial images (``m = n − n // 2``).
        coef: ``(d,)`` the coefficients of the standardised features: feature ``j`` is the
            ``(j + 1)``-th largest sigmoid score; positive pushes towards "adversarial".
        intercept: the regression's intercept.
        fit_images: ``n // 2``, the images of the fitting half.
    """

    clean: np.ndarray
    adv: np.ndarray
    coef: np.ndarray
    intercept: float
    fit_images: int

    @property
    def auroc(self) -> float:
        """Per-image ``max(AUC, 1 − AUC)`` on the scoring half."""
        return float(auroc(self.clean[None], self.adv[None])[0])


def fit_learned(clean: np.ndarray, adv: np.ndarray, seed: int = 0) -> LearnedFit:
    """Fit the learned monitor on half of the images and score the other half.

    Args:
        clean, adv: ``(n, d)`` the sorted sigmoid scores of ``n`` images, clean and
            adversarial (row ``i`` of both is image ``i``), ``n >= 4``.
        seed: the split's seed (with ``n``).

    Returns:
        The fit and its scores on the held-out half.

    Raises:
        ValueError: fewer than :data:`MIN_IMAGES` images or mismatched shapes.
    """
    if clean.shape != adv.shape or clean.ndim != 2 or clean.shape[0] < MIN_IMAGES:
        raise ValueError(f"need (n, d) clean and adversarial features, n >= {MIN_IMAGES}")
    n = clean.shape[0]
    order = np.random.default_rng([seed, n, 2]).permutation(n)
    fit, score = order[: n // 2], order[n // 2 :]
    x = np.concatenate([clean[fit], adv[fit]])
    y = np.concatenate([np.zeros(fit.size), np.ones(fit.size)])
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    if np.ptp(x, axis=0).max() == 0:  # nothing to learn: every vector is the same
        zero = np.zeros(score.size)
        return LearnedFit(zero, zero.copy(), np.zeros(clean.shape[1]), 0.0, fit.size)
    model.fit(x, y)
    reg = model[-1]
    return LearnedFit(
        model.decision_function(clean[score]),
        model.decision_function(adv[score]),
        reg.coef_[0].copy(),
        float(reg.intercept_[0]),
        fit.size,
    )


@dataclass(frozen=True)
class LearnedAudit:
    """The learned monitor's rows (one per group and batch size), each group's fit
    (``fits[(setting key, configuration key)]``) and a note per skipped group."""

    rows: list[AuditRow]
    fits: dict[tuple[str, str], LearnedFit]
    notes: list[str]


def learned_audit(
    groups: Sequence[AuditGroup],
    batch_sizes: Sequence[int],
    seed: int = 0,
    draws: int = DRAWS,
    threshold_draws: int = THRESHOLD_DRAWS,
) -> LearnedAudit:
    """The learned monitor of every group that has the sorted scores.

    Returns:
        Its rows (statistic :data:`LEARNED`, ``images`` the scoring half's size), fits and
        notes (groups skipped: records without the sorted scores, or too few images).
    """
    rows: list[AuditRow] = []
    fits: dict[tuple[str, str], LearnedFit] = {}
    notes: list[str] = []
    grid = {b: np.floor(P_GRID * b + 0.5).astype(int) for b in batch_sizes}
    for group in groups:
        where = f"{group.setting.key}/{group.config.key}"
        if group.features is None:
            notes.append(
                f"learned monitor skipped for {where}: its records lack {list(SORTED_SCORES)} "
                "(written by a tkmia before them; rerun the same `tkmia run` with a new --out)"
            )
            continue
        if group.features[0].shape[0] < MIN_IMAGES:
            notes.append(f"learned monitor skipped for {where}: fewer than {MIN_IMAGES} images")
            continue
        fit = fit_learned(*group.features, seed=seed)
        fits[group.setting.key, group.config.key] = fit
        # the batch sizes the fixed monitors keep too (experiments.audit.skipped_batches)
        sizes = [b for b in batch_sizes if b <= group.clean.shape[1]]
        if not sizes:
            continue
        power = power_by_batch(
            fit.clean[None], fit.adv[None, None], np.array([True]),
            {b: grid[b] for b in sizes}, seed, draws, threshold_draws,
        )  # fmt: skip
        area = fit.auroc
        for batch in sizes:
            rows.append(
                AuditRow(
                    group.setting,
                    group.config,
                    LEARNED,
                    batch,
                    fit.clean.size,
                    power[batch][0, 0],
                    area if math.isfinite(area) else math.nan,
                )  # fmt: skip
            )
    return LearnedAudit(rows, fits, notes)
