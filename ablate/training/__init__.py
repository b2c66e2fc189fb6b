"""Training CIFAR ResNets and plain nets (He et al. 2015; Huang et al. 2016).

- :mod:`.config`: ``Recipe``, ``lr_at`` (a pure function), ``TrainConfig`` with ``validate()``;
- :mod:`.loop`: one epoch on device-resident uint8 data, and the per-epoch evaluation;
- :mod:`.state`: ``last.pt``, the resumable state; :mod:`.card`: the checkpoint card;
- :mod:`.run`: ``train(config)``, one run from setup to the final checkpoint.
"""

from ablate.training.config import Recipe, TrainConfig, lr_at, make_recipe, paper_recipe
from ablate.training.run import train

__all__ = ["Recipe", "TrainConfig", "lr_at", "make_recipe", "paper_recipe", "train"]
