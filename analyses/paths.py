"""Veit et al. 2016, section 5 (Fig. 6): the distribution of path lengths, the gradient a single
path of each length carries, and the total gradient per length with its effective range.

Gradient magnitudes are measured (expensive, resumable, in a :class:`Table`); the path-length
distribution, the stochastic-depth active-depth distribution and the total gradient are derived
from them in :func:`derived`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import stats
from tqdm.auto import tqdm

from ablate._infra.errors import UsageError
from ablate.data import Dataset, normalize
from ablate.measures import paths as ps
from ablate.measures.paths import residual_blocks
from ablate.measures.stats import log_cluster_mean_interval
from ablate.models.checkpoint import Loaded
from analyses import command
from analyses.context import condition
from analyses.options import Images, flag
from analyses.plan import Plan, Settings, n_blocks
from analyses.registry import Experiment, Result
from analyses.sweep import resume
from analyses.table import Table
from analyses.verdicts import (
    Finding,
    fig,
    judged,
    pct,
    read,
    scope,
    share,
)

__all__ = ["EXPERIMENT", "KEY", "REFERENCE", "derived", "run", "summary", "survival"]

KEY = ("model", "checkpoint_sha256", "dataset", "split", "n_images", "data_sha256", "samples",
       "seed", "at", "k")

REFERENCE = {
    "source": "quoted from Veit, Wilber, Belongie 2016, section 5 and Fig. 6 (ResNet-110 on "
              "CIFAR-10, 54 blocks); not measured here",
    "n_blocks": 54,
    "effective_range": [5, 17],
    "effective_range_share_of_paths": 0.0045,
    "abstract": "most gradient comes from paths 10-34 layers deep",
    "lengths_19_35_share_of_paths": 0.98,
}


def survival(loaded: Loaded) -> list[float]:
    """Survival probability of each residual block (1.0 where the block has none)."""
    return [float(getattr(b.module, "survival", 1.0)) for b in ps.residual_blocks(loaded.model)]


def _seed(seed: int, k: int) -> int:
    return seed * 100_003 + k


def run(
    loaded: Loaded,
    ds: Dataset,
    *,
    ks: Sequence[int] | None = None,
    samples: int = 32,
    seed: int = 0,
    at: str = "input",
    table: Table | None = None,
    batch_size: int = 256,
    progress: bool = True,
) -> pd.DataFrame:
    """Gradient magnitude of single paths of each length in ``ks`` (default all 0..n).

    For each k, every image gets ``samples`` random k-subsets of blocks (drawn from a generator
    seeded by (seed, k), independent of the batch size); one row per (k, tap) holds the mean
    gradient norm over images x sets with a t interval clustered by image (an image's sets are
    not independent of each other), built on a log scale (the magnitudes span tens of orders:
    a linear interval reaches below zero). Norms are accumulated in float64 (in float32 the sum
    of squares of ~1e-24 elements underflows to 0). Rows already in ``table`` are reused.
    """
    table = Table(None, KEY) if table is None else table
    n = len(ps.residual_blocks(loaded.model))
    ks = list(range(n + 1)) if ks is None else sorted(set(ks))
    base = {**condition(loaded, ds), "samples": samples, "seed": seed, "at": at}
    device = next(loaded.model.parameters()).device
    dtype = next(loaded.model.parameters()).dtype
    labels = ds.labels.repeat(samples)
    bar = tqdm(total=len(table.missing([{**base, "k": k} for k in ks])), leave=False,
               desc=f"{loaded.name} path lengths", disable=not progress)

    def measure(part: list[dict]) -> list[dict]:
        k = part[0]["k"]
        gen = torch.Generator().manual_seed(_seed(seed, k))
        masks = ps.random_subsets(n, k, samples * len(ds), gen)
        norms: dict[str, list[torch.Tensor]] = {}
        for i in range(0, len(masks), batch_size):
            idx = torch.arange(i, min(i + batch_size, len(masks))) % len(ds)
            x = normalize(ds.images[idx].to(device), loaded.mean, loaded.std).to(dtype)
            g = ps.masked_gradients(loaded.model, x, labels[i:i + batch_size].to(device),
                                    masks[i:i + batch_size].to(device), at=at)
            for key, v in g.items():
                # float64 before squaring: a float32 sum of squares of ~1e-24 elements is 0
                norms.setdefault(key, []).append(v.flatten(1).double().norm(dim=1).cpu())
        rows = []
        for key, parts in norms.items():
            v = torch.cat(parts).numpy()
            mean, lo, hi = log_cluster_mean_interval(v, np.arange(v.size) % len(ds))
            rows.append({**part[0], "tap": key, "kind": "gradient_magnitude",
                         "value": mean, "low": lo, "high": hi, "n_values": v.size,
                         "n_blocks": n})
        bar.update()
        return rows

    with bar:
        got = resume(table, [{**base, "k": k} for k in ks], measure, what=loaded.name)
    return got.sort_values(["tap", "k"], kind="stable").reset_index(drop=True)


def derived(loaded: Loaded, ds: Dataset, grad: pd.DataFrame, mass: float = 0.9) -> pd.DataFrame:
    """Path-length distribution, active-depth distribution (stochastic depth only) and the total
    gradient per length (from the magnitudes at the input, log-interpolated between measured k),
    as tidy rows; the total gradient's rows mark the effective range in ``in_range``."""
    n = len(ps.residual_blocks(loaded.model))
    base = condition(loaded, ds)
    lengths = np.arange(n + 1)
    rows = [{**base, "k": int(k), "kind": "path_fraction", "value": float(v), "n_blocks": n}
            for k, v in zip(lengths, ps.length_distribution(n))]
    surv = survival(loaded)
    if any(p < 1.0 for p in surv):
        rows += [{**base, "k": int(k), "kind": "active_depth", "value": float(v), "n_blocks": n}
                 for k, v in zip(lengths, ps.poisson_binomial(surv))]
    g = grad[grad["tap"] == "input"].sort_values("k")
    if len(g) >= 2:
        mag = ps.log_interpolate(g["k"], g["value"], n)
        total = ps.total_gradient(ps.path_counts(n, log=True), mag)
        r = ps.effective_range(total, mass)
        measured = set(g["k"].astype(int))
        rows += [{**base, "k": int(k), "kind": "total_gradient", "value": float(v),
                  "interpolated": int(k) not in measured, "in_range": r.lo <= k <= r.hi,
                  "n_blocks": n} for k, v in zip(lengths, total)]
    return pd.DataFrame(rows)


