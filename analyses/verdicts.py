"""What every verdict of REPRODUCTION.md shares: the finding record, the stated thresholds, and
the readers of the result tables.

A verdict is one of "reproduces", "does not reproduce", "partly", "computed" (exact arithmetic,
nothing measured), "not run", "new" (no published number) or, in REPRODUCTION.md while a step of
the plan has not finished, "in progress" (its table is partial). Each finding carries its criterion
in one line, applied to numbers read from ``results/<analysis>/``; the thresholds below are stated
once, before any table is read, and are not tuned to any result.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from ablate.measures.stats import unpack_correct

__all__ = [
    "ALPHA", "EQUIVALENCE_MARGIN", "HEALTHY_GRADIENT_RATIO", "HIGH_TAU", "MAX_HIGH_TAU_DAMAGE",
    "MONOTONE_TOLERANCE", "ONE_SEED", "UNITS", "Finding", "fig", "pct", "per_image_wrong", "read",
    "rho", "twins", "units",
]

ALPHA = 0.05  # family-wise (Holm) and per-test level
EQUIVALENCE_MARGIN = 0.01  # "no noticeable change": |error change| under 1 point, shown by TOST
HIGH_TAU = 0.9  # Fig. 5b: orders this close to the original must do bounded damage ...
MAX_HIGH_TAU_DAMAGE = 0.10  # ... a mean error increase of at most 10 points
HEALTHY_GRADIENT_RATIO = 0.1  # "vanishing": the gradient falls by an order of magnitude or more
MONOTONE_TOLERANCE = 0.02  # Fig. 5b: a lower-tau bin may sit at most 2 points below the one before
ONE_SEED = ("one training seed per network: the interval covers test-set noise only, not "
            "seed-to-seed variation")
UNITS = ("a unit is a residual block (two layers), a transformer block (an attention and an MLP "
         "branch) or a plain net's layer (one): k deleted units are not k deleted layers across "
         "families")


def units(family: str) -> str:
    """What one deletable unit of a ``family`` is, in the plural, for the report's sentences."""
    return {"plain": "plain layers",
            "vit": "transformer blocks (an attention and an MLP branch each)",
            "torchvision": "residual blocks (two or three layers each)"}.get(
        family, "residual blocks (two layers each)")


@dataclass
class Finding:
    section: str
    claim: str  # what the paper says (quoted or paraphrased, with its number)
    ours: str  # what we measured, from the tables
    verdict: str  # see the module docstring
    criterion: str  # one line, computed from the tables
    figure: str | None = None
    table: str | None = None  # the analysis whose table it reads, where not its own section's
    measured: str | None = None  # where, for evidence from outside the run (benchmarks, logs)


def read(root: Path, analysis: str) -> tuple[pd.DataFrame | None, dict]:
    d = root / "results" / analysis
    csv = d / "results.csv"
    meta = json.loads((d / "meta.json").read_text()) if (d / "meta.json").exists() else {}
    return (pd.read_csv(csv) if csv.exists() else None), meta


def fig(root: Path, analysis: str) -> str | None:
    pngs = sorted((root / "results" / analysis).glob("*.png"))
    return str(pngs[0].relative_to(root)) if pngs else None


def rho(a: pd.Series, b: pd.Series) -> float:
    """Spearman's rho, NaN when either side is constant or too short to rank."""
    if len(a) < 3 or a.nunique() < 2 or b.nunique() < 2:
        return float("nan")
    return float(stats.spearmanr(a, b).statistic)


def pct(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def per_image_wrong(d: pd.DataFrame, col: str = "correct") -> np.ndarray:
    """[rows, images] of bools: which images each row's condition gets wrong (packed bits)."""
    n = int(d["n_images"].iloc[0])
    return np.stack([~unpack_correct(t, n) for t in d[col]])


def twins(root: Path, models: list[str]) -> tuple[str, str] | None:
    """The two named networks compared by Huang et al. and Veit's Fig. 8: (constant depth,
    stochastic depth), from the reproduction plan, else a NAME / NAME-sd pair in ``models``."""
    run = json.loads((root / "run.json").read_text()) if (root / "run.json").exists() else {}
    plan = run.get("plan", {})
    sd = plan.get("stochastic")
    if isinstance(sd, list) and len(sd) == 2:  # the plan's (constant, stochastic) pair
        return sd[0], sd[1]
    if plan.get("resnet") and sd:  # plans written before the pair was named
        return plan["resnet"], sd
    for m in models:
        if f"{m}-sd" in models:
            return m, f"{m}-sd"
    return None
