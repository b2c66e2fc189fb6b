"""He et al. 2015 (Fig. 6, Table 6): the degradation problem. Test error by depth of plain nets
against ResNets of the same depths, on the same test images.

Per network one row: its depth, test error with a 95% Wilson interval, loss with a t interval and
the per-image correctness (packed bits). :func:`compare` pairs the rows afterwards, on the same
images: plain-n against ResNet-n at every depth, and within each family the deepest net against
the shallowest, each as a paired difference with a 95% (Agresti-Min) interval and an exact
McNemar p. Degradation is plain error rising with depth while ResNet error falls.
"""

from __future__ import annotations

import re

import pandas as pd
import torch

from ablate.data import Dataset
from ablate.measures import evaluate, mcnemar_exact
from ablate.measures.stats import discordant, pack_correct, paired_difference, unpack_correct
from ablate.models.checkpoint import Loaded
from analyses.context import condition
from analyses.sweep import outcome_columns, resume
from analyses.table import Table

__all__ = ["KEY", "compare", "depth", "pair", "run"]

KEY = ("model", "checkpoint_sha256", "dataset", "split", "n_images", "data_sha256")
COMPARED = ("resnet", "plain")  # the families He et al. compare


def depth(arch: str) -> int:
    """Weight layers of a CIFAR net from its architecture name (``plain56`` -> 56), else 0."""
    m = re.search(r"(\d+)$", arch)
    return int(m.group(1)) if m else 0


def run(loaded: Loaded, ds: Dataset, *, table: Table | None = None, batch_size: int = 256,
        progress: bool = True) -> pd.DataFrame:
    """Evaluate ``loaded`` once on ``ds`` (reusing its row in ``table`` if already measured)."""
    table = Table(None, KEY) if table is None else table
    base = condition(loaded, ds)

    def measure(keys: list[dict]) -> list[dict]:
        out = evaluate(loaded.model, ds.images, ds.labels, batch_size=batch_size,
                       progress=progress, desc=loaded.name, mean=loaded.mean, std=loaded.std)
        return [{**base, "arch": loaded.arch, "depth": depth(loaded.arch), **outcome_columns(out),
                 "correct": pack_correct(out.correct.cpu().numpy())} for _ in keys]

    return resume(table, [base], measure, what=loaded.name)


def _wrong(r: pd.Series) -> torch.Tensor:
    return torch.from_numpy(unpack_correct(r["correct"], int(r["n_images"])))


def pair(a: pd.Series, b: pd.Series) -> dict:
    """Network ``a`` against ``b`` on the same images: error_a - error_b with its 95% paired
    interval, the discordant counts and McNemar's exact p."""
    ca, cb = _wrong(a), _wrong(b)
    only_a, only_b = discordant(ca, cb)
    diff, lo, hi = paired_difference(only_a, only_b, int(a["n_images"]))
    return {"a": a["model"], "b": b["model"], "error_a": float(a["error"]),
            "error_b": float(b["error"]), "difference": diff, "difference_low": lo,
            "difference_high": hi, "only_a_wrong": only_a, "only_b_wrong": only_b,
            "p_value": mcnemar_exact(ca, cb)}


def compare(df: pd.DataFrame) -> pd.DataFrame:
    """The paired contrasts of a degradation table (rows of one data set): ``plain-n vs
    resnet-n`` at every depth with both, and ``deepest vs shallowest`` within each family."""
    df = df[df.family.isin(COMPARED)].sort_values("depth")
    if df.data_sha256.nunique() > 1:
        raise ValueError("the degradation table mixes data sets: filter to one before pairing")
    rows = []
    for d, g in df.groupby("depth"):
        fams = {r.family: r for _, r in g.iterrows()}
        if set(COMPARED) <= set(fams):
            rows.append({"contrast": "plain vs resnet", "depth": int(d),
                         **pair(fams["plain"], fams["resnet"])})
    for fam in COMPARED:
        g = df[df.family == fam]
        if g.depth.nunique() >= 2:
            rows.append({"contrast": f"{fam}: deepest vs shallowest", "depth": int(g.depth.max()),
                         **pair(g.iloc[-1], g.iloc[0])})
    return pd.DataFrame(rows)
