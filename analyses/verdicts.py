"""What every verdict of REPRODUCTION.md shares: the finding record, the stated thresholds, the
verdict vocabulary, and the readers of the result tables.

A verdict states its criterion in one line, tests the unit the claim is about (blocks when the
claim is about blocks, the number of swaps when the tau bins mix them), and can fail. The words:

- "reproduces", "partly", "does not reproduce": a paper's claim, on the kind of network the paper
  used (:func:`scope`), meets its criterion in full, in part (one of its stated halves), or not;
- "inconclusive": the interval the criterion reads straddles its threshold, so the data cannot
  decide either way (prefixed like the others: "extension: inconclusive");
- "not comparable": measured and reported, but a stated precondition for setting it beside the
  paper's number fails (e.g. a training budget far below the paper's); never "does not
  reproduce";
- "extension: holds", "extension: partly", "extension: does not hold", "extension:
  inconclusive": a paper's claim tested on a network outside the paper's (the ViT, resnet56, a
  pruning paper's claim on an image net): what we learn beyond the paper, never a failed
  reproduction;
- "new: holds", "new: does not hold": a question no paper asks (attribution against lesions),
  judged by its stated criterion; "new" alone: described, not judged (no criterion applies);
- "computed" (exact arithmetic, nothing measured), "not run", and, in REPRODUCTION.md while a
  step of the plan has not finished, "in progress" (its table is partial).

The thresholds below are stated once, before any table is read, and are not tuned to any result.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from ablate.measures.stats import unpack_correct

__all__ = [
    "ALPHA", "EQUIVALENCE_MARGIN", "HEALTHY_GRADIENT_RATIO", "MAX_ONE_SWAP_DAMAGE", "MAX_STEP",
    "MIN_BUDGET_SHARE", "MIN_RANKED_UNITS", "ONE_SEED", "SMOOTH_RHO", "UNITS", "VEIT_K10_ERROR",
    "VEIT_K10_TOLERANCE", "VOCABULARY", "Finding", "budget", "card", "fig", "judged", "pct",
    "per_image_wrong", "points", "read", "rho", "scope", "share", "twins", "units",
]

ALPHA = 0.05  # family-wise (Holm) and per-test level
EQUIVALENCE_MARGIN = 0.01  # "no noticeable change": |error change| under 1 point, shown by TOST
SMOOTH_RHO = 0.9  # Figs. 5a/5b: "error rises with k": Spearman rho of the per-k means at least
MAX_ONE_SWAP_DAMAGE = 0.10  # Fig. 5b: one swap raises error by at most 10 points (no cliff) ...
MAX_STEP = 0.20  # Fig. 5a: ... nor does one more deleted block raise it by 20 points (95% bound)
VEIT_K10_ERROR = 0.20  # Fig. 5a: Veit's "around 0.2" error with 10 of 54 blocks deleted ...
VEIT_K10_TOLERANCE = 0.05  # ... read off a figure: within 5 points counts as the same size
HEALTHY_GRADIENT_RATIO = 0.1  # He et al.: first/last unit's gradient within [0.1, 10]: neither
# vanishing nor exploding by an order of magnitude or more
MIN_RANKED_UNITS = 5  # a rank test over fewer units is refused: with 4, only the one perfect
# order of 24 reaches p < 0.05, so a single unit decides it; with 5 a near-perfect order can
MIN_BUDGET_SHARE = 0.5  # an absolute-error claim is compared only for nets trained for at least
# half the paper's epochs (Huang et al.'s first learning-rate drop, at 250 of 500)
ONE_SEED = ("one training seed per network: the interval covers test-set noise only, not "
            "seed-to-seed variation")
UNITS = ("a unit is a residual block (two layers), a transformer block (an attention and an MLP "
         "branch) or a plain net's layer (one): k deleted units are not k deleted layers across "
         "families")


VOCABULARY = (
    "Verdicts: \"reproduces\" / \"partly\" / \"does not reproduce\" judge a paper's claim on "
    "the kind of network the paper used; \"extension: holds / partly / does not hold\" the same "
    "claim on a network outside the paper's (the ViT, resnet56): never a failed reproduction; "
    "\"new: ...\" a question no paper asks; \"inconclusive\": the interval straddles the "
    "threshold; \"not comparable\": measured, but a stated precondition for comparing with "
    "the paper's number fails (e.g. the training budget); \"computed\": exact arithmetic.")

# The networks each paper's claims were made on (see REFERENCES.md), by architecture. Veit et
# al.: a 110-layer CIFAR ResNet (and its stochastic-depth twin, same architecture) and a plain
# VGG-style comparator (any of our plain nets stands for it); He et al.'s degradation: their
# CIFAR plain and residual nets of 20-110 layers (Sec. 4.2); He et al.'s gradient norms: ImageNet
# plain nets (Sec. 4.1), so every CIFAR net is an extension there; Huang et al.: ResNet-110.
_PAPER_ARCHS = {
    "veit": ("resnet110",),
    "he_cifar": ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "plain20",
                 "plain32", "plain44", "plain56", "plain110"),
    "he_imagenet": (),
    "huang": ("resnet110",),
    "pruning": (),  # ShortGPT, Gromov et al.: language models
}


def card(model: str) -> dict:
    """The bundled card of ``model`` ({} for a network that is not bundled)."""
    from ablate.models import checkpoint

    try:
        path = checkpoint.bundled_dir() / f"{model}.json"
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def scope(model: str, paper: str, family: str | None = None) -> str:
    """"paper" when ``model`` is (an architecture of) the network ``paper`` made its claim on,
    else "extension". Plain nets stand for Veit's plain comparator."""
    # its card's architecture; an unbundled name without its stochastic-depth token
    arch = card(model).get("arch") or re.sub(r"[-_](sd|stochastic)$", "", model)
    if paper == "veit" and family == "plain":
        return "paper"
    return "paper" if arch in _PAPER_ARCHS[paper] else "extension"


