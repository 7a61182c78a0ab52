"""Summary rows: one per (setting, method configuration), typed, parsed once.

A :class:`SummaryRow` is made from a run's records (:func:`collect_rows`) or read back from
a ``summary.csv`` (:func:`read_summary`), and written by :func:`write_summary`; tables,
figures and the selection rule work on these rows, never on CSV text.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from tkmia.errors import InputError
from tkmia.experiments.methods import HYPERPARAMETERS, REGISTRY
from tkmia.experiments.readback import is_universal, read_config, read_method, read_setting
from tkmia.experiments.records import read_all_records, summarise
from tkmia.experiments.settings import MethodConfig, Setting
from tkmia.files import write_text_atomic
from tkmia.protocol import TARGETED

#: what identifies a row: the run, the setting and the method configuration (the registry's
#: hyper-parameters, in its order: lr, lam, max_iter, then those added later)
KEY_COLUMNS = [
    "dataset", "model", "scheme", "k", "group", "n", "threshold", "method", *HYPERPARAMETERS,
]  # fmt: skip
#: hyper-parameter columns a file has only when one of its rows' methods takes them (see
#: :attr:`~tkmia.experiments.methods.HyperParameter.optional_column`)
OPTIONAL_COLUMNS = tuple(name for name, hp in HYPERPARAMETERS.items() if hp.optional_column)
#: what the records say about that (setting, configuration), in column order
MEASURE_COLUMNS = [
    "attacked", "skipped", "success_rate", "success_uint8", "d_tkacc", "d_p_at_k",
    "d_map_at_k", "d_ndcg_at_k", "delta_n", "mean_specified", "aper", "linf", "psnr", "ssim",
    "mean_iterations", "seconds",
]  # fmt: skip
#: every column a summary may have, in order (:func:`summary_columns`: those a file has)
SUMMARY_COLUMNS = KEY_COLUMNS + MEASURE_COLUMNS
#: the columns of a summary of the paper's methods (no targeted one), with kFool rows and
#: every SPEC §7 option (``success_rule``, ``quantize``) at its implicit value: the layout
#: before those options existed
PAPER_COLUMNS = [
    c
    for c in SUMMARY_COLUMNS
    if c not in HYPERPARAMETERS
    or HYPERPARAMETERS[c].implicit is None
    and any(c in spec.takes for spec in REGISTRY.values() if not spec.targeted)
]
#: columns that measure time, not results: they differ between identical runs.
TIMING_COLUMNS = ("seconds",)
_COUNTS = ("attacked", "skipped")


@dataclass(frozen=True)
class SummaryRow:
    """One line of ``summary.csv``: a (setting, method configuration) and its measures.

    The key columns (``scheme``, ``k``, ``group``, ``n``, ``threshold``, ``method``,
    ``lr``, ``lam``, ``max_iter``) are read from :attr:`setting` and :attr:`config`
    (see :meth:`value`); the measures are fields. Means are NaN where there is nothing to
    average (no record; for the norms, no success).

    Attributes:
        dataset: the dataset's name.
        model: the model's name.
        setting: the protocol setting (read back from a CSV: without ``group_indices``).
        config: the attack and its hyper-parameters.
        attacked: images attacked.
        skipped: ineligible images met before the last selected one.
        success_rate ... seconds: the means of :func:`~tkmia.experiments.records.summarise`.
        bad_images: unreadable images skipped (not a ``summary.csv`` column; 0 when read
            back from one).
    """

    dataset: str
    model: str
    setting: Setting
    config: MethodConfig
    attacked: int
    skipped: int
    success_rate: float
    success_uint8: float
    d_tkacc: float
    d_p_at_k: float
    d_map_at_k: float
    d_ndcg_at_k: float
    delta_n: float
    mean_specified: float
    aper: float
    linf: float
    psnr: float
    ssim: float
    mean_iterations: float
    seconds: float
    bad_images: int = 0

    @property
    def method(self) -> str:
        """The method's registry name."""
        return self.config.method

    @property
    def setting_key(self) -> str:
        """The setting's file-name-safe key (its folder under ``records/``)."""
        return self.setting.key

    @property
    def method_key(self) -> str:
        """The configuration's file-name-safe key (its records' file name)."""
        return self.config.key

    @property
    def method_title(self) -> str:
        """What tables and figures call the method (without hyper-parameters)."""
        return self.config.title

    @property
    def setting_title(self) -> str:
        """A heading for the setting (``digits · S1 global · group sevens · k=2``)."""
        s = self.setting
        if s.scheme == "global":
            return f"{self.dataset} · S1 global · group {s.group} · k={s.k}"
        if s.scheme == TARGETED:
            return f"{self.dataset} · targeted · {s.group} targets · n={s.n} · k={s.k}"
        return f"{self.dataset} · S2 random · n={s.n} · t={s.effective_threshold} · k={s.k}"

    @property
    def setting_short_title(self) -> str:
        """A two-line axis label for the setting (``S1 sevens\\nk=2``)."""
        s = self.setting
        if s.scheme == "global":
            return f"S1 {s.group}\nk={s.k}"
        if s.scheme == TARGETED:
            return f"T {s.group} n={s.n}\nk={s.k}"
        return f"S2 n={s.n} t={s.effective_threshold}\nk={s.k}"

    @property
    def setting_id(self) -> tuple[Any, ...]:
        """What tells settings apart: dataset, model and the setting's columns."""
        return (self.dataset, self.model) + tuple(self.value(c) for c in KEY_COLUMNS[2:7])

    def value(self, column: str) -> Any:
        """The typed value of any ``summary.csv`` column (None where it has none: ``group``
        of S2, ``n`` of S1, a hyper-parameter the method lacks; ``"all"`` for S1's
        ``threshold``).

        Raises:
            KeyError: ``column`` is not a summary column.
        """
        s = self.setting
        keys: dict[str, Any] = {
            "dataset": self.dataset,
            "model": self.model,
            "scheme": s.scheme,
            "k": s.k,
            "group": s.group,
            "n": s.n,
            "threshold": "all" if s.effective_threshold is None else s.effective_threshold,
        } | self.config.as_dict()
        if column in keys:
            return keys[column]
        if column in MEASURE_COLUMNS:
            return getattr(self, column)
        raise KeyError(column)

    def as_dict(self) -> dict[str, Any]:
        """``{column: typed value}`` for every ``summary.csv`` column, in column order."""
        return {column: self.value(column) for column in SUMMARY_COLUMNS}

    def cells(self) -> dict[str, str]:
        """``{column: text}`` as ``summary.csv`` writes it (``""`` for None, floats to 6
        significant digits, ``nan`` for NaN)."""
        return {column: _fmt(value) for column, value in self.as_dict().items()}

    @classmethod
    def from_records(
        cls,
        dataset: str,
        model: str,
        setting: Setting,
        config: MethodConfig,
        skipped: int,
        records: list[dict[str, Any]],
        bad_images: int = 0,
    ) -> SummaryRow:
        """The row of one (setting, configuration) from its records (see
        :func:`~tkmia.experiments.records.summarise`)."""
        measures = summarise(records)
        attacked = int(measures.pop("attacked"))
        return cls(
            dataset, model, setting, config, attacked, skipped, bad_images=bad_images, **measures
        )

    @classmethod
    def from_cells(cls, cells: Mapping[str, str]) -> SummaryRow:
        """Parse one line of ``summary.csv`` (:meth:`cells`' text).

        Raises:
            InputError: a column is missing or holds a value of the wrong kind.
        """
        return _parse(cls, cells)


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def _cell(cells: Mapping[str, str], column: str, kind: Callable[[str], Any]) -> Any:
    value = cells.get(column)
    if value is None:
        raise InputError(f"summary row has no column {column!r}; expected {SUMMARY_COLUMNS}")
    try:
        return kind(value)
    except ValueError:
        raise InputError(
            f"summary column {column!r} holds {value!r}; expected {kind.__name__}"
        ) from None


