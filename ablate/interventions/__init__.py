"""Interventions: change a model inside a ``with`` block, restore it bitwise on exit.

- :mod:`.edits`: the context managers ``delete``, ``reorder``, ``scale``, ``drop`` (and
  Huang et al.'s ``linear`` survival rule for ``drop``);
- :mod:`.variants`: the same interventions as data (``Variant``) and the batched engine that
  evaluates many of them in one pass (``evaluate_variants``).
"""

from ablate.interventions.edits import (
    Linear,
    check_gain,
    check_order,
    delete,
    drop,
    linear,
    reorder,
    scale,
    swapped,
)
from ablate.interventions.variants import Variant, applied, evaluate_naive, evaluate_variants

__all__ = [
    "Linear", "Variant", "applied", "check_gain", "check_order", "delete", "drop",
    "evaluate_naive", "evaluate_variants", "linear", "reorder", "scale", "swapped",
]
