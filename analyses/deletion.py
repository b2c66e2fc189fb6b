"""Single-unit deletion (Veit et al. 2016, section 4.1): delete one block at a time.

The measurement behind the ``delete_block`` experiment, shared with ``attribution`` (which sets
each block's attribution beside its deletion damage).

For every deleted unit: test error with a 95% Wilson interval, loss with a t interval, the change
against the intact network with a 95% paired (Agresti-Min) interval on the same images, the
discordant counts behind it, an exact McNemar test, and the per-image correctness of the deleted
and the intact net (packed bits) so that two networks can be compared image by image (Fig. 8).

Transformers can also lose one attention or MLP branch at a time (``branches=True``): those rows
have ``granularity`` "branch", the branch's index in ``blocks(model, "branch")`` as ``block``, and
its ``layer`` and ``branch`` ("attn", "mlp"); whole-block rows have ``granularity`` "block".
torchvision ViTs run their branches through the batched engine (``granularity="branch"``, bitwise
the interventions' outcome); other transformers one pass per branch through the interventions.

"Which blocks hurt" is read from McNemar's p after Holm's correction over a network's blocks;
"no noticeable change" needs an equivalence test (TOST) of the paired difference against a stated
margin: a non-significant p alone says nothing (see ``figures.report``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import pandas as pd

from ablate._infra.errors import UsageError
from ablate.data import Dataset
from ablate.interventions import delete
from ablate.interventions.variants import Variant, evaluate_variants
from ablate.measures import Outcome, evaluate, mcnemar_exact
from ablate.measures.stats import (
    discordant,
    pack_correct,
    paired_difference,
)
from ablate.models.blocks import Block, blocks, deletable_units
from ablate.models.checkpoint import Loaded
from ablate.models.transformers import TimmUnit, ViTBranch, is_transformer
from analyses.context import condition
from analyses.sweep import outcome_columns, resume, sweep
from analyses.table import Table

__all__ = ["KEY", "check_deletable", "deletable", "row", "run", "whole_blocks"]

KEY = ("model", "checkpoint_sha256", "dataset", "split", "n_images", "data_sha256", "granularity",
       "block")


def whole_blocks(df: pd.DataFrame) -> pd.DataFrame:
    """The rows that delete a whole unit (not a transformer's single branch)."""
    if "granularity" not in df.columns:
        return df
    return df[df["granularity"].fillna("block") != "branch"]


def deletable(loaded: Loaded) -> list[int]:
    """Units that can be deleted: every residual block, every shape-preserving plain unit."""
    return [b.index for b in deletable_units(loaded.model)]


def check_deletable(loaded: Loaded, indices: Sequence[int]) -> None:
    """Refuse shape-changing plain units up front, with the units that can be deleted."""
    units = blocks(loaded.model)
    for i in indices:
        if units[i].kind == "plain" and units[i].changes_shape:
            ok = deletable(loaded)
            raise UsageError(
                f"unit {i} ({units[i].name}) of {loaded.name} changes the feature shape and cannot "
                f"be deleted; deletable units are {_ranges(ok)}"
            )


def _ranges(idx: Sequence[int]) -> str:
    parts, start = [], None
    for a, b in zip([None, *idx], [*idx, None]):
        if start is None:
            start = b
        elif b is None or b != a + 1:
            parts.append(f"{start}" if start == a else f"{start}-{a}")
            start = b
    return ",".join(parts)


def row(base: dict, b: Block, out: Outcome, intact: Outcome, layer: int | None = None) -> dict:
    """One deleted unit's row: its outcome, the change against the intact net with a paired
    interval and McNemar's p, and both nets' per-image correctness (packed). ``b`` may be a
    transformer's branch (then ``layer`` is its layer's index)."""
    broken, fixed = discordant(out.correct, intact.correct)
    _, lo, hi = paired_difference(broken, fixed, len(out.correct))
    branch = getattr(b, "branch", None)
    where = {"granularity": "branch", "layer": layer, "branch": branch} if branch else {
        "granularity": "block"}
    return {
        **base, **where, "block": b.index, "block_name": b.name, "stage": b.stage,
        "downsample": b.changes_shape, "kind": b.kind, **outcome_columns(out),
        "intact_error": intact.error, "error_change": out.error - intact.error,
        "change_low": lo, "change_high": hi, "n_broken": broken, "n_fixed": fixed,
        "intact_loss": float(intact.loss.mean()),
        "p_value": mcnemar_exact(out.correct, intact.correct),
        "correct": pack_correct(out.correct.cpu().numpy()),
        "intact_correct": pack_correct(intact.correct.cpu().numpy()),
    }


def run(
    loaded: Loaded,
    ds: Dataset,
    *,
    indices: Sequence[int] | None = None,
    branches: bool = False,
    table: Table | None = None,
    batch_size: int = 256,
    max_rows: int | None = None,
    group: int = 16,
    progress: bool = True,
) -> pd.DataFrame:
    """Delete each unit in ``indices`` (default: all deletable) alone; rows for ``loaded``.
    ``branches``: a transformer also loses each attention and MLP branch alone (all of them).

    Rows already in ``table`` are not recomputed; new ones are added every ``group`` units. Under
    torchrun the groups are split across ranks and rank 0's table gets the rows.
    """
    table = Table(None, KEY) if table is None else table
    base = condition(loaded, ds)
    units = blocks(loaded.model)
    indices = deletable(loaded) if indices is None else sorted(set(indices))
    intact = functools.cache(lambda: evaluate(
        loaded.model, ds.images, ds.labels, batch_size=batch_size, progress=progress,
        desc=f"{loaded.name} intact", mean=loaded.mean, std=loaded.std))
    whole = sweep(loaded, ds, table, [{**base, "granularity": "block", "block": i}
                                      for i in indices],
                  lambda k: Variant.deleting(k["block"]),
                  lambda k, o: row(base, units[k["block"]], o, intact()),
                  lambda part: f"blocks {part[0]['block']}-{part[-1]['block']}",
                  group=group, batch_size=batch_size, max_rows=max_rows, progress=progress)
    if not (branches and is_transformer(loaded.model)):
        return whole
    parts = blocks(loaded.model, "branch")
    layer = {b.name: b.index for b in units}
    batched = all(isinstance(b, (ViTBranch, TimmUnit)) for b in parts)

    def measure(keys: list[dict]) -> list[dict]:
        """torchvision and timm ViTs: the batched engine over branches (bitwise the interventions);
        other transformers: the interventions themselves, one pass each."""
        bs = [parts[k["block"]] for k in keys]
        if batched:
            outs = evaluate_variants(
                loaded.model, ds.images, ds.labels, [Variant.deleting(b.index) for b in bs],
                mean=loaded.mean, std=loaded.std, batch_size=batch_size, max_rows=max_rows,
                progress=progress, desc=f"{loaded.name} {bs[0].name}..", granularity="branch")
        else:
            outs = []
            for b in bs:
                with delete(loaded.model, [b.index], granularity="branch"):
                    outs.append(evaluate(loaded.model, ds.images, ds.labels,
                                         batch_size=batch_size, progress=progress,
                                         desc=f"{loaded.name} {b.name}", mean=loaded.mean,
                                         std=loaded.std))
        return [{**k, **row(base, b, o, intact(), layer[b.layer])}
                for k, b, o in zip(keys, bs, outs)]

    single = resume(table, [{**base, "granularity": "branch", "block": b.index} for b in parts],
                    measure, what=f"{loaded.name} branches", group=group if batched else 2)
    return pd.concat([whole, single], ignore_index=True)
