"""Where an experiment meets its figure and its command (the library never imports figures/;
analyses/ never does either): the one table of plot functions and ``main`` functions, read by
``_cli.write_outputs`` and ``python -m ablate.reproduce``. Imported only when needed."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import figures.attribution
import figures.degradation
import figures.delete_block
import figures.drop_blocks
import figures.gradnorm
import figures.paths
import figures.redundancy
import figures.reorder_blocks
import figures.training_curves
from analyses.registry import names

__all__ = ["PLOTS", "commands"]

PLOTS: dict[str, Callable] = {
    "delete_block": figures.delete_block.plot,
    "drop_blocks": figures.drop_blocks.plot,
    "reorder_blocks": figures.reorder_blocks.plot,
    "paths": figures.paths.plot,
    "gradnorm": figures.gradnorm.plot,
    "attribution": figures.attribution.plot,
    "redundancy": figures.redundancy.plot,
    "degradation": figures.degradation.plot,
    "training_curves": figures.training_curves.plot,
}
assert list(PLOTS) == names(), "every experiment has one figure, in the registry's order"


def commands() -> dict[str, Callable[[Sequence[str]], int]]:
    """Each experiment's ``python -m ablate.<name>`` entry point, by name."""
    from ablate import (
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

    out = {"delete_block": delete_block.main, "drop_blocks": drop_blocks.main,
           "reorder_blocks": reorder_blocks.main, "paths": paths.main, "gradnorm": gradnorm.main,
           "attribution": attribution.main, "redundancy": redundancy.main,
           "degradation": degradation.main,
           "training_curves": training_curves.main}
    assert list(out) == names(), "every experiment has one command, in the registry's order"
    return out
