"""Attribution vs lesion: does a block that captum calls important hurt when it is deleted?

Per block, a captum layer attribution of the true class's logit (``target`` = the label) to its
residual branch's output (``layer="branch"``, the default: what deleting the block removes) or
to the block's output (``layer="block"``; plain units: the output of their BN, before the
functional ReLU). Aggregates over the attribution tensor A_i of image i, each averaged over
images:

- ``attr_abs`` = sum |A_i| (how much attribution passes through the layer, either sign);
- ``attr_signed`` = |sum A_i| (net attribution), at the branch only. For conductance and
  integrated gradients on a layer that every path crosses (a block's output) it is about
  |f(x) - f(baseline)| for every block (completeness): it ranks nothing there and is not
  recorded (NaN).

Baselines (conductance, integrated gradients): ``mean`` = zeros in normalised space, i.e. the
data set's mean colour; ``black`` = the all-black image, normalised. Lesion damage comes from
:func:`analyses.delete_block.run` on the same images (error and loss change when the block is
deleted); Spearman's rank correlation between the two is computed per model and method. The
verdict reads the damage from the delete_block table instead where it has the model (all
10,000 test images rather than the attribution's few), tests each rho by permuting the blocks
and corrects for the number of tests (Holm).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import stats
from torch import Tensor, nn

from ablate._infra.errors import UsageError
from ablate.data import Dataset, normalize
from ablate.measures import mean_interval
from ablate.measures.stats import holm, spearman_permutation
from ablate.models.blocks import Block, blocks, get_module
from ablate.models.checkpoint import Loaded
from analyses import command, deletion
from analyses.context import condition
from analyses.options import Images, flag
from analyses.plan import Plan, Settings
from analyses.registry import Experiment, Result
from analyses.sweep import resume
from analyses.table import Table
from analyses.verdicts import (
    ALPHA,
    MIN_RANKED_UNITS,
    Finding,
    fig,
    judged,
    read,
)

__all__ = ["EXPERIMENT",
    "BASELINES", "KEY", "LAYERS", "METHODS", "aggregate", "attribute", "attribution_layer",
    "baseline_input", "correlations", "run", "spearman",
]

METHODS = ("conductance", "gradient_x_activation", "integrated_gradients")
LAYERS = ("block", "branch")
BASELINES = ("mean", "black")
KEY = ("model", "checkpoint_sha256", "dataset", "split", "n_images", "data_sha256", "method",
       "layer", "n_steps", "baseline", "block")
_BRANCH_END = ("bn3", "bn2", "conv2")  # last module of a residual branch (torchvision / ours)


def check(method: str, layer: str = "block", baseline: str = "mean") -> None:
    if method not in METHODS:
        raise UsageError(f"unknown --method {method!r}: use one of {', '.join(METHODS)}")
    if layer not in LAYERS:
        raise UsageError(f"unknown --layer {layer!r}: use block or branch")
    if baseline not in BASELINES:
        raise UsageError(f"unknown --baseline {baseline!r}: use mean or black")


def attribution_layer(model: nn.Module, unit: Block, layer: str = "block") -> nn.Module:
    """The module whose output is attributed for ``unit`` (see the module docstring)."""
    if unit.kind == "plain":
        return get_module(model, unit.bn) if unit.bn else unit.module
    if layer == "block":
        return unit.module
    for name in _BRANCH_END:
        m = getattr(unit.module, name, None)
        if isinstance(m, nn.Module):
            return m
    raise UsageError(f"cannot find the end of the residual branch of {unit.name}: use --layer "
                     "block")


def baseline_input(kind: str, mean: Sequence[float], std: Sequence[float], like: Tensor) -> Tensor:
    """The baseline image in normalised space, shaped like ``like``."""
    if kind == "mean":
        return torch.zeros_like(like)
    m = torch.tensor(list(mean), dtype=like.dtype, device=like.device).view(1, -1, 1, 1)
    s = torch.tensor(list(std), dtype=like.dtype, device=like.device).view(1, -1, 1, 1)
    return ((0.0 - m) / s).expand_as(like).contiguous()


def attribute(
    model: nn.Module, layers: Sequence[nn.Module], x: Tensor, y: Tensor, method: str, *,
    baseline: Tensor | None = None, n_steps: int = 16, internal_batch_size: int | None = None,
) -> list[Tensor]:
    """captum layer attributions of the logit of class ``y`` to each layer's output."""
    from captum.attr import LayerConductance, LayerGradientXActivation, LayerIntegratedGradients

    check(method)
    model.eval()
    if method == "gradient_x_activation":
        out = LayerGradientXActivation(model, list(layers)).attribute(x, target=y)
        return [o.detach() for o in ([out] if isinstance(out, Tensor) else out)]
    cls = LayerConductance if method == "conductance" else LayerIntegratedGradients
    base = torch.zeros_like(x) if baseline is None else baseline
    return [
        cls(model, layer).attribute(x, baselines=base, target=y, n_steps=n_steps,
                                    internal_batch_size=internal_batch_size).detach()
        for layer in layers
    ]


