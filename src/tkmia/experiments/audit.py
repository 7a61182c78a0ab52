"""The defender's view (SPEC §7.5): how large a fraction of a batch must be attacked before
a monitor of the batch mean of a measure, or of a label-free statistic, raises an alarm.

Everything comes from the per-image records: for every attacked image its clean and its
adversarial value of each statistic (:data:`STATISTICS`). For one (setting, method
configuration) with ``n`` records and a monitor batch of ``N`` images:

- **Clean batches.** The monitor's reference is the distribution of the batch mean over
  ``N`` clean images drawn with replacement from the clean versions of the ``n`` attacked
  images (the eligible images the attack was run on; the records hold nothing else).
  ``THRESHOLD_DRAWS`` such batches fix the alarm thresholds: the lower ``α`` quantile for
  a measure (alarm when the mean falls below), the lower and upper ``α/2`` quantiles for a
  label-free statistic (alarm when the mean leaves the central ``1 − α``). Statistics
  that take few values (TkAcc, the count above 0.5) have batch means with ties at the
  quantile; there the monitor alarms with the probability that makes its false-alarm rate
  exactly ``α`` on the reference batches (a randomised test), and power is its expectation,
  so no extra randomness enters.
- **Attacked batches.** ``DRAWS`` fresh batches of ``N`` images drawn with replacement;
  in each, the first ``m`` draws are sent adversarial, the others clean, for every
  ``m = 0..N`` at once (prefix sums along the batch). A failed attack counts as attacked
  (it is what the attacker sends). ``power(p, N)`` is the share of batches that alarm
  with ``m = floor(p·N + 0.5)``; ``p80`` the smallest ``p`` of the grid 0, 0.01, ..., 1
  with ``power >= 0.8`` (``inf`` when never reached).
- **AUROC** (label-free statistics): clean against adversarial values of the ``n`` images,
  ties counted one half, reported as ``max(AUC, 1 − AUC)``.

The draws come from ``numpy.random.default_rng([seed, n, 0])`` (thresholds) and
``[seed, n, 1]`` (power), column by column: the batch of ``N`` is the first ``N`` draws
of the batch of the largest ``N``, so a batch size's numbers do not depend on the others,
every method and statistic of a setting sees the same batches (their comparison has no
bootstrap noise between them), and an audit never depends on which other groups a folder
holds. Nothing loops over draws.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tkmia.errors import InputError
from tkmia.experiments.records import LABEL_FREE, MEASURES, SORTED_SCORES
from tkmia.experiments.settings import MethodConfig, Setting
from tkmia.experiments.summary import RecordGroup, iter_records

#: the batch sizes N a monitor watches
BATCH_SIZES = (50, 100, 200, 500)
#: the false-alarm rate on clean batches
ALPHA = 0.05
#: the power a monitor must reach for p80
TARGET_POWER = 0.8
#: bootstrap batches per N for the power, and for the clean thresholds
DRAWS, THRESHOLD_DRAWS = 1000, 3000
#: the grid of attacked fractions p
P_GRID = np.round(np.arange(101) / 100, 2)
#: the fractions whose power audit.csv reports
REPORTED_P = (0.1, 0.25, 0.5)
LABELS, LABEL_FREE_MONITOR = "labels", "label-free"


@dataclass(frozen=True)
class Statistic:
    """A statistic a monitor watches: its record-column stem, title and monitor."""

    name: str
    title: str
    monitor: str

    @property
    def two_sided(self) -> bool:
        """Label-free statistics alarm on either side; measures only when they drop."""
        return self.monitor == LABEL_FREE_MONITOR


_TITLES = {
    "tkacc": "TkAcc", "p_at_k": "P@k", "map_at_k": "mAP@k", "ndcg_at_k": "NDCG@k",
    "kth_score": "k-th score", "topk_mass": "top-k mass", "margin": "margin",
    "n_above_half": "#>0.5",
}  # fmt: skip
#: every statistic, measures (with labels) first
STATISTICS = tuple(Statistic(n, _TITLES[n], LABELS) for n in MEASURES) + tuple(
    Statistic(n, _TITLES[n], LABEL_FREE_MONITOR) for n in LABEL_FREE
)


@dataclass(frozen=True)
class AuditRow:
    """One line of ``audit.csv``: a monitor of one statistic at one batch size.

    Attributes:
        setting, config: what was attacked.
        statistic: what the monitor watches.
        batch: the batch size N.
        images: the records it was drawn from.
        power: ``(len(P_GRID),)``, the power at each p of :data:`P_GRID`.
        auroc: per-image AUROC (label-free statistics; NaN for the measures).
    """

    setting: Setting
    config: MethodConfig
    statistic: Statistic
    batch: int
    images: int
    power: np.ndarray
    auroc: float

    @property
    def p80(self) -> float:
        """The smallest p of the grid with power >= 0.8; ``inf`` when none."""
        hit = np.nonzero(self.power >= TARGET_POWER - 1e-12)[0]
        return float(P_GRID[hit[0]]) if hit.size else math.inf

    def power_at(self, p: float) -> float:
        """The power at a fraction ``p`` of the grid."""
        return float(self.power[int(round(p * 100))])


@dataclass(frozen=True)
class AuditGroup:
    """The values of one (setting, configuration): ``clean`` and ``adv`` ``(S, n)`` float64,
    one row per statistic of :data:`STATISTICS`; ``features``: the learned monitor's sorted
    sigmoid scores, clean and adversarial, ``(n, d)`` each (``None`` for records written
    before they existed, see :mod:`tkmia.experiments.learned_monitor`)."""

    setting: Setting
    config: MethodConfig
    clean: np.ndarray
    adv: np.ndarray
    features: tuple[np.ndarray, np.ndarray] | None = None


def group_values(group: RecordGroup, where: str = "") -> AuditGroup:
    """The audit's values of one record group.

    Raises:
        InputError: records without the columns the audit needs (written before they
            existed), naming the columns and how to regenerate them.
    """
    columns = [f"{s.name}_{side}" for s in STATISTICS for side in ("clean", "adv")]
    missing = sorted({c for r in group.records for c in columns if c not in r})
    if missing:
        raise InputError(
            f"the records of {group.setting.key}/{group.method.key}{where} lack the columns "
            f"{missing} that the audit needs (written by a tkmia before the audit existed); "
            "regenerate them by running the same `tkmia run` command with a new --out folder"
        )
    table = np.array([[r[c] for c in columns] for r in group.records], dtype=np.float64)
    table = table.reshape(len(group.records), len(STATISTICS), 2)
    clean, adv = table[..., 0].T.copy(), table[..., 1].T.copy()
    return AuditGroup(group.setting, group.method, clean, adv, sorted_features(group.records))


def sorted_features(records: Sequence[dict]) -> tuple[np.ndarray, np.ndarray] | None:
    """The records' sorted sigmoid scores (:data:`SORTED_SCORES`), clean and adversarial,
    ``(n, d)`` float64 each; ``None`` when a record lacks them or their widths differ."""
    if not records or any(name not in r for r in records for name in SORTED_SCORES):
        return None
    widths = {len(r[name]) for r in records for name in SORTED_SCORES}
    if len(widths) != 1:
        return None
    clean, adv = ([r[name] for r in records] for name in SORTED_SCORES)
    return np.asarray(clean, dtype=np.float64), np.asarray(adv, dtype=np.float64)


def read_groups(out: Path) -> list[AuditGroup]:
    """The audit's values of every (setting, configuration) with records under ``out``.

    Raises:
        InputError: ``out`` is not a results folder, or its records lack columns.
    """
    return [group_values(g, where=f" in {str(out)!r}") for g in iter_records(out) if g.records]


def auroc(clean: np.ndarray, adv: np.ndarray) -> np.ndarray:
    """``max(AUC, 1 − AUC)`` of adversarial against clean values, ties counted one half.

    Args:
        clean, adv: ``(S, n0)`` and ``(S, n1)``, one row per statistic.

    Returns:
        ``(S,)`` in [0.5, 1]; NaN for an empty side.
    """
    n0, n1 = clean.shape[1], adv.shape[1]
    if n0 == 0 or n1 == 0:
        return np.full(clean.shape[0], math.nan)
    out = np.empty(clean.shape[0])
    for s in range(clean.shape[0]):  # a few statistics; each is one sort
        ref = np.sort(clean[s])
        below = np.searchsorted(ref, adv[s], side="left")
        upto = np.searchsorted(ref, adv[s], side="right")
        auc = (below + 0.5 * (upto - below)).sum() / (n0 * n1)
        out[s] = max(auc, 1.0 - auc)
    return out


def _tail(ref: np.ndarray, level: np.ndarray, upper: bool) -> tuple[np.ndarray, np.ndarray]:
    """Thresholds ``q`` ``(S,)`` and tie weights ``γ`` ``(S,)`` of a randomised test that
    alarms with probability ``level`` ``(S,)`` on the reference means ``ref`` ``(S, T)``:
    ``P(M < q) + γ·P(M = q) = level`` (``>`` for the upper tail)."""
    t = np.sort(ref, axis=1)
    j = np.maximum(np.ceil(level * t.shape[1]).astype(int) - 1, 0)
    j = t.shape[1] - 1 - j if upper else j
    q = np.take_along_axis(t, j[:, None], axis=1)[:, 0]
    tol = 1e-9 * np.maximum(1.0, np.abs(q))[:, None]
    beyond = (ref > q[:, None] + tol) if upper else (ref < q[:, None] - tol)
    equal = np.abs(ref - q[:, None]) <= tol
    gamma = (level - beyond.mean(axis=1)) / np.maximum(equal.mean(axis=1), 1e-300)
    return q, np.clip(gamma, 0.0, 1.0)


def _alarm_rate(means: np.ndarray, q: np.ndarray, gamma: np.ndarray, upper: bool) -> np.ndarray:
    """Expected alarm rate over the draws of ``means`` ``(..., S, R, M)`` → ``(..., S, M)``."""
    q3 = q[:, None, None]
    tol = 1e-9 * np.maximum(1.0, np.abs(q3))
    beyond = (means > q3 + tol) if upper else (means < q3 - tol)
    equal = np.abs(means - q3) <= tol
    rate: np.ndarray = beyond.mean(axis=-2) + gamma[:, None] * equal.mean(axis=-2)
    return rate


def _reference_means(
    clean: np.ndarray, ref_idx: np.ndarray, batch_sizes: list[int]
) -> dict[int, np.ndarray]:
    """``{N: (S, T)}``: the means of every statistic over the first ``N`` draws of each
    row of ``ref_idx`` ``(T, top)``, as image counts ``(T, n)`` times values ``(n, S)``."""
    draws, n = ref_idx.shape[0], clean.shape[1]
    rows = np.arange(draws)[:, None] * n
    counts = np.zeros((draws, n))
    out, start = {}, 0
    for batch in batch_sizes:  # ascending: each adds its segment's counts
        segment = (rows + ref_idx[:, start:batch]).ravel()
        counts += np.bincount(segment, minlength=draws * n).reshape(draws, n)
        out[batch] = (counts @ clean.T).T / batch
        start = batch
    return out


def power_by_batch(
    clean: np.ndarray,
    adv: np.ndarray,
    two_sided: np.ndarray,
    attacked: dict[int, np.ndarray],
    seed: int = 0,
    draws: int = DRAWS,
    threshold_draws: int = THRESHOLD_DRAWS,
    alpha: float = ALPHA,
) -> dict[int, np.ndarray]:
    """The power of each statistic's monitor with ``m`` attacked images in a batch of ``N``.

    The batches of every ``N`` are the first ``N`` draws of the same sequences, drawn
    column by column, so the draws of one ``N`` do not depend on the other batch sizes.

    Args:
        clean: ``(S, n)`` clean values of ``n`` images, one row per statistic.
        adv: ``(G, S, n)``: their adversarial values under ``G`` attacks of the same
            images (which share every bootstrap batch).
        two_sided: ``(S,)`` bool: alarm on both sides (else only when the mean drops).
        attacked: ``{N: the numbers m of attacked images to evaluate, each in 0..N}``.
        seed: the bootstrap's seed (with ``n``).
        draws, threshold_draws: bootstrap batches for the power and for the thresholds.
        alpha: the false-alarm rate on clean batches.

    Returns:
        ``{N: (G, S, len(attacked[N]))}``: the power at each ``m``.
    """
    n, top = clean.shape[1], max(attacked)
    ref_idx = np.random.default_rng([seed, n, 0]).integers(0, n, size=(top, threshold_draws))
    references = _reference_means(clean, np.ascontiguousarray(ref_idx.T), sorted(attacked))
    idx = np.random.default_rng([seed, n, 1]).integers(0, n, size=(top, draws))
    idx = np.ascontiguousarray(idx.T)  # (R, top)
    lower = np.where(two_sided, alpha / 2, alpha)
    power = {b: np.zeros(adv.shape[:-1] + (len(m),)) for b, m in attacked.items()}
    for s in range(clean.shape[0]):  # a few statistics; the draws are vectorised
        # column 0 the clean values, then the adversarial ones of each attack: (n, 1 + G)
        table = np.concatenate([clean[s][:, None], adv[:, s].T], axis=1)
        drawn = table[idx]  # (R, top, 1 + G)
        np.cumsum(drawn, axis=1, out=drawn)  # sums of the first j + 1 draws
        for batch, m in attacked.items():
            ref = references[batch][s : s + 1]  # (1, T) clean batch means
            cum = np.where((m > 0)[None, :, None], drawn[:, np.maximum(m - 1, 0)], 0.0)
            clean_rest = drawn[:, batch - 1, :1] - cum[:, :, 0]  # (R, M): the clean part
            means = ((cum[:, :, 1:] + clean_rest[:, :, None]) / batch).transpose(2, 0, 1)
            q, gamma = _tail(ref, lower[s : s + 1], upper=False)
            rate = _alarm_rate(means[:, None], q, gamma, upper=False)[:, 0]
            if two_sided[s]:
                q, gamma = _tail(ref, np.array([alpha / 2]), upper=True)
                rate += _alarm_rate(means[:, None], q, gamma, upper=True)[:, 0]
            power[batch][:, s] = rate
    return power


def power_curves(
    clean: np.ndarray,
    adv: np.ndarray,
    two_sided: np.ndarray,
    batch: int,
    seed: int = 0,
    draws: int = DRAWS,
    threshold_draws: int = THRESHOLD_DRAWS,
    alpha: float = ALPHA,
    attacked: Sequence[int] | None = None,
) -> np.ndarray:
    """:func:`power_by_batch` for one batch size and one attack: ``clean`` and ``adv``
    ``(S, n)``; returns ``(S, len(attacked))`` (default ``m = 0..batch``)."""
    m = np.arange(batch + 1) if attacked is None else np.asarray(attacked)
    curves = power_by_batch(
        clean, adv[None], two_sided, {batch: m}, seed, draws, threshold_draws, alpha
    )
    return curves[batch][0]


def audit_groups(
    groups: Sequence[AuditGroup],
    batch_sizes: Sequence[int] = BATCH_SIZES,
    seed: int = 0,
    draws: int = DRAWS,
    threshold_draws: int = THRESHOLD_DRAWS,
) -> list[AuditRow]:
    """Every monitor of the given groups: statistics × batch sizes, in group order, but
    for batch sizes larger than a group's attacked images (:func:`skipped_batches`).

    Groups of the same setting with the same clean values (the methods attacked the same
    images) are bootstrapped together.
    """
    two_sided = np.array([s.two_sided for s in STATISTICS])
    clusters: dict[tuple[str, bytes], list[int]] = {}
    for i, group in enumerate(groups):
        clusters.setdefault((group.setting.key, group.clean.tobytes()), []).append(i)
    grid = {b: np.floor(P_GRID * b + 0.5).astype(int) for b in batch_sizes}
    power: dict[tuple[int, int], np.ndarray] = {}
    for members in clusters.values():
        adv = np.stack([groups[i].adv for i in members])
        curves = power_by_batch(
            groups[members[0]].clean, adv, two_sided, grid, seed, draws, threshold_draws
        )
        for batch in batch_sizes:
            for j, i in enumerate(members):
                power[i, batch] = curves[batch][j]
    rows = []
    for i, group in enumerate(groups):
        areas = auroc(group.clean, group.adv)
        for batch in batch_sizes:
            if batch > group.clean.shape[1]:  # see skipped_batches
                continue
            for s, stat in enumerate(STATISTICS):
                area = float(areas[s]) if stat.two_sided else math.nan
                rows.append(
                    AuditRow(
                        group.setting,
                        group.config,
                        stat,
                        batch,
                        group.clean.shape[1],
                        power[i, batch][s],
                        area,
                    )  # fmt: skip
                )
    return rows


#: the most bootstrap draws times the largest batch size (the audit holds a few float64
#: arrays of that many entries per statistic: 2·10⁷ is a few hundred MB)
MAX_DRAWN = 20_000_000


def skipped_batches(groups: Sequence[AuditGroup], batch_sizes: Sequence[int]) -> list[str]:
    """One line per group whose attacked images are fewer than some batch sizes: those
    batch sizes are left out of its audit. A batch of N drawn (with replacement) from n < N
    images repeats them: its power would describe the n images, not a batch of N
    independent ones (docs/audit.md)."""
    notes = []
    for group in groups:
        n = group.clean.shape[1]
        over = [b for b in batch_sizes if b > n]
        if over:
            notes.append(
                f"{group.setting.key}, {group.config.title}: N = {over} skipped "
                f"(only {n} attacked images; attack more with --samples)"
            )
    return notes


def check_audit_options(batch_sizes: Sequence[int], draws: int) -> None:
    """Raises InputError for a batch size or a number of draws below 1, or a product of
    the draws and the largest batch size above :data:`MAX_DRAWN` (memory)."""
    bad = [b for b in batch_sizes if isinstance(b, bool) or not isinstance(b, int) or b < 1]
    if bad or not batch_sizes:
        raise InputError(f"batch sizes must be positive integers, got {list(batch_sizes)}")
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 20:
        raise InputError(f"the number of bootstrap draws must be an integer >= 20, got {draws!r}")
    if max(batch_sizes) * 3 * draws > MAX_DRAWN:
        raise InputError(
            f"--batch-sizes up to {max(batch_sizes)} with --draws {draws} would hold "
            f"{max(batch_sizes) * 3 * draws:.3g} bootstrap draws in memory (at most "
            f"{MAX_DRAWN:.0e}): use batch sizes up to {MAX_DRAWN // (3 * draws)} or fewer draws"
        )


def audit(
    out: Path,
    batch_sizes: Sequence[int] = BATCH_SIZES,
    seed: int = 0,
    draws: int = DRAWS,
) -> tuple[list[AuditRow], list[AuditGroup]]:
    """The audit of a results folder: its rows, setting-major, and the values they use.

    Raises:
        InputError: see :func:`read_groups` and :func:`check_audit_options`; no records.
    """
    check_audit_options(batch_sizes, draws)
    groups = read_groups(out)
    if not groups:
        raise InputError(
            f"{str(out)!r} holds no records to audit (no setting of its config.json has a "
            "setting.json and records): run tkmia run into it first (or, if it was "
            "interrupted, rerun the same command to finish it)"
        )
    return audit_groups(groups, batch_sizes, seed, draws, 3 * draws), groups
