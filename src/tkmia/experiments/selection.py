"""Which hyper-parameter configuration a run reports (SPEC §5, hyper-parameter search).

A run may try a grid of ``lr`` × ``λ`` × ``max_iter`` per method. The *selection rule*
picks the configuration reported for each method:

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
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tkmia.errors import InputError
from tkmia.files import write_text_atomic

RULES = ("success",)
SCOPES = ("setting", "all")
DEFAULT_TOL = 0.01
DEFAULT_SCOPE = "setting"
#: what identifies a setting in a summary row, and a configuration of a method.
SETTING_KEYS = ("dataset", "model", "scheme", "k", "group", "n", "threshold")
CONFIG_KEYS = ("lr", "lam", "max_iter")
#: success rates closer than this count as equal (the rule's tolerance is inclusive).
_EPS = 1e-9


def _num(value: Any, missing: float = math.nan) -> float:
    if value is None or value == "":
        return missing
    try:
        return float(value)
    except (TypeError, ValueError):
        return missing


def check_rule(rule: str = "success", tol: float = DEFAULT_TOL, scope: str = DEFAULT_SCOPE) -> None:
    """Raise :class:`InputError` unless the rule, tolerance and scope are valid."""
    if rule not in RULES:
        raise InputError(f"unknown selection rule {rule!r}; expected one of {list(RULES)}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 <= tol <= 1:
        raise InputError(f"--select-tol must be a number in [0, 1], got {tol!r}")
    if scope not in SCOPES:
        raise InputError(f"--select-scope must be one of {list(SCOPES)}, got {scope!r}")


def rule_text(rule: str = "success", tol: float = DEFAULT_TOL, scope: str = DEFAULT_SCOPE) -> str:
    """The rule in words, as the run states it."""
    check_rule(rule, tol, scope)
    text = f"highest success rate; within {tol:g} of it, the smallest APer"
    if scope == "all":
        text += " (means over all settings: one configuration per method for every setting)"
    return text


def _setting_id(row: dict[str, Any]) -> tuple[str, ...]:
    return tuple(str(row.get(key, "")) for key in SETTING_KEYS)


def _config_id(row: dict[str, Any]) -> tuple[str, ...]:
    return (str(row.get("method", "")),) + tuple(
        str(_num(row.get(key), 0.0)) for key in CONFIG_KEYS
    )


def _best(candidates: list[tuple[float, float, dict[str, Any]]], tol: float) -> dict[str, Any]:
    """``candidates``: (success, aper, row); the row the rule picks."""
    top = max(success for success, _, _ in candidates)
    close = [c for c in candidates if c[0] >= top - tol - _EPS]

    def key(c: tuple[float, float, dict[str, Any]]) -> tuple[float, ...]:
        _, aper, row = c
        return (
            aper if not math.isnan(aper) else math.inf,
            _num(row.get("max_iter"), 0.0),
            _num(row.get("lr"), 0.0),
            _num(row.get("lam"), 0.0),
        )

    return min(close, key=key)[2]


def select_rows(
    rows: Iterable[dict[str, Any]],
    rule: str = "success",
    tol: float = DEFAULT_TOL,
    scope: str = DEFAULT_SCOPE,
) -> list[dict[str, Any]]:
    """The rows the rule selects, in the order of ``rows``.

    ``rows`` are summary rows (from :func:`~tkmia.experiments.runner.collect_rows` or read
    back from ``summary.csv``: numbers or their text). With scope ``"setting"`` one row per
    (setting, method) that attacked anything; with scope ``"all"`` the rows of one
    configuration per method, in every setting where it attacked anything.
    """
    check_rule(rule, tol, scope)
    rows = [r for r in rows if _num(r.get("attacked"), 0.0) > 0]
    chosen: set[int] = set()
    if scope == "setting":
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for row in rows:
            groups.setdefault(_setting_id(row) + (str(row["method"]),), []).append(row)
        for group in groups.values():
            cands = [(_num(r["success_rate"], 0.0), _num(r.get("aper")), r) for r in group]
            chosen.add(id(_best(cands, tol)))
    else:
        by_config: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for row in rows:
            by_config.setdefault(
                (str(row.get("dataset", "")), str(row.get("model", ""))) + _config_id(row), []
            ).append(row)
        per_method: dict[tuple[str, ...], list[tuple[float, float, dict[str, Any]]]] = {}
        for cid, group in by_config.items():
            success = sum(_num(r["success_rate"], 0.0) for r in group) / len(group)
            apers = [_num(r.get("aper")) for r in group]
            apers = [a for a in apers if not math.isnan(a)]
            aper = sum(apers) / len(apers) if apers else math.nan
            per_method.setdefault(cid[:3], []).append((success, aper, group[0]))
        for cands in per_method.values():
            best = _best(cands, tol)
            cid = (str(best.get("dataset", "")), str(best.get("model", ""))) + _config_id(best)
            chosen.update(id(r) for r in by_config[cid])
    return [r for r in rows if id(r) in chosen]


def has_grid(rows: Sequence[dict[str, Any]]) -> bool:
    """Whether some method was run with more than one configuration."""
    configs: dict[str, set[tuple[str, ...]]] = {}
    for row in rows:
        configs.setdefault(str(row["method"]), set()).add(_config_id(row))
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
        data |= {key: stored[key] for key in ("rule", "tol", "scope") if key in stored}
    return data
