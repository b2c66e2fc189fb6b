"""Veit et al. 2016, section 5 (Fig. 6): the distribution of path lengths, the gradient a single
path of each length carries, and the total gradient per length with its effective range.

Gradient magnitudes are measured (expensive, resumable, in a :class:`Table`); the path-length
distribution, the stochastic-depth active-depth distribution and the total gradient are derived
from them in :func:`derived`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ablate.data import Dataset, normalize
from ablate.measures import paths as ps
from ablate.measures.stats import cluster_mean_interval
from ablate.models.checkpoint import Loaded
from analyses.context import condition
from analyses.sweep import resume
from analyses.table import Table

__all__ = ["KEY", "REFERENCE", "derived", "run", "summary", "survival"]

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
    not independent of each other). Rows already in ``table`` are reused.
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
                norms.setdefault(key, []).append(v.flatten(1).norm(dim=1).double().cpu())
        rows = []
        for key, parts in norms.items():
            v = torch.cat(parts).numpy()
            mean, lo, hi = cluster_mean_interval(v, np.arange(v.size) % len(ds))
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
