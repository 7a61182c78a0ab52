"""Which hyper-parameter configuration a run reports (SPEC §5, hyper-parameter search).

A run may try a grid of ``lr`` × ``λ`` × ``max_iter`` per method. The *selection rule*
picks the configuration reported for each method (each SPEC §7 variant of a method, e.g.
TkMIA with ``success="preserve"``, counts as a method of its own: the rule never trades
one goal for another):

* rule ``"success"`` (the only one so far): the highest success rate; among the
  configurations whose success rate is within ``tol`` of the best, the smallest APer (mean
  L2 norm of the successful perturbations; a configuration without any success has none
  and comes last); remaining ties go to the smaller ``max_iter``, then the smaller ``lr``,
  then the smaller ``λ`` (so the choice is deterministic).
* scope ``"setting"``: one choice per (setting, method);
  scope ``"all"``: one configuration per method for all settings at once, compared by the
  mean success rate and the mean APer over the settings (how defaults are chosen).

Rows that attacked nothing (``attacked == 0``) are never selected.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tkmia.errors import InputError
from tkmia.experiments.settings import MethodConfig
from tkmia.experiments.summary import SummaryRow
from tkmia.files import write_text_atomic

RULES = ("success",)
SCOPES = ("setting", "all")
DEFAULT_TOL = 0.01
DEFAULT_SCOPE = "setting"
#: the hyper-parameters that break remaining ties, smaller first, in this order.
TIE_BREAK = ("max_iter", "lr", "lam")
#: success rates closer than this count as equal (the rule's tolerance is inclusive).
_EPS = 1e-9


def check_rule(rule: str = "success", tol: float = DEFAULT_TOL, scope: str = DEFAULT_SCOPE) -> None:
    """Raise :class:`InputError` unless the rule, tolerance and scope are valid."""
    if not isinstance(rule, str) or rule not in RULES:
        raise InputError(f"unknown selection rule {rule!r}; expected one of {list(RULES)}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 <= tol <= 1:
        raise InputError(f"--select-tol must be a number in [0, 1], got {tol!r}")
    if not isinstance(scope, str) or scope not in SCOPES:
        raise InputError(f"--select-scope must be one of {list(SCOPES)}, got {scope!r}")


def rule_text(rule: str = "success", tol: float = DEFAULT_TOL, scope: str = DEFAULT_SCOPE) -> str:
    """The rule in words, as the run states it."""
    check_rule(rule, tol, scope)
    text = f"highest success rate; within {tol:g} of it, the smallest APer"
    if scope == "all":
        text += " (means over all settings: one configuration per method for every setting)"
    return text


@dataclass(frozen=True)
class _Candidate:
    """A configuration in the running: its success rate, its APer (NaN: none) and a row."""

    success: float
    aper: float
    row: SummaryRow


def _best(candidates: list[_Candidate], tol: float) -> SummaryRow:
    """The row the rule picks among ``candidates``."""
    top = max(c.success for c in candidates)
    close = [c for c in candidates if c.success >= top - tol - _EPS]

    def key(c: _Candidate) -> tuple[float, ...]:
        params = c.row.config.params
        ties = tuple(float(params.get(name, 0.0)) for name in TIE_BREAK)
        return (c.aper if not math.isnan(c.aper) else math.inf, *ties)

    return min(close, key=key).row


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def select_rows(
    rows: Iterable[SummaryRow],
    rule: str = "success",
    tol: float = DEFAULT_TOL,
    scope: str = DEFAULT_SCOPE,
) -> list[SummaryRow]:
    """The rows the rule selects, in the order of ``rows``.

    Args:
        rows: summary rows (from :func:`~tkmia.experiments.summary.collect_rows` or
            :func:`~tkmia.experiments.summary.read_summary`).
        rule, tol, scope: the selection rule (see the module's docstring).

    Returns:
        With scope ``"setting"`` one row per (setting, method) that attacked anything;
        with scope ``"all"`` the rows of one configuration per method, in every setting
        where it attacked anything. The rows themselves, not copies.

    Raises:
        InputError: an invalid rule, tolerance or scope.
    """
    check_rule(rule, tol, scope)
    rows = [r for r in rows if r.attacked > 0]
    chosen: set[int] = set()
    if scope == "setting":
        groups: dict[tuple[Any, ...], list[SummaryRow]] = {}
        for row in rows:
            groups.setdefault((*row.setting_id, row.config.family), []).append(row)
        for group in groups.values():
            best = _best([_Candidate(_nan0(r.success_rate), r.aper, r) for r in group], tol)
            chosen.add(id(best))
    else:
        by_config: dict[tuple[Any, ...], list[SummaryRow]] = {}
        for row in rows:
            by_config.setdefault((row.dataset, row.model, row.config), []).append(row)
        per_method: dict[tuple[Any, ...], list[_Candidate]] = {}
        for (dataset, model, config), group in by_config.items():
            success = _mean([_nan0(r.success_rate) for r in group])
            aper = _mean([r.aper for r in group if not math.isnan(r.aper)])
            per_method.setdefault((dataset, model, config.family), []).append(
                _Candidate(success, aper, group[0])
            )
        for cands in per_method.values():
            best = _best(cands, tol)
            chosen.update(id(r) for r in by_config[best.dataset, best.model, best.config])
    return [r for r in rows if id(r) in chosen]


def _nan0(value: float) -> float:
    """A success rate, 0 when there is none (NaN)."""
    return 0.0 if math.isnan(value) else value


def has_grid(rows: Iterable[SummaryRow]) -> bool:
    """Whether some method was run with more than one configuration."""
    configs: dict[tuple[str, ...], set[MethodConfig]] = {}
    for row in rows:
        configs.setdefault(row.config.family, set()).add(row.config)
    return any(len(c) > 1 for c in configs.values())


#: where a results folder keeps its selection rule (not part of config.json: the rule
#: changes no record, so a rerun with another rule resumes and just re-selects).
RULE_FILE = "selection.json"


def save_rule(
    out: Path, rule: str = "success", tol: float = DEFAULT_TOL, scope: str = DEFAULT_SCOPE
) -> None:
    """Store the rule in ``out/selection.json`` (atomically)."""
    check_rule(rule, tol, scope)
    data = {"rule": rule, "tol": tol, "scope": scope, "text": rule_text(rule, tol, scope)}
    write_text_atomic(out / RULE_FILE, json.dumps(data, indent=2, sort_keys=True))


def load_rule(out: Path) -> dict[str, Any]:
    """``{"rule", "tol", "scope"}`` stored in ``out`` (the defaults when there is none)."""
    path = out / RULE_FILE
    data: dict[str, Any] = {"rule": "success", "tol": DEFAULT_TOL, "scope": DEFAULT_SCOPE}
    if path.is_file():
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            stored = {}
        if not isinstance(stored, dict):
            stored = {}
        data |= {key: stored[key] for key in ("rule", "tol", "scope") if key in stored}
        try:
            check_rule(data["rule"], data["tol"], data["scope"])
        except InputError as err:
            raise InputError(
                f"{str(path)!r} holds a bad selection rule ({err}); delete it to use the "
                "defaults, or pass --select-tol and --select-scope to tkmia report"
            ) from None
    return data