def _float(text: str) -> float:
    return math.nan if text == "" else float(text)


def _parse(cls: type[SummaryRow], cells: Mapping[str, str]) -> SummaryRow:
    scheme, k = _cell(cells, "scheme", str), _cell(cells, "k", int)
    if scheme == "global":
        setting = Setting("global", k, group=_cell(cells, "group", str))
    elif scheme == TARGETED:
        setting = Setting(TARGETED, k, group=_cell(cells, "group", str), n=_cell(cells, "n", int))
    elif scheme == "random":
        n, threshold = _cell(cells, "n", int), _cell(cells, "threshold", int)
        setting = Setting("random", k, n=n, threshold=threshold)
    else:
        raise InputError(
            f"summary column 'scheme' holds {scheme!r}; expected global, random or {TARGETED}"
        )
    measures = {
        f.name: _cell(cells, f.name, int if f.name in _COUNTS else _float)
        for f in fields(cls)
        if f.name in MEASURE_COLUMNS
    }
    config = MethodConfig.from_dict(
        {c: _cell(cells, c, str) for c in KEY_COLUMNS[7:] if c not in OPTIONAL_COLUMNS}
        | {c: cells[c] for c in OPTIONAL_COLUMNS if cells.get(c) is not None}
    )
    return cls(
        _cell(cells, "dataset", str), _cell(cells, "model", str), setting, config, **measures
    )


