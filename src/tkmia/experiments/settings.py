"""What one run attacks: settings (scheme, k, group or n, threshold) and method configs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from torch import nn

from tkmia.attacks import MLCWU, Attack, KFool, TkMIA, TkMLAPU
from tkmia.errors import InputError

METHODS = ("tkmia", "tkmlapu", "kfool", "mlcwu")
METHOD_TITLES = {"tkmia": "TkMIA", "tkmlapu": "TkML-AP-U", "kfool": "kFool", "mlcwu": "ML-CW-U"}


@dataclass(frozen=True)
class Setting:
    """One protocol setting: S1 with a label group, or S2 with n labels per image."""

    scheme: str
    k: int
    group: str | None = None
    group_indices: tuple[int, ...] | None = None
    n: int | None = None
    threshold: int | None = None

    @property
    def key(self) -> str:
        """A file-name-safe identifier, unique within a run."""
        if self.scheme == "global":
            name = "".join(ch if ch.isalnum() else "_" for ch in str(self.group))
            return f"global-k{self.k}-{name}"
        return f"random-k{self.k}-n{self.n}-t{self.effective_threshold}"

    @property
    def effective_threshold(self) -> int | None:
        """None for S1's rule, else the ΔN a success needs (default n)."""
        if self.scheme == "global":
            return None
        return self.n if self.threshold is None else self.threshold

    @property
    def title(self) -> str:
        if self.scheme == "global":
            return f"S1 global, group {self.group}, k={self.k}"
        return f"S2 random, n={self.n}, t={self.effective_threshold}, k={self.k}"


@dataclass(frozen=True)
class MethodConfig:
    """An attack and its hyper-parameters (lr and lam are None for kFool)."""

    method: str
    max_iter: int
    lr: float | None = None
    lam: float | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"unknown method {self.method!r}; expected one of {list(METHODS)}")
        if self.method != "kfool" and (self.lr is None or self.lam is None):
            raise InputError(f"method {self.method!r} needs lr and lam")

    @property
    def key(self) -> str:
        if self.method == "kfool":
            return f"kfool-it{self.max_iter}"
        return f"{self.method}-lr{self.lr:g}-lam{self.lam:g}-it{self.max_iter}"

    def build(
        self,
        model: nn.Module,
        k: int,
        normalize: tuple[Sequence[float], Sequence[float]] | None = None,
    ) -> Attack:
        """The attack object for top-``k``."""
        if self.method == "kfool":
            return KFool(model, k, max_iter=self.max_iter, normalize=normalize)
        cls = {"tkmia": TkMIA, "tkmlapu": TkMLAPU, "mlcwu": MLCWU}[self.method]
        return cls(model, k, lr=self.lr, lam=self.lam, max_iter=self.max_iter, normalize=normalize)

    def as_dict(self) -> dict:
        return asdict(self)
