"""Do the pruning papers' redundancy measures predict what deleting a block costs?

ShortGPT (Men et al. 2024) deletes the blocks of lowest Block Influence, Gromov et al. 2024 the
n-block window of smallest angular distance, both assuming the measure ranks blocks by deletion
damage. Here both sides are measured on the same images. Per block, from one activation pass
(:func:`ablate.measures.redundancy.redundancy`): Block Influence ``1 - cos(x, y)``, the
residual-contribution ratio ``||y - x|| / ||x||`` and, per n-block window, the angular distance
between the window's input and its output; per block (or window), the damage of deleting it (the
window: all its blocks at once), from the batched engine: the error change and the mean per-image
loss change against the intact net. Per measure: Spearman's rho between the block means of
measure and damage, with a percentile bootstrap interval over images (measure and damage
resampled together). Blocks and windows that change the feature shape have no cosine and are left
out of the correlation (``in_correlation``); their damage is still reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ablate._infra import distributed
from ablate._infra.errors import UsageError
from ablate.data import Dataset, normalize
from ablate.interventions.variants import Variant, evaluate_variants
from ablate.measures.redundancy import rank_correlation, redundancy
from ablate.models.blocks import blocks, eval_mode
from ablate.models.checkpoint import Loaded
from analyses import command
from analyses.context import condition
from analyses.options import Images, flag
from analyses.plan import Plan, Settings
from analyses.registry import Experiment, Result
from analyses.sweep import resume
from analyses.table import Table
from analyses.verdicts import Finding, fig, read

__all__ = ["EXPERIMENT", "KEY", "MEASURES", "run", "specs"]

KEY = ("model", "checkpoint_sha256", "dataset", "split", "n_images", "data_sha256", "seed",
       "n_boot", "measure", "n", "block")
MEASURES = ("block_influence", "contribution_ratio", "angular_distance")
DAMAGES = ("error", "loss")


def specs(n_blocks: int, windows: Sequence[int]) -> list[tuple[str, int]]:
    """(measure, window length) pairs: the two per-block measures, then angular distance over
    1-block and each longer window that fits."""
    ns = sorted({1, *(int(n) for n in windows if 1 <= int(n) <= n_blocks)})
    return [("block_influence", 1), ("contribution_ratio", 1),
            *(("angular_distance", n) for n in ns)]


def _batches(loaded: Loaded, ds: Dataset, batch_size: int):
    p = next(loaded.model.parameters())
    m = torch.tensor(list(loaded.mean), dtype=torch.float32, device=p.device)
    s = torch.tensor(list(loaded.std), dtype=torch.float32, device=p.device)
    for i in range(0, len(ds), batch_size):
        yield normalize(ds.images[i:i + batch_size].to(p.device), m, s, dtype=p.dtype)


def run(
    loaded: Loaded,
    ds: Dataset,
    *,
    windows: Sequence[int] = (2, 4),
    n_boot: int = 1000,
    seed: int = 0,
    table: Table | None = None,
    batch_size: int = 256,
    progress: bool = True,
) -> pd.DataFrame:
    """Every measure of every block (and window) of ``loaded`` beside its deletion damage, and
    each measure's rank correlation with the damage (the same on every row of that measure).

    All of a model's rows are measured together, so a rerun reuses them or measures them all.
    """
    units = blocks(loaded.model)
    plain = [u.name for u in units if u.kind != "residual"]
    if plain:
        raise UsageError(f"{loaded.name} has plain units ({plain[0]}, ...): the redundancy "
                         "measures compare a residual block's input and output; use a ResNet "
                         "or a transformer")
    table = Table(None, KEY) if table is None else table
    base = condition(loaded, ds)
    L = len(units)
    plan = specs(L, windows)
    keys = [{**base, "seed": seed, "n_boot": n_boot, "measure": m, "n": n, "block": b}
            for m, n in plan for b in range(L - n + 1)]

    def measure(todo: list[dict]) -> list[dict]:
        return _measure(loaded, ds, plan, keys, n_boot, seed, batch_size, progress)

    return resume(table, keys, measure, what=f"{loaded.name} redundancy", group=len(keys))


def _measure(loaded: Loaded, ds: Dataset, plan: list[tuple[str, int]], keys: list[dict],
             n_boot: int, seed: int, batch_size: int, progress: bool) -> list[dict]:
    model, units = loaded.model, blocks(loaded.model)
    ns = sorted({n for _, n in plan if n > 1})
    with eval_mode(model):
        red = redundancy(model, _batches(loaded, ds, batch_size), windows=(1, *ns))
    windows = sorted({n for _, n in plan})
    variants = [Variant()] + [Variant.deleting(range(lo, lo + n)) for n in windows
                              for lo in range(len(units) - n + 1)]
    outs = evaluate_variants(model, ds.images, ds.labels, variants, mean=loaded.mean,
                             std=loaded.std, batch_size=batch_size, progress=progress,
                             desc=f"{loaded.name} deletions for redundancy")
    intact, it = outs[0], iter(outs[1:])
    damage: dict[int, dict[str, np.ndarray]] = {}
    for n in windows:  # [images, windows] per damage, in the order of the variants
        o = [next(it) for _ in range(len(units) - n + 1)]
        damage[n] = {
            "error": np.stack([(~x.correct).double().numpy() - (~intact.correct).double().numpy()
                               for x in o], 1),
            "loss": np.stack([(x.loss.double() - intact.loss.double()).numpy() for x in o], 1),
        }
    arrays = {("block_influence", 1): red.influence, ("contribution_ratio", 1): red.ratio,
              **{("angular_distance", n): a for n, a in red.angular.items()}}
    rows: list[dict] = []
    by_key = {(k["measure"], k["n"], k["block"]): k for k in keys}
    for m, n in plan:
        values = arrays[(m, n)]
        finite = np.isfinite(values)
        count = finite.sum(0)
        means = np.where(count > 0, np.where(finite, values, 0.0).sum(0) / np.maximum(count, 1),
                         np.nan)
        ok = count == len(values)  # shape-changing blocks and windows have no cosine
        corr = {}
        for d in DAMAGES:
            rho, lo, hi = (rank_correlation(values[:, ok], damage[n][d][:, ok], n_boot=n_boot,
                                            seed=seed) if ok.sum() >= 3 else (np.nan,) * 3)
            corr |= {f"rho_{d}": rho, f"rho_{d}_low": lo, f"rho_{d}_high": hi}
        for b in range(values.shape[1]):
            last = units[b + n - 1]
            rows.append({
                **by_key[(m, n, b)], "name": units[b].name if n == 1 else
                f"{units[b].name} .. {last.name}", "downsample": any(
                    u.changes_shape for u in units[b:b + n]),
                "value": float(means[b]), "error_change": float(damage[n]["error"][:, b].mean()),
                "loss_change": float(damage[n]["loss"][:, b].mean()),
                "intact_error": intact.error, "in_correlation": bool(ok[b]),
                "n_correlated": int(ok.sum()), **corr,
            })
    return rows


# --- Verdicts (the report's findings, read from results/<name>/) ---


_CLAIMS = {
    "block_influence": (
        "Men et al. 2024 (ShortGPT)",
        "A block whose output barely differs from its input (low Block Influence, 1 - cos(x, y)) "
        "can be deleted at little cost: BI ranks blocks by deletion damage."),
    "angular_distance": (
        "Gromov et al. 2024",
        "The n-block window with the smallest angular distance between its input and output is "
        "the cheapest to delete: the distance ranks windows by deletion damage."),
}


def verdicts(root: Path) -> list[Finding]:
    df, _ = read(root, "redundancy")
    if df is None:
        return [Finding("Men et al. 2024 (ShortGPT)", "Block Influence against deletion damage",
                        "-", "not run", "-")]
    fig_, out = fig(root, "redundancy"), []
    for measure, (section, claim) in _CLAIMS.items():
        d = df[df.measure == measure]
        if d.empty:
            continue
        n = int(d.n.max())  # Block Influence: 1; angular distance: the longest window
        unit = "a block" if n == 1 else f"a {n}-block window"
        crit = (f"95% bootstrap interval (over images) of Spearman's rho between {unit}'s mean "
                f"{measure.replace('_', ' ')} and the error change when it is deleted entirely "
                "above 0 (shape-changing blocks left out)")
        for model, m in d[d.n == n].groupby("model", sort=False):
            r = m.iloc[0]
            ours = (f"{model}: rho = {r.rho_error:.2f} [{r.rho_error_low:.2f}, "
                    f"{r.rho_error_high:.2f}] over {int(r.n_correlated)} "
                    f"{'blocks' if n == 1 else f'windows of {n} blocks'} (loss change: rho = "
                    f"{r.rho_loss:.2f} [{r.rho_loss_low:.2f}, {r.rho_loss_high:.2f}]); "
                    f"{int(r.n_images):,} images, {int(r.n_boot):,} resamples")
            if int(r.n_correlated) < 3:  # e.g. every 4-block window of resnet20 downsamples
                ours = (f"{model}: {int(r.n_correlated)} {'blocks' if n == 1 else 'windows'} "
                        "keep the feature shape: too few to rank")
                out.append(Finding(section, claim, ours, "not run", crit, fig_))
                continue
            verdict = "reproduces" if r.rho_error_low > 0 else "does not reproduce"
            out.append(Finding(section, claim, ours, verdict, crit, fig_))
    return out



# --- The command -----------------------------------------------------------------------------
#   python -m ablate redundancy --model resnet56 vit_cifar --limit 1000 --windows 2 4
# Writes results.csv (one row per model, measure and block or window), meta.json and
# redundancy.pdf/.png; --limit defaults to 1000 images.


@dataclass
class Options(Images):
    windows: list[int] = flag([2, 4], "window lengths of the angular distance beyond single "
                              "blocks", metavar="N")
    n_boot: int = flag(1000, "bootstrap resamples of the images for each rank correlation")


def measure(o: Options) -> Result:
    if o.n_boot < 1 or any(n < 1 for n in o.windows):
        raise UsageError("--n-boot and every --windows length must be at least 1")
    if o.limit is None:
        o.limit = 1000
    loaded = command.load_models(o, EXPERIMENT.default_models)
    ds = command.load_data(o, loaded, EXPERIMENT.demo_limit)
    out, table = command.results_table(o, loaded, "redundancy", KEY)
    df = pd.concat([run(m, ds, windows=o.windows, n_boot=o.n_boot, seed=o.seed, table=table,
                        batch_size=command.batch_size(o, m), progress=distributed.is_main())
                    for m in loaded], ignore_index=True)
    meta = {
        "windows": [1, *sorted(set(o.windows) - {1})], "n_boot": o.n_boot,
        "damage": {"error_change": "test error change when the block or window is deleted",
                   "loss_change": "mean per-image cross-entropy change, same deletion"},
    }
    return Result(out, df, meta, loaded, ds, table, summary=lambda: _summary(df))


def _summary(df: pd.DataFrame) -> None:
    first = df.drop_duplicates(["model", "measure", "n"])
    command.print_table(
        first, ["model", "measure", "n", "n_correlated", "rho_error", "rho_error_low",
                "rho_error_high", "rho_loss", "rho_loss_low", "rho_loss_high"],
        title="\nSpearman rho between each measure and the damage of deleting the block (or "
              "window), 95% bootstrap interval over images:")


def reproduce(p: Plan, s: Settings) -> Options:
    """The first ResNet and the ViTs, 4-block windows, on the sweeps' images."""
    return Options(model=[*p.resnets[:1], *p.vits], windows=[4], limit=s.sweep_limit)


EXPERIMENT = Experiment(
    name="redundancy", paper="Men et al. 2024 (Block Influence) and Gromov et al. 2024 "
    "(angular distance) against measured deletion damage", run=run, key=KEY, options=Options,
    measure=measure, verdicts=verdicts, reproduce=reproduce, order=80,
    summary="do Block Influence and angular distance predict deletion damage? (ShortGPT, "
            "Gromov et al. 2024)",
    default_models=("resnet56",),
)
