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
from pathlib import Path

import pandas as pd
import torch

from ablate._infra import distributed
from ablate.data import Dataset
from ablate.measures import evaluate, mcnemar_exact
from ablate.measures.stats import discordant, pack_correct, paired_difference, unpack_correct
from ablate.models.checkpoint import Loaded
from analyses import command
from analyses.context import condition
from analyses.options import Images
from analyses.plan import Plan, Settings
from analyses.registry import Experiment, Result
from analyses.sweep import outcome_columns, resume
from analyses.table import Table
from analyses.verdicts import ONE_SEED, Finding, fig, pct, read

__all__ = ["EXPERIMENT", "KEY", "compare", "depth", "pair", "run"]

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


# --- Verdicts (the report's findings, read from results/<name>/) ---


HE_2015_RESNET = {"resnet20": 8.75, "resnet56": 6.97}  # Table 6, quoted


CRITERION = ("deepest minus shallowest net of each family on the same images: the plain net's "
             "95% paired interval entirely above 0 and the ResNet's entirely below 0 (both: "
             "reproduces; one: partly); " + ONE_SEED)


def _depths(df: pd.DataFrame) -> str:
    parts = []
    for fam, d in df.sort_values("depth").groupby("family", sort=False):
        parts.append(f"{fam}: " + ", ".join(
            f"{int(r.depth)} {pct(r.error)} [{pct(r.error_low)}, {pct(r.error_high)}]"
            for r in d.itertuples()))
    return "; ".join(parts)


def _contrast(r) -> str:
    return (f"{r.a} - {r.b} {100 * r.difference:+.2f} points (95% paired interval "
            f"{100 * r.difference_low:+.2f} to {100 * r.difference_high:+.2f}, McNemar p = "
            f"{r.p_value:.2g})")


def verdicts(root: Path) -> list[Finding]:

    claim = ("Degradation: a deeper plain net errs more (plain-56 above plain-20, Fig. 6), a "
             f"deeper ResNet less (ResNet-20 {HE_2015_RESNET['resnet20']}% -> ResNet-56 "
             f"{HE_2015_RESNET['resnet56']}%, Table 6).")
    df, _ = read(root, "degradation")
    if df is None:
        return [Finding("He et al. Fig. 6", claim, "-", "not run", CRITERION)]
    pairs = compare(df)
    within = {c.split(":")[0]: r for c, r in zip(pairs.contrast, pairs.itertuples())
              if c.endswith("deepest vs shallowest")}
    across = pairs[pairs.contrast == "plain vs resnet"]
    if not {"plain", "resnet"} <= set(within):
        return [Finding("He et al. Fig. 6", claim, _depths(df), "not run",
                        CRITERION + "; needs two depths of each family")]
    plain_up = within["plain"].difference_low > 0
    res_down = within["resnet"].difference_high < 0
    verdict = ("reproduces" if plain_up and res_down else "partly" if plain_up or res_down
               else "does not reproduce")
    ours = (f"test error by depth [95% Wilson]: {_depths(df)}; {_contrast(within['plain'])}; "
            f"{_contrast(within['resnet'])}; plain-n vs ResNet-n: "
            + ", ".join(f"{int(r.depth)}: {100 * r.difference:+.2f} points (p = {r.p_value:.2g})"
                        for r in across.itertuples()))
    return [Finding("He et al. Fig. 6", claim, ours, verdict, CRITERION, fig(root, "degradation"))]



# --- The command -----------------------------------------------------------------------------
#   python -m ablate degradation                     # the bundled zoo: plain/resnet 20-56
#   python -m ablate degradation --model plain20 plain56 resnet20 resnet56 --limit 2000
# Writes results.csv (one row per network), comparison.csv (the paired contrasts of
# :func:`compare`), meta.json and degradation.pdf/.png.

ZOO = ("plain20", "plain32", "plain44", "plain56", "resnet20", "resnet32", "resnet44", "resnet56")


def measure(o: Images) -> Result:
    loaded = command.load_models(o, EXPERIMENT.default_models)
    ds = command.load_data(o, loaded, EXPERIMENT.demo_limit)
    out, table = command.results_table(o, loaded, "degradation", KEY)
    df = pd.concat([run(m, ds, table=table, batch_size=command.batch_size(o, m),
                        progress=distributed.is_main()) for m in loaded], ignore_index=True)
    if distributed.is_main():
        compare(df).to_csv(out / "comparison.csv", index=False)
    return Result(out, df, {}, loaded, ds, table, summary=lambda: _summary(df))


def _summary(df: pd.DataFrame) -> None:
    command.print_table(df.sort_values(["family", "depth"]).assign(error_pct=df.error * 100),
                        ["model", "family", "depth", "error_pct", "error_low", "error_high"],
                        title="\ntest error by depth:")
    pairs = compare(df)
    if len(pairs):
        command.print_table(pairs.assign(diff_pct=pairs.difference * 100),
                            ["contrast", "a", "b", "diff_pct", "difference_low",
                             "difference_high", "p_value"],
                            title="\npaired (a minus b, same images):")


def reproduce(p: Plan, s: Settings) -> Images | None:
    """Every depth with both a plain net and a ResNet bundled (none: not run)."""
    return Images(model=list(p.zoo), limit=s.limit) if p.zoo else None


EXPERIMENT = Experiment(
    name="degradation", paper="He et al. 2015, Fig. 6 and Table 6 (degradation)", run=run,
    key=KEY, options=Images, measure=measure, verdicts=verdicts, reproduce=reproduce, order=90,
    summary="test error by depth, plain nets against ResNets (He et al. 2015)",
    default_models=ZOO,
)
