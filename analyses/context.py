"""The columns that say which model and data a row was measured on."""

from __future__ import annotations

from ablate import models
from ablate.data import Dataset
from ablate.models.checkpoint import Loaded

__all__ = ["condition", "data_meta"]


def condition(loaded: Loaded, ds: Dataset) -> dict:
    """Identifying columns shared by every row measured on ``loaded`` over ``ds``."""
    return {
        "model": loaded.name,
        "family": models.family(loaded, default="resnet"),
        "checkpoint_sha256": loaded.sha256 or "none",
        "weights_source": loaded.source,
        "dataset": ds.name,
        "split": ds.split,
        "n_images": len(ds),
        "num_classes": len(ds.classes),
        "data_sha256": ds.fingerprint,
    }


def data_meta(ds: Dataset, limit: int | None) -> dict:
    return {
        "name": ds.name, "split": ds.split, "source": ds.source, "n_images": len(ds),
        "classes": list(ds.classes), "limited_to": limit, "sha256": ds.fingerprint,
    }