def aggregate(attr: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per image: (|sum of attributions|, sum of |attributions|), in float64."""
    a = attr.detach().double().flatten(1)
    return a.sum(1).abs().cpu().numpy(), a.abs().sum(1).cpu().numpy()


def spearman(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Spearman's rho and its two-sided p-value; NaN when either side is constant or short."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return (float("nan"), float("nan"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = stats.spearmanr(a[ok], b[ok])
    return (float(r.statistic), float(r.pvalue))


def run(
    loaded: Loaded,
    ds: Dataset,
    *,
    method: str = "conductance",
    layer: str = "branch",
    n_steps: int = 16,
    baseline: str = "mean",
    table: Table | None = None,
    lesion_table: Table | None = None,
    batch_size: int = 128,
    progress: bool = True,
) -> pd.DataFrame:
    """One row per unit: attribution aggregates with t intervals over images, beside the lesion
    damage of deleting it (NaN for plain units that cannot be deleted). Rows in ``table`` are
    reused; lesion rows are shared with ``python -m ablate.delete_block`` through
    ``lesion_table``."""
    check(method, layer, baseline)
    table = Table(None, KEY) if table is None else table
    gxa = method == "gradient_x_activation"
    base = {**condition(loaded, ds), "method": method, "layer": layer,
            "n_steps": 0 if gxa else n_steps, "baseline": "none" if gxa else baseline}
    units = blocks(loaded.model)
    lesion = functools.cache(lambda: deletion.run(
        loaded, ds, table=lesion_table, batch_size=batch_size, progress=progress
    ).set_index("block"))

    def measure(part: list[dict]) -> list[dict]:
        group = [units[k["block"]] for k in part]
        aggs = _attribute_group(loaded, ds, group, method, layer, n_steps, baseline, batch_size)
        return [_row(base, u, a, lesion()) for u, a in zip(group, aggs)]

    keys = [{**base, "block": u.index} for u in units]
    return resume(table, keys, measure, what=f"{loaded.name} {method}",
                  group=len(keys) if gxa else 1)


def _attribute_group(loaded: Loaded, ds: Dataset, group: list[Block], method: str, layer: str,
                     n_steps: int, baseline: str, batch_size: int) -> list[tuple]:
    model = loaded.model
    param = next(model.parameters())
    layers = [attribution_layer(model, u, layer) for u in group]
    signed: list[list[np.ndarray]] = [[] for _ in group]
    absolute: list[list[np.ndarray]] = [[] for _ in group]
    # Conductance and IG run n_steps interpolated copies of each image: fewer images per batch.
    step = batch_size if method == "gradient_x_activation" else max(1, batch_size // n_steps)
    for i in range(0, len(ds), step):
        x = normalize(ds.images[i:i + step].to(param.device), loaded.mean, loaded.std)
        x = x.to(param.dtype)
        y = ds.labels[i:i + step].to(param.device)
        base = baseline_input(baseline, loaded.mean, loaded.std, x)
        outs = attribute(model, layers, x, y, method, baseline=base, n_steps=n_steps,
                         internal_batch_size=batch_size)
        for j, o in enumerate(outs):
            s, a = aggregate(o)
            signed[j].append(s)
            absolute[j].append(a)
    return [(np.concatenate(s), np.concatenate(a)) for s, a in zip(signed, absolute)]


def _row(base: dict, u: Block, agg: tuple, lesion: pd.DataFrame) -> dict:
    s, a = (mean_interval(v) for v in agg)
    if base["layer"] == "block" and u.kind != "plain":  # |sum A| of a block's output: the same
        s = (float("nan"),) * 3  # for every block by completeness, so it is not recorded
    row = {**base, "block": u.index, "block_name": u.name, "stage": u.stage,
           "downsample": u.changes_shape, "unit_kind": u.kind,
           "attr_signed": s[0], "attr_signed_low": s[1], "attr_signed_high": s[2],
           "attr_abs": a[0], "attr_abs_low": a[1], "attr_abs_high": a[2]}
    if u.index in lesion.index:
        le = lesion.loc[u.index]
        row |= {"error_change": float(le["error_change"]), "lesion_error": float(le["error"]),
                "intact_error": float(le["intact_error"]),
                "loss_change": float(le["loss"] - le["intact_loss"]),
                "lesion_p_value": float(le["p_value"])}
    else:
        row |= dict.fromkeys(("error_change", "lesion_error", "intact_error", "loss_change",
                              "lesion_p_value"), float("nan"))
    return row


def correlations(df: pd.DataFrame) -> list[dict]:
    """Spearman's rho (and p) of each aggregate against each lesion damage, per model and
    method, over the units that can be deleted."""
    out = []
    for (model, method, layer), d in df.groupby(["model", "method", "layer"], sort=False):
        d = d[d["error_change"].notna()]
        aggs = ("attr_abs",) if layer == "block" else ("attr_abs", "attr_signed")
        for agg in aggs:
            for damage in ("error_change", "loss_change"):
                rho, p = spearman(d[agg], d[damage])
                out.append({"model": model, "method": method, "layer": layer, "aggregate": agg,
                            "damage": damage, "rho": rho, "p_value": p, "n_blocks": len(d)})
    return out


# --- Verdicts (the report's findings, read from results/<name>/) ---


CLAIM = ("No published number: does a block whose residual branch captum calls important "
         "(conductance, sum |A| over the branch's output) hurt more when it is deleted?")
COMMAND = ("python -m ablate reproduce --device cpu --out reproduction --only attribution "
           "(conductance at the branch, 128 images, 16 steps; resnet110's 54 branches: about 15 "
           "min of one CPU thread, resnet56's 27 took 3.5)")


def damage(root: Path, model: str, own: pd.DataFrame) -> tuple[pd.Series, str]:
    """Each block's error change when deleted: from the delete_block table (all its images)
    where it has the model, else the attribution run's own lesion rows; and where it came from."""
    df, _ = read(root, "delete_block")
    if df is not None and model in set(df.model):
        d = deletion.whole_blocks(df[df.model == model])
        return d.set_index("block").error_change, f"delete_block, {int(d.n_images.iloc[0])} images"
    n = int(own.n_images.iloc[0]) if "n_images" in own else 0
    return own.set_index("block").error_change, f"its own lesion rows, {n} images"


def verdicts(root: Path) -> list[Finding]:
    df, _ = read(root, "attribution")
    if df is None:
        return [Finding("Attribution vs lesion (ours)", CLAIM, "-", "not run", "-")]
    crit = ("Spearman rho between a block's mean sum |A| at its residual branch and its error "
            "change when deleted (from the delete_block table), one-sided permutation test over "
            f"the blocks, Holm over the networks and methods, p < {ALPHA:g} and rho > 0; at "
            f"least {MIN_RANKED_UNITS} blocks")
    branch = df[df.layer == "branch"] if "layer" in df else df.iloc[0:0]
    out = [Finding(
        "Attribution vs lesion (ours)", CLAIM,
        f"{model}: the table attributes to each block's output only, which every path crosses: "
        "conductance there sums to about f(x) - f(baseline) for every block (completeness), "
        "and it is not what deleting the block removes, so no test is made on it; measure at "
        f"the residual branch: {COMMAND}", "not run", crit, fig(root, "attribution"))
        for model in dict.fromkeys(df.model) if model not in set(branch.model)]
    if branch.empty:
        return out
    tests = []
    for (model, method), d in branch.groupby(["model", "method"], sort=False):
        dmg, source = damage(root, model, d)
        d = d[d.block.isin(dmg.dropna().index)]
        r, p, _ = spearman_permutation(d.attr_abs, dmg.loc[d.block].to_numpy())
        tests.append({"model": model, "method": method, "rho": r, "p": p, "n": len(d),
                      "source": source})
    t = pd.DataFrame(tests)
    ok = t.p.notna() & (t.n >= MIN_RANKED_UNITS)
    t["p_holm"] = np.nan
    if ok.any():
        t.loc[ok, "p_holm"] = holm(t.p[ok].tolist())
    for x in t.itertuples():
        ours = (f"{x.model} {x.method} at the branch: rho = {x.rho:.2f} over {x.n} blocks "
                f"(permutation p = {x.p:.2g}, Holm over {int(ok.sum())}: {x.p_holm:.2g}); "
                f"damage from {x.source}")
        if x.n < MIN_RANKED_UNITS or np.isnan(x.p):
            out.append(Finding("Attribution vs lesion (ours)", CLAIM, ours + ": too few blocks",
                               "not run", crit, fig(root, "attribution")))
            continue
        holds = x.p_holm < ALPHA and x.rho > 0
        out.append(Finding("Attribution vs lesion (ours)", CLAIM, ours,
                           judged("holds" if holds else "does not hold", "new"), crit,
                           fig(root, "attribution")))
    return out



# --- The command -----------------------------------------------------------------------------
#   python -m ablate attribution --model resnet110 --checkpoint resnet110.safetensors \
#       --method conductance gradient_x_activation --limit 1000
# --limit defaults to 512 images on a GPU, 64 on the CPU. Writes results.csv (one row per model,
# method and block), delete_block.csv (the lesion rows, as the delete_block experiment writes
# them), meta.json and attribution.pdf/.png.


@dataclass
class Options(Images):
    method: list[str] = flag(["conductance"], f"captum methods: {', '.join(METHODS)}",
                             metavar="METHOD")
    layer: str = flag("branch", "branch (the output of its residual branch: what deleting it "
                      "removes) or block (its output; conductance there is the same for every "
                      "block by completeness)")
    n_steps: int = flag(16, "integration steps of conductance and integrated gradients")
    baseline: str = flag("mean", "mean (zeros in normalised space: the mean colour) or black")


def measure(o: Options) -> Result:
    for m in o.method:
        check(m, o.layer, o.baseline)
    if o.n_steps < 1:
        raise UsageError(f"--n-steps must be at least 1, not {o.n_steps}")
    loaded = command.load_models(o, EXPERIMENT.default_models, allow_init=True)
    if o.limit is None:
        o.limit = 512 if next(loaded[0].model.parameters()).is_cuda else 64
    ds = command.load_data(o, loaded, EXPERIMENT.demo_limit)
    out, table = command.results_table(o, loaded, "attribution", KEY)
    lesion = Table(out / "delete_block.csv", deletion.KEY)
    frames = [run(m, ds, method=method, layer=o.layer, n_steps=o.n_steps, baseline=o.baseline,
                  table=table, lesion_table=lesion, batch_size=command.batch_size(o, m))
              for m in loaded for method in dict.fromkeys(o.method)]
    df = pd.concat(frames, ignore_index=True)
    corr = correlations(df)
    meta = {
        "method": o.method, "layer": o.layer, "n_steps": o.n_steps, "baseline": o.baseline,
        "target": "logit of the true class",
        "aggregates": {"attr_abs": "mean over images of sum |A|",
                       "attr_signed": "mean over images of |sum A|"},
        "spearman": corr,
    }
    return Result(out, df, meta, loaded, ds, table, f"{ds.name}, {len(ds)} images",
                  summary=lambda: _summary(corr))


def _summary(corr: list[dict]) -> None:
    for c in corr:
        if c["aggregate"] == "attr_abs":
            print(f"{c['model']} {c['method']} ({c['layer']}): Spearman rho of sum|A| vs "
                  f"{c['damage']} = {c['rho']:.3f} (p = {c['p_value']:.3g}, "
                  f"{c['n_blocks']} blocks)")


def reproduce(p: Plan, s: Settings) -> Options:
    """Conductance of the ResNets' residual branches against their deletion damage."""
    return Options(model=list(p.resnets), limit=s.attribution_images,
                   n_steps=s.attribution_steps, layer="branch")


EXPERIMENT = Experiment(
    name="attribution", paper="Veit et al. 2016 (lesion) vs captum attributions", run=run,
    key=KEY, options=Options, measure=measure, verdicts=verdicts, reproduce=reproduce,
    order=70, summary="captum block attributions against block-deletion damage",
)
