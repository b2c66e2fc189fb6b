"""ablate: take trained residual and plain networks apart.

Interventions are context managers that change a model inside a ``with`` block and restore it
exactly on exit::

    import ablate
    net = ablate.load("resnet20")            # a bundled checkpoint, or load(checkpoint=PATH)
    with ablate.delete(net.model, [4]):
        ...                                  # block 4 is gone here, and back afterwards

``reorder`` lives in :mod:`ablate.interventions` (``python -m ablate.reorder`` is a command).
"""

from .blocks import Block, blocks, chain
from .checkpoint import Loaded, load
from .interventions import delete, drop, linear, scale
from .lesion import Variant, evaluate_variants
from .measures import evaluate
from .models import create

__version__ = "0.1.0"

__all__ = [
    "Block", "Loaded", "Variant", "blocks", "chain", "create", "delete", "drop", "evaluate",
    "evaluate_variants", "linear", "load", "scale",
]
# ``reorder`` stays in ablate.interventions: ``ablate.reorder`` is the command module.
