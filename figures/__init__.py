"""Paper figures, drawn only from tidy results tables (never from models).

``figures/NAME.py`` registers the plot of experiment NAME with ``@register("NAME")``; the
commands find it with :func:`plot_for`, which imports every module of this package (and any
named in the ``ABLATE_FIGURES`` environment variable, comma-separated) once.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from collections.abc import Callable

__all__ = ["register", "plot_for", "plots"]

ENV = "ABLATE_FIGURES"
_PLOTS: dict[str, Callable] = {}


def register(name: str) -> Callable[[Callable], Callable]:
    """Decorator: ``plot(df, *, note=None) -> Figure`` draws experiment ``name``'s table."""

    def deco(fn: Callable) -> Callable:
        _PLOTS[name] = fn
        return fn

    return deco


def _discover() -> None:
    own = [f"figures.{m.name}" for m in pkgutil.iter_modules(__path__)
           if not m.name.startswith("_")]
    extra = [m.strip() for m in os.environ.get(ENV, "").split(",") if m.strip()]
    for mod in dict.fromkeys([*own, *extra]):
        importlib.import_module(mod)


def plots() -> dict[str, Callable]:
    """Every registered plot, by experiment name."""
    _discover()
    return dict(_PLOTS)


def plot_for(name: str) -> Callable | None:
    """The plot registered for experiment ``name``, or None."""
    return plots().get(name)