def summary(df: pd.DataFrame, mass: float = 0.9) -> dict:
    """Effective range, its share of paths and the log-linear decay of the magnitude per model."""
    out = {}
    for model, d in df.groupby("model", sort=False):
        t = d[d["kind"] == "total_gradient"].sort_values("k")
        g = d[(d["kind"] == "gradient_magnitude") & (d["tap"] == "input")].sort_values("k")
        slope, factor = ps.fit_slope(g["k"], g["value"])
        entry = {"n_blocks": int(d["n_blocks"].iloc[0]), "log10_slope_per_block": slope,
                 "factor_per_block": factor, "measured_k": g["k"].astype(int).tolist()}
        if not t.empty:
            paths = d[d["kind"] == "path_fraction"].sort_values("k")["value"].to_numpy()
            r = ps.effective_range(t["value"].to_numpy(), mass, paths)
            entry |= {"effective_range": [r.lo, r.hi], "gradient_mass": r.mass,
                      "share_of_paths": r.paths,
                      "mode_length": int(t["k"].to_numpy()[t["value"].to_numpy().argmax()])}
        out[str(model)] = entry
    return out


# --- Verdicts (the report's findings, read from results/<name>/) ---


_VEIT_RANGE = REFERENCE["effective_range"]


def _fig6a(model: str, n: int, fig_: str | None) -> Finding:
    lo, hi = math.floor(n / 2 - 0.3 * n / 2), math.ceil(n / 2 + 0.3 * n / 2)
    share = stats.binom.cdf(hi, n, 0.5) - stats.binom.cdf(lo - 1, n, 0.5)
    veit = stats.binom.cdf(35, 54, 0.5) - stats.binom.cdf(18, 54, 0.5)
    return Finding(
        "Veit Fig. 6a", "Path lengths follow Binomial(n, 1/2); for n = 54, lengths 19-35 hold "
        "\"more than 95%\" of paths (Veit's wording).",
        f"{model}: n = {n} blocks, 2^{n} paths, mean length {n / 2:g}; lengths {lo}-{hi} hold "
        f"{pct(share)} (n = 54 gives {pct(veit)} for 19-35)",
        "computed", "exact binomial arithmetic from n: nothing is measured, so no verdict", fig_)


