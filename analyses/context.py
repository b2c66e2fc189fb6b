"""The columns that say which model and data a row was measured on."""

from __future__ import annotations

from ablate.data import Dataset
from ablate.models.checkpoint import Loaded

__all__ = ["family", "condition", "data_meta"]


def family(loaded: Loaded) -> str:
    """resnet | plain | preact | stochastic_depth | torchvision, from the card and architecture."""
    if (loaded.card.get("arch_kwargs") or {}).get("stochastic_depth") is not None:
        return "stochastic_depth"
    arch = loaded.arch
    if arch.startswith("plain"):
        return "plain"
    if arch.startswith("preact"):
        return "preact"
    if arch.startswith("vgg") or arch in ("resnet18", "resnet34", "resnet50", "resnet101",
                                          "resnet152"):
        return "torchvision"
    return "resnet"


def condition(loaded: Loaded, ds: Dataset) -> dict:
    """Identifying columns shared by every row measured on ``loaded`` over ``ds``."""
    return {
        "model": loaded.name,
        "family": family(loaded),
        "checkpoint_sha256": loaded.sha256 or "none",
        "dataset": ds.name,
        "split": ds.split,
        "n_images": len(ds),
        "num_classes": len(ds.classes),
    }


def data_meta(ds: Dataset, limit: int | None) -> dict:
    return {
        "name": ds.name, "split": ds.split, "source": ds.source, "n_images": len(ds),
        "classes": list(ds.classes), "limited_to": limit,
    }