_PAPER_WORDS = {"holds": "reproduces", "partly": "partly", "does not hold": "does not reproduce",
                "inconclusive": "inconclusive"}


def judged(outcome: str, where: str) -> str:
    """The verdict word for ``outcome`` ("holds", "partly", "does not hold", "inconclusive")
    of a claim tested in ``where`` ("paper", "extension" or "new")."""
    if outcome not in _PAPER_WORDS:
        raise ValueError(f"unknown outcome {outcome!r}")
    return _PAPER_WORDS[outcome] if where == "paper" else f"{where}: {outcome}"


def budget(models: dict[str, int]) -> str:
    """How long each bundled network of ``models`` (name -> the paper's epochs for it) trained,
    and its final train error (as trained, regularisers on) from its log: the confound beside a
    comparison of a short run with the paper's. "" when none is bundled."""
    from ablate.models import checkpoint

    parts = []
    for m, paper_epochs in models.items():
        c = card(m)
        if not c.get("epochs"):
            continue
        text = f"{m} trained {int(c['epochs'])} epochs (the paper's: {paper_epochs})"
        log = checkpoint.bundled_dir() / str(c.get("log") or "")
        if c.get("log") and log.is_file():
            df = pd.read_csv(log)
            if "train_error" in df and len(df):
                text += f", final train error {pct(float(df['train_error'].iloc[-1]))}"
        parts.append(text)
    return "; ".join(parts)


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


def share(x: float | None) -> str:
    """A share in percent with two significant digits however small (0.027%, not 0.0%)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    v = 100 * float(x)
    if v == 0 or abs(v) >= 1:
        return f"{v:.1f}%"
    return f"{v:.{1 - math.floor(math.log10(abs(v)))}f}%"


def points(x: float, digits: int = 2, sign: bool = True) -> str:
    """A difference of two error rates in points, rounded half away from zero after removing
    binary noise (a median of 0.205 points prints +0.21, not +0.20)."""
    if x is None or math.isnan(x):
        return "n/a"
    v = Decimal(repr(round(100 * float(x), 10))).quantize(Decimal(1).scaleb(-digits),
                                                           rounding=ROUND_HALF_UP)
    return f"{v:+}" if sign else f"{v}"


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
