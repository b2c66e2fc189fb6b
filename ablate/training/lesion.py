"""Lesions during training: every single-block deletion, measured at chosen epochs of a run.

At each scheduled epoch the trainer deletes every deletable unit alone (``models.blocks``'
residual blocks and shape-keeping plain units) with the batched engine
(``interventions.evaluate_variants``) on a fixed evaluation set, and appends one row per unit to
``lesions.csv`` in the run folder: the deleted net's error and loss, the change against the intact
net on the same images with a paired (Agresti-Min) interval, the discordant counts and McNemar's
exact p. No weight file per epoch is kept: the table is the record.

- The evaluation set is ``lesion_set``: the first ``n // classes`` test images of every class, in
  the test split's order (1,000 images of CIFAR-10: 100 per class), the same for every run.
- Epoch 0 is the network at initialisation; epoch e is the weights after e epochs of training.
- ``lesions.csv`` is rewritten atomically after each pass. On resume from ``last.pt`` after epoch
  e, rows of later epochs (a future that was not kept) are dropped and a scheduled epoch e
  missing from the table is measured from the resumed weights, which are that epoch's: no row is
  lost or written twice.
"""

from __future__ import annotations

import csv
import io
import math
import re
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ablate._infra.errors import UsageError
from ablate._infra.io import write_text
from ablate.interventions.variants import Variant, evaluate_variants
from ablate.measures import evaluate, mcnemar_exact
from ablate.measures.stats import discordant, paired_difference
from ablate.models.blocks import deletable_units
from ablate.training.config import Recipe, milestone_epochs

__all__ = [
    "AUTO", "COLUMNS", "TABLE", "lesion_rows", "lesion_set", "parse_lesion_at", "read_table",
    "write_table",
]

TABLE = "lesions.csv"
# The default schedule (``--lesion-at auto``): the first epochs and a Fibonacci spacing (where the
# network changes fastest), every 10th epoch (for the heat map), the epochs on either side of each
# learning-rate drop, and the last epoch.
AUTO = "0,1,2,3,5,8,13,21,34,55,89,144,every:10,drops,last"
COLUMNS = (
    "epoch", "block", "block_name", "stage", "downsample", "n_images", "errors", "error",
    "loss", "intact_error", "intact_loss", "error_change", "change_low", "change_high",
    "n_broken", "n_fixed", "p_value", "seconds",
)
_INT = {"epoch", "block", "stage", "n_images", "errors", "n_broken", "n_fixed"}
_BOOL = {"downsample"}
_STR = {"block_name"}


def parse_lesion_at(spec: str | None, recipe: Recipe) -> tuple[int, ...]:
    """The epochs (0 = at initialisation) named by ``spec``: comma-separated epochs and the words
    ``every:N`` (every Nth epoch), ``drops`` (the last epoch before and the first after each
    learning-rate drop of a step schedule), ``last`` and ``auto`` (``AUTO``); "none" or None: ()."""
    if spec is None or str(spec).strip().lower() in ("", "none", "off"):
        return ()
    total, epochs = recipe.epochs, set()
    for item in str(spec).replace("auto", AUTO).split(","):
        item = item.strip().lower()
        if re.fullmatch(r"\d+", item):
            epochs.add(int(item))
        elif m := re.fullmatch(r"every:(\d+)", item):
            if int(m.group(1)) < 1:
                raise UsageError(f"--lesion-at {item}: N must be at least 1")
            epochs.update(range(0, total + 1, int(m.group(1))))
        elif item == "drops":
            if recipe.schedule != "cosine":  # a drop at 0-based epoch d: epochs d and d + 1
                epochs.update(e for d in milestone_epochs(recipe) for e in (d, d + 1))
        elif item == "last":
            epochs.add(total)
        else:
            raise UsageError(f"--lesion-at: cannot read {item!r}; use epochs and every:N, drops, "
                             f"last or auto, e.g. --lesion-at 0,1,2,every:10,drops")
    return tuple(sorted(e for e in epochs if 0 <= e <= total))


def lesion_set(labels: Tensor, n: int) -> Tensor:
    """Indices of a class-balanced evaluation set: the first ``n // classes`` images of each class
    in the split's order (fewer where a class has fewer), sorted."""
    classes = torch.unique(labels)
    if n < len(classes):
        raise UsageError(f"--lesion-images {n} is fewer than one image per class "
                         f"({len(classes)} classes)")
    per = n // len(classes)
    idx = [torch.nonzero(labels.cpu() == c).flatten()[:per] for c in classes]
    return torch.cat(idx).sort().values


def lesion_rows(
    net: nn.Module, images: Tensor, labels: Tensor, *, epoch: int, mean: Sequence[float],
    std: Sequence[float], batch_size: int = 250,
) -> list[dict]:
    """Delete every deletable unit of ``net`` alone on ``images``; one row per unit (``COLUMNS``).

    The same numbers as ``python -m ablate.delete_block`` on these weights and images: the same
    engine, intervals and test.
    """
    t0 = time.perf_counter()
    units = deletable_units(net)
    norm = {"mean": mean, "std": std}
    intact = evaluate(net, images, labels, batch_size=batch_size, **norm)
    outs = evaluate_variants(net, images, labels, [Variant.deleting(u.index) for u in units],
                             batch_size=batch_size, progress=False, **norm)
    seconds = time.perf_counter() - t0
    rows = []
    for u, o in zip(units, outs, strict=True):
        broken, fixed = discordant(o.correct, intact.correct)
        change, lo, hi = paired_difference(broken, fixed, o.n)
        rows.append({
            "epoch": epoch, "block": u.index, "block_name": u.name, "stage": u.stage,
            "downsample": u.changes_shape, "n_images": o.n, "errors": o.errors,
            "error": o.error, "loss": float(o.loss.double().mean()),
            "intact_error": intact.error, "intact_loss": float(intact.loss.double().mean()),
            "error_change": change, "change_low": lo, "change_high": hi,
            "n_broken": broken, "n_fixed": fixed,
            "p_value": mcnemar_exact(o.correct, intact.correct), "seconds": seconds,
        })
    return rows


def read_table(path: Path) -> list[dict]:
    """The rows of a ``lesions.csv`` (typed), or [] when there is none."""
    if not path.exists():
        return []
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if tuple(reader.fieldnames or ()) != COLUMNS:
                raise ValueError("unexpected columns")
            return [{k: _typed(k, v) for k, v in r.items()} for r in reader]
    except (ValueError, OSError, csv.Error) as e:
        raise UsageError(f"{path} is not a lesion table ({e}); move it aside to measure the "
                         "lesions anew") from None


def _typed(k: str, v: str) -> object:
    if k in _STR:
        return v
    if k in _BOOL:
        if v not in ("True", "False"):
            raise ValueError(f"{k}={v!r}")
        return v == "True"
    x = float(v)
    if k in _INT:
        if not x.is_integer():
            raise ValueError(f"{k}={v!r}")
        return int(x)
    return x if math.isfinite(x) or k == "p_value" else float("nan")


def _cell(v: object) -> object:
    """Floats (numpy's too) as the shortest text that reads back to the same float."""
    if isinstance(v, (bool, str)):
        return v
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    return int(v) if isinstance(v, (int, np.integer)) else v


def write_table(path: Path, rows: list[dict]) -> None:
    """Write all rows, sorted by (epoch, block), atomically."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in sorted(rows, key=lambda r: (r["epoch"], r["block"])):
        w.writerow({k: _cell(v) for k, v in r.items()})
    write_text(path, buf.getvalue())
