"""What is measured on a model: per-image outcomes (:mod:`.outcomes`) and the path statistics of
Veit et al. (:mod:`.paths`)."""

from ablate.measures.outcomes import (
    Outcome,
    evaluate,
    mcnemar_exact,
    mean_interval,
    outcome,
    resolve_device,
    wilson_interval,
)

__all__ = [
    "Outcome", "evaluate", "mcnemar_exact", "mean_interval", "outcome", "resolve_device",
    "wilson_interval",
]
