"""What is measured on a model: per-image outcomes (:mod:`.outcomes`), intervals and paired tests
(:mod:`.stats`), and the path statistics of Veit et al. (:mod:`.paths`)."""

from ablate.measures.outcomes import Outcome, evaluate, outcome
from ablate.measures.stats import mcnemar_exact, mean_interval, wilson_interval

__all__ = [
    "Outcome", "evaluate", "mcnemar_exact", "mean_interval", "outcome", "wilson_interval",
]
