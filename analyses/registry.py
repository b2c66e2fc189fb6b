"""The experiments, by their one name: the command, run folder, analysis, figure, results folder
and report section all use it. ``ablate._experiments`` joins each with its figure and command;
``python -m ablate.reproduce`` and ``figures.report`` walk this list in this order."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from analyses import (
    attribution,
    degradation,
    delete_block,
    drop_blocks,
    gradnorm,
    paths,
    redundancy,
    reorder_blocks,
    training_curves,
)

__all__ = ["EXPERIMENTS", "Experiment", "get", "names"]


@dataclass(frozen=True)
class Experiment:
    """One experiment: ``python -m ablate.<name>`` writes ``results/<name>/`` and ``<name>.pdf``."""

    name: str
    paper: str  # what it reproduces, quoted in meta.json
    run: Callable  # the analysis: measures one model, rows into a resumable table
    key: tuple[str, ...] | None  # the columns a resumed run matches rows on (None: not resumable)
    reference: dict | None = None  # numbers quoted from the paper, never measured here


EXPERIMENTS: tuple[Experiment, ...] = (
    Experiment("delete_block", "Veit et al. 2016, Figs. 3 and 8", delete_block.run,
               delete_block.KEY),
    Experiment("drop_blocks", "Veit et al. 2016, Fig. 5a", drop_blocks.run, drop_blocks.KEY),
    Experiment("reorder_blocks", "Veit et al. 2016, Fig. 5b", reorder_blocks.run,
               reorder_blocks.KEY),
    Experiment("paths", "Veit et al. 2016, section 5, Fig. 6", paths.run, paths.KEY,
               paths.REFERENCE),
    Experiment("gradnorm", "He et al. 2015, Sec. 4.1 (no vanishing gradients with BN)",
               gradnorm.run, gradnorm.KEY),
    Experiment("attribution", "Veit et al. 2016 (lesion) vs captum attributions",
               attribution.run, attribution.KEY),
    Experiment("redundancy", "Men et al. 2024 (Block Influence) and Gromov et al. 2024 "
               "(angular distance) against measured deletion damage", redundancy.run,
               redundancy.KEY),
    Experiment("degradation", "He et al. 2015, Fig. 6 and Table 6 (degradation)",
               degradation.run, degradation.KEY),
    Experiment("training_curves", "Huang et al. 2016, Fig. 7", training_curves.read_logs, None),
)


def names() -> list[str]:
    return [e.name for e in EXPERIMENTS]


def get(name: str) -> Experiment:
    for e in EXPERIMENTS:
        if e.name == name:
            return e
    raise KeyError(f"no experiment {name!r}: one of {', '.join(names())}")
