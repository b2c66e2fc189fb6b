"""The experiments, each declared once by its own module: ``EXPERIMENT = Experiment(...)``.

Like timm's ``@register_model``, nothing here lists names: :func:`experiments` imports every
module of the ``analyses`` package (and any module named in the ``ABLATE_EXPERIMENTS``
environment variable, comma-separated, or in the ``ablate.experiments`` entry-point group of an
installed package) and collects the ``Experiment`` each one declares. The command dispatcher
(``python -m ablate NAME``), ``reproduce``, the report and the README generator all read this.

An experiment's name is its command, its run folder (``runs/NAME``), its results folder
(``results/NAME``), its figure (``figures/NAME.py`` registers the plot under it) and its section
of the report.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from ablate.data import Dataset
    from ablate.models.checkpoint import Loaded
    from analyses.options import Base
    from analyses.plan import Plan, Settings
    from analyses.table import Table
    from analyses.verdicts import Finding

__all__ = ["Experiment", "Result", "experiments", "get", "names"]

ENV = "ABLATE_EXPERIMENTS"
ENTRY_POINTS = "ablate.experiments"


@dataclass
class Result:
    """What an experiment's ``measure`` hands back to the command that draws and writes it."""

    out: Path  # the results folder
    df: pd.DataFrame  # what the figure draws (also what ``results.csv`` holds, usually)
    meta: dict  # the experiment's own meta.json fields; provenance is added by the command
    loaded: Sequence[Loaded] = ()
    ds: Dataset | None = None
    table: Table | None = None  # the resumable table this invocation added to
    note: str | None = None  # the figure's caption (default: the data and its size if limited)
    summary: Callable[[], None] | None = None  # prints the result for the terminal
    results: Path | None = None  # the table to name at the end (default: out/results.csv)


@dataclass(frozen=True)
class Experiment:
    """One experiment: what it measures (``run``), its command (``Options`` -> ``measure``), what
    it judges (``verdicts``) and how ``reproduce`` runs it (``reproduce``).

    ``measure(options)`` loads models and data, runs the analysis into a resumable table and
    returns a :class:`Result`; ``reproduce(plan, settings)`` returns the options of the full or
    quick reproduction run (None: not run under this plan); ``verdicts(root)`` reads
    ``root/results/NAME`` and returns the report's findings.
    """

    name: str
    paper: str  # what it reproduces or extends, quoted in meta.json and ``--list``
    run: Callable[..., Any]  # the analysis, for Python users: measures one model
    key: tuple[str, ...] | None  # the columns a resumed table matches rows on (None: rebuilt)
    options: type[Base]  # the settings dataclass; its fields are the command's flags
    measure: Callable[[Any], Result]
    summary: str = ""  # one line for ``--list`` (default: the paper)
    order: int = 100  # place in reproduce's plan and the report (cheap steps first)
    verdicts: Callable[[Path], list[Finding]] | None = None
    section: Callable[[Path], list[str]] | None = None  # its own REPRODUCTION.md lines, if any
    reproduce: Callable[[Plan, Settings], Any] | None = None
    default_models: tuple[str, ...] = ("resnet20",)  # what runs when no --model is given
    demo_limit: int | None = None  # images of that default demo (None: all)
    reference: dict | None = None  # numbers quoted from the paper, never measured here
    module: str = field(default="", compare=False)  # where it was declared

    @property
    def line(self) -> str:
        return self.summary or self.paper


def _modules() -> list[str]:
    """Every module that may declare an experiment: the analyses package's, then the others."""
    import analyses

    own = [f"analyses.{m.name}" for m in pkgutil.iter_modules(analyses.__path__)
           if not m.name.startswith("_")]
    extra = [m.strip() for m in os.environ.get(ENV, "").split(",") if m.strip()]
    try:
        extra += [ep.value for ep in metadata.entry_points(group=ENTRY_POINTS)]
    except Exception:  # a broken installed distribution must not hide the built-in ones
        pass
    return list(dict.fromkeys([*own, *extra]))


def experiments() -> list[Experiment]:
    """Every declared experiment, in ``order`` (then name)."""
    found: dict[str, Experiment] = {}
    for name in _modules():
        mod = importlib.import_module(name)
        e = getattr(mod, "EXPERIMENT", None)
        if e is None:
            continue
        if not isinstance(e, Experiment):
            raise TypeError(f"{name}.EXPERIMENT is not an analyses.registry.Experiment")
        if e.name in found and found[e.name].module != name:
            raise ValueError(f"experiment {e.name!r} is declared twice: in "
                             f"{found[e.name].module} and {name}")
        found[e.name] = e if e.module else _with_module(e, name)
    return sorted(found.values(), key=lambda e: (e.order, e.name))


def _with_module(e: Experiment, module: str) -> Experiment:
    from dataclasses import replace

    return replace(e, module=module)


def names() -> list[str]:
    return [e.name for e in experiments()]


def get(name: str) -> Experiment:
    for e in experiments():
        if e.name == name:
            return e
    from ablate._infra.errors import UsageError

    raise UsageError(f"no experiment {name!r}: one of {', '.join(names())} "
                     "(python -m ablate --list)")
