"""ablate: take trained residual and plain networks apart.

Interventions are context managers that change a model inside a ``with`` block and restore it
exactly on exit::

    import ablate
    net = ablate.load("resnet20")            # a bundled checkpoint, or load(checkpoint=PATH)
    with ablate.delete(net.model, [4]):
        ...                                  # block 4 is gone here, and back afterwards
    lm = ablate.load("smollm2-135m")         # a language model (the lm extra): load_lm

The library lives in the sub-packages (models, data, interventions, measures, training); every
top-level module besides this one is a ``python -m ablate.<command>`` (see ARCHITECTURE.md).
"""

from ablate.interventions import Variant, delete, drop, evaluate_variants, linear, reorder, scale
from ablate.measures import evaluate
from ablate.models import create
from ablate.models.blocks import Block, blocks, chain
from ablate.models.checkpoint import Loaded
from ablate.models.language import LoadedLM, load, load_lm

__version__ = "0.1.0"

__all__ = [
    "Block", "Loaded", "LoadedLM", "Variant", "blocks", "chain", "create", "delete", "drop",
    "evaluate", "evaluate_variants", "linear", "load", "load_lm", "reorder", "scale",
]