def verdicts(root: Path) -> list[Finding]:
    df, meta = read(root, "paths")
    if df is None:
        return [Finding("Veit Sec. 5", "paths", "-", "not run", "-")]

    mass = float(meta.get("mass", 0.9))
    fig_, out = fig(root, "paths"), []
    at = {m: summary(df, m) for m in sorted({0.9, 0.95, mass})}
    for model, s in at[mass].items():
        n = s["n_blocks"]
        out.append(_fig6a(model, n, fig_))
        if "effective_range" not in s:
            continue
        r = s["effective_range"]
        windows = "; ".join(f"{m:.0%} of the total gradient from lengths "
                            f"{at[m][model]['effective_range'][0]}-"
                            f"{at[m][model]['effective_range'][1]} "
                            f"({share(at[m][model]['share_of_paths'])} of paths)" for m in at)
        g = df[(df.model == model) & (df.kind == "gradient_magnitude")]
        g = g[g.tap == "input"] if "tap" in g else g
        zero = sorted(int(k) for k in g[g.value <= 0].k)
        ok = s["log10_slope_per_block"] < 0 and r[1] < n / 2 and not zero
        out.append(Finding(
            "Veit Fig. 6b-c",
            "Gradient magnitude falls exponentially with path length, so almost all gradient "
            f"comes from short paths: {_VEIT_RANGE[0]}-{_VEIT_RANGE[1]} blocks of "
            f"{REFERENCE['n_blocks']}, {REFERENCE['effective_range_share_of_paths']:.2%} of all "
            "paths, in ResNet-110 (for a decay like theirs 5-17 holds about 95% of the gradient; "
            "90% gives 6-15).",
            f"{model}: magnitude changes by x{s['factor_per_block']:.3g} per block (log10 slope "
            f"{s['log10_slope_per_block']:+.3f}); {windows}; peak at {s['mode_length']}"
            + (f"; lengths {', '.join(map(str, zero))} read exactly 0 (an underflow, not a "
               "magnitude: measure again with float64 norms)" if zero else ""),
            "not run" if zero else judged("holds" if ok else "does not hold",
                                          scope(model, "veit")),
            f"negative slope, and the shortest window holding {mass:.0%} of the total gradient "
            "(--mass) ends below the mean path length n/2; every measured magnitude above 0",
            fig_))
    return out



# --- The command -----------------------------------------------------------------------------
#   python -m ablate paths --model resnet110 --checkpoint resnet110.safetensors --ks 0-54:2
# Writes results.csv (path_fraction, gradient_magnitude, total_gradient and, for stochastic
# depth, active_depth rows), gradients.csv (the measured magnitudes; rerunning reuses them),
# meta.json and paths.pdf/.png. Plain nets have a single path and are refused.


@dataclass
class Options(Images):
    ks: str = flag("all", "path lengths: all, 0,3,5-9 or 0-54:3 (0 and n are always measured)")
    samples: int | None = flag(None, "random block sets per image and length (default 32 on a "
                               "GPU, 8 on the CPU); --limit defaults to 256 images on a GPU, "
                               "32 on the CPU")
    at: str = flag("input", "measure at the input only, or also at each stage's input",
                   choices=("input", "stages"))
    mass: float = flag(0.9, "gradient share of the effective range")