def collect_rows(
    out: Path,
    settings: Sequence[Setting] | None = None,
    methods: Sequence[MethodConfig] | None = None,
) -> list[SummaryRow]:
    """Summary rows re-derived from the records under ``out`` (in run order if given).

    The records of all files of a method (a single process's and every rank's) are
    merged, one per image, in image order; records of images no longer selected are left
    out. A setting or method without its ``.json`` description has no row.

    Args:
        out: a results folder (with ``config.json``).
        settings: the settings, in order (default: ``config.json``'s).
        methods: the method configurations, in order (default: ``config.json``'s).

    Returns:
        One row per (setting, method) in setting-major order.

    Raises:
        InputError: ``out`` holds no ``config.json``.
    """
    config = _read_config(out)
    return [
        SummaryRow.from_records(
            config["dataset"],
            config["model"],
            group.setting,
            group.method,
            group.skipped,
            group.records,
            group.bad_images,
        )  # fmt: skip
        for group in iter_records(out, settings, methods)
    ]


@dataclass(frozen=True)
class RecordGroup:
    """The records of one (setting, method configuration) of a results folder.

    Attributes:
        setting, method: what was run.
        skipped, bad_images: as ``setting.json`` counts them.
        records: one per attacked image still selected, in image order.
    """

    setting: Setting
    method: MethodConfig
    skipped: int
    bad_images: int
    records: list[dict[str, Any]]


def _read_config(out: Path) -> dict[str, Any]:
    config = read_config(out)
    if is_universal(config):
        raise InputError(
            f"{str(out)!r} holds tkmia universal results (one perturbation per group, not "
            "per-image attack records, which tkmia report and tkmia audit read): rerun the "
            "same tkmia universal command to rewrite its tables"
        )
    return config


def iter_records(
    out: Path,
    settings: Sequence[Setting] | None = None,
    methods: Sequence[MethodConfig] | None = None,
) -> Iterator[RecordGroup]:
    """The records of every (setting, method) under ``out``, setting-major, as
    :func:`collect_rows` reads them (arguments and errors as there)."""
    config = _read_config(out)
    setting_keys = [s.key for s in settings] if settings else config["settings"]
    method_keys = [m.key for m in methods] if methods else config["methods"]
    for skey in setting_keys:
        sdir = out / "records" / skey
        if not (sdir / "setting.json").is_file():
            continue
        setting, skipped, bad_images, selected = read_setting(sdir / "setting.json")
        for mkey in method_keys:
            mpath = sdir / f"{mkey}.json"
            if not mpath.is_file():
                continue
            method = read_method(mpath)
            records = read_all_records(sdir, mkey)
            if selected is not None:
                keep = set(selected)
                records = [r for r in records if r["index"] in keep]
            yield RecordGroup(setting, method, skipped, bad_images, records)


def summary_columns(rows: Sequence[SummaryRow]) -> list[str]:
    """The columns of a summary of ``rows``: :data:`SUMMARY_COLUMNS` less each of
    :data:`OPTIONAL_COLUMNS` that no row's method takes (for one with an ``implicit``
    value, SPEC §7's ``success_rule`` and ``quantize``: that no row sets otherwise)."""
    taken = {
        name
        for row in rows
        for name, value in row.config.params.items()
        if value != HYPERPARAMETERS[name].implicit
    }
    return [c for c in SUMMARY_COLUMNS if c not in OPTIONAL_COLUMNS or c in taken]


def write_summary(out: Path, rows: Sequence[SummaryRow], name: str = "summary.csv") -> Path:
    """Write the rows to ``out/name`` (atomically) with :func:`summary_columns`.

    Returns:
        The path written.
    """
    columns = summary_columns(rows)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    for row in rows:
        cells = row.cells()
        writer.writerow({c: cells[c] for c in columns})
    path = out / name
    write_text_atomic(path, buffer.getvalue())
    return path


def read_summary(path: Path) -> list[SummaryRow]:
    """The rows of a ``summary.csv`` (or ``selected.csv``); a file without an optional
    hyper-parameter column (:data:`OPTIONAL_COLUMNS`, e.g. written before it existed) reads
    the method's legacy value for it.

    Raises:
        InputError: a row lacks a column or holds a value of the wrong kind (the message
            names the file and the line).
    """
    with path.open(newline="", encoding="utf-8") as fh:
        lines = list(csv.DictReader(fh))
    rows = []
    for number, cells in enumerate(lines, start=2):
        try:
            rows.append(SummaryRow.from_cells(cells))
        except InputError as err:
            raise InputError(f"{str(path)!r} line {number}: {err}") from None
    return rows
