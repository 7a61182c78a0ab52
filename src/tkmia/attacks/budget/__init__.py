"""ε-bounded attacks for robustness at a budget (SPEC §7.7, `tkmia evaluate`).

:class:`APGD` (white-box, the APGD schedule), :class:`Square` (black-box, scores only) and
:func:`worst_case` (the ensemble's per-image worst case); :mod:`.common` holds the robust
intersection, the two losses, the ε-ball's exact projection and the per-image random
numbers. Unlike the minimum-norm attacks of :mod:`tkmia.attacks` they do not stop at a
first success: each returns, per image, the point of the ball with the fewest relevant
labels in the top-k it found (and stops early once there are none).
"""

from tkmia.attacks.budget.apgd import APGD
from tkmia.attacks.budget.common import LOSSES, NORMS, BudgetResult, hits, least_hits
from tkmia.attacks.budget.ensemble import worst_case
from tkmia.attacks.budget.square import Square

__all__ = ["APGD", "LOSSES", "NORMS", "BudgetResult", "Square", "hits", "least_hits", "worst_case"]