def parse_ks(spec: str, n: int) -> list[int]:
    """``--ks`` for a model of ``n`` residual blocks: sorted path lengths, always with 0 and n."""
    ks = command.parse_range(spec, n, "--ks", "path length")
    return sorted({0, n, *(range(n + 1) if ks is None else ks)})


def measure(o: Options) -> Result:
    if o.samples is not None and o.samples < 1:
        raise UsageError(f"--samples must be at least 1, not {o.samples}")
    if not 0 < o.mass <= 1:
        raise UsageError(f"--mass must be in (0, 1], not {o.mass}")
    loaded = command.load_models(o, EXPERIMENT.default_models, allow_init=True)
    for m in loaded:
        try:
            residual_blocks(m.model)
        except UsageError:
            raise UsageError(f"{m.name} has no residual blocks, so it has a single path: "
                             "use a ResNet (plain nets are refused)") from None
    gpu = next(loaded[0].model.parameters()).is_cuda
    samples = o.samples or (32 if gpu else 8)
    if o.limit is None:
        o.limit = 256 if gpu else 32
    lengths = [parse_ks(o.ks, len(residual_blocks(m.model))) for m in loaded]
    ds = command.load_data(o, loaded, EXPERIMENT.demo_limit)
    out, table = command.results_table(o, loaded, "paths", KEY, "gradients.csv")
    results = Table(out / "results.csv", ("model", "kind", "k"))  # refuses a foreign table
    frames = []
    for m, ks in zip(loaded, lengths):
        if m.format == "init":
            print(f"note: {m.name} has freshly initialised weights (no checkpoint)",
                  file=sys.stderr)
        g = run(m, ds, ks=ks, samples=samples, seed=o.seed, at=o.at, table=table,
                batch_size=command.batch_size(o, m))
        frames += [g, derived(m, ds, g, o.mass)]
    df = pd.concat(frames, ignore_index=True)
    results.replace(df, by=("model",))  # other models' rows stay
    s = summary(df, o.mass)
    meta = {
        "method": (
            "single path of length k: k random blocks pass gradient through their residual "
            "branch only, the others through their shortcut only; L2 norm of the summed "
            "cross-entropy's gradient at the normalised input, per image; eval-mode BN"
        ),
        "samples": samples, "mass": o.mass, "summary": s, "reference": REFERENCE,
    }
    return Result(out, df, meta, loaded, ds, table, f"{ds.name}, {len(ds)} images x {samples} "
                  "sets", summary=lambda: _print(s))


def _print(summary: dict) -> None:
    ref = REFERENCE
    for model, s in summary.items():
        line = f"{model} ({s['n_blocks']} blocks): gradient magnitude x{s['factor_per_block']:.3g}"
        line += " per block"
        if "effective_range" in s:
            lo, hi = s["effective_range"]
            line += (f"; {s['gradient_mass']:.0%} of the total gradient from paths {lo}-{hi} "
                     f"blocks long, {s['share_of_paths']:.3%} of all paths")
        print(line)
    print(f"Veit et al. (quoted, ResNet-110, {ref['n_blocks']} blocks): paths "
          f"{ref['effective_range'][0]}-{ref['effective_range'][1]} blocks long, "
          f"{ref['effective_range_share_of_paths']:.2%} of all paths")


def reproduce(p: Plan, s: Settings) -> Options:
    """Fig. 6 on resnet110 (else the deepest ResNet), about ``s.path_lengths`` lengths."""
    n = n_blocks(p.paths)
    ks = "all" if not s.path_lengths else f"0-{n}:{max(1, n // s.path_lengths)}"
    return Options(model=[p.paths], samples=s.path_samples, limit=s.path_images, ks=ks)


EXPERIMENT = Experiment(
    name="paths", paper="Veit et al. 2016, section 5, Fig. 6", run=run, key=KEY,
    options=Options, measure=measure, verdicts=verdicts, reproduce=reproduce, order=40,
    summary="path lengths and the gradient per path length (Veit et al. 2016, Fig. 6)",
    reference=REFERENCE,
)
