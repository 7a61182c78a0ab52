"""Attacks on top-k multi-label classifiers, all batched and sharing one engine.

Layout: :mod:`~tkmia.attacks.base` (the :class:`Attack` base class and its hooks),
:mod:`~tkmia.attacks.loss` (:class:`LossAttack`, SGD in tanh space), one module per attack
(:mod:`~tkmia.attacks.universal`: one perturbation for every image),
and the engine's parts: :mod:`~tkmia.attacks.loop` (the optimisation loop),
:mod:`~tkmia.attacks.queue` (the scheduling of a stream of chunks),
:mod:`~tkmia.attacks.state` (per-sample state), :mod:`~tkmia.attacks.pixels` (the tanh
change of variables), :mod:`~tkmia.attacks.inputs` (input validation),
:mod:`~tkmia.attacks.layout` (memory layout, host–device transfers).
"""

from tkmia.attacks.base import Attack
from tkmia.attacks.kfool import KFool
from tkmia.attacks.loss import LossAttack
from tkmia.attacks.mlcwu import MLCWU
from tkmia.attacks.result import AttackResult
from tkmia.attacks.state import SampleState
from tkmia.attacks.tkmia import TkMIA
from tkmia.attacks.tkmlapt import TkMLAPT
from tkmia.attacks.tkmlapu import TkMLAPU
from tkmia.attacks.universal import Universal

__all__ = [
    "MLCWU",
    "Attack",
    "AttackResult",
    "KFool",
    "LossAttack",
    "SampleState",
    "TkMIA",
    "TkMLAPT",
    "TkMLAPU",
    "Universal",
]
