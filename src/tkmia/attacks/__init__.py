"""Attacks on top-k multi-label classifiers, all batched and sharing one engine."""

from tkmia.attacks.base import Attack, AttackResult, LossAttack
from tkmia.attacks.kfool import KFool
from tkmia.attacks.mlcwu import MLCWU
from tkmia.attacks.tkmia import TkMIA
from tkmia.attacks.tkmlapu import TkMLAPU

__all__ = ["MLCWU", "Attack", "AttackResult", "KFool", "LossAttack", "TkMIA", "TkMLAPU"]
