"""REPRODUCTION.md, regenerated from the result tables: the paper's claim, ours, and a verdict.

Every number on our side is read from ``results/<analysis>/results.csv``, ``meta.json`` or the
checkpoint cards; the papers' numbers are quoted constants with their source. Each verdict states
the criterion it applies, so a reader can disagree with the threshold but not with the data.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pandas as pd

from ablate import models
from ablate._infra.io import write_text
from ablate.models import checkpoint
from ablate.models.blocks import blocks
from analyses import delete_block, drop_blocks, registry, reorder_blocks
from analyses.deletion import whole_blocks
from analyses.plan import Plan
from analyses.training_curves import HUANG_2016
from analyses.verdicts import ALPHA, EQUIVALENCE_MARGIN, VOCABULARY, Finding, pct, read, units

__all__ = ["Finding", "devices", "ensemble_answers", "findings", "networks_named",
           "transformer_section", "wall_seconds", "write_report"]

# Quoted from the papers (see shared REFERENCES.md); never measured here.
HE_2015 = {"resnet20": 8.75, "resnet32": 7.51, "resnet44": 7.17, "resnet56": 6.97,
           "resnet110": 6.43, "resnet1202": 7.93}


def _models() -> list[str]:
    rows = []
    for name in checkpoint.bundled_names():
        card = json.loads((checkpoint.bundled_dir() / f"{name}.json").read_text())
        arch, w = card.get("arch", name), card.get("weights") or {}
        sd = models.family(name, card, default="") == "stochastic_depth"
        paper = (f"{HE_2015[arch]}% (He)" if arch in HE_2015 else None) if not sd else (
            f"{HUANG_2016['stochastic_110']}% (Huang)" if arch == "resnet110" else None)
        if not sd and arch == "resnet110":  # Huang et al.'s own constant-depth ResNet-110
            paper += f" / {HUANG_2016['constant_110']}% (Huang)"
        err = card.get("test_error", card.get("final_test_error"))
        if w:  # a published checkpoint: who trained it and how
            how = f"{w.get('source')} @ {w.get('commit')} ({w.get('recipe', '').split(',')[0]})"
            trained, pub = how, w.get("published_error")
        else:
            spans = card.get("precision_by_epochs") or []
            where = (": " + ", ".join(f"{r['epochs']} on {r['device']}" for r in spans)
                     if len({r["device"] for r in spans}) > 1 else f" on {card.get('device')}")
            trained = f"ablate.train, {card.get('epochs')} epochs{where}"
            pub = None
        rows.append(f"| {name} | {card.get('dataset')} | {trained} | "
                    f"{'n/a' if err is None else f'{100 * err:.2f}%'} | "
                    f"{'' if pub is None else f'{pub:.2f}%'} | "
                    f"{paper or ''} |")
    head = ("| checkpoint | data | trained by | our test error | its source's number | "
            "paper (He et al. / Huang et al.) |\n|---|---|---|---|---|---|")
    return [head, *rows] if rows else ["No checkpoints are bundled."]


def findings(root: Path) -> list[Finding]:
    return [f for _, f in _by_analysis(root)]


def _by_analysis(root: Path) -> list[tuple[str, Finding]]:
    """Every experiment's findings, in the registry's order (its ``verdicts`` read its table)."""
    return [(e.name, f) for e in registry.experiments() if e.verdicts is not None
            for f in e.verdicts(root)]


def wall_seconds(run: dict) -> dict[str, float]:
    """Each analysis' wall time from run.json, summed over its invocations."""
    return dict(run.get("wall_seconds_total", run.get("wall_seconds", {})))


def devices(meta: dict) -> list[str]:
    """The devices that measured a table's rows: every invocation that added rows (a resumed
    table may hold rows from several machines), else the last invocation's."""
    inv = [i for i in meta.get("invocations") or [] if i.get("rows") != 0 and i.get("device")]
    return list(dict.fromkeys(i["device"] for i in inv)) or [str(meta.get("device"))]


def _measured(root: Path, analysis: str, run: dict) -> str:
    """Where and how long: the analysis' images, device and wall time (summed over resumed
    invocations), from its meta.json and run.json."""
    _, meta = read(root, analysis)
    if not meta:
        return "-"
    wall = wall_seconds(run).get(analysis, meta.get("wall_seconds"))
    n = meta.get("data", {}).get("n_images")
    return (f"{'' if n is None else f'{n} images; '}{'; '.join(devices(meta))}; "
            f"{'n/a' if wall is None else f'{float(wall) / 60:.1f} min'}")


def _pending(found: list[tuple[str, Finding]], run: dict, root: Path
             ) -> list[tuple[str, Finding]]:
    """A step of the plan that has not finished yet has a partial table: say how far it got and
    withhold its verdict, which could flip once the rest is measured."""
    steps, done = run.get("steps") or [], set(run.get("finished") or [])
    out = []
    for a, f in found:
        if a in steps and a not in done and f.verdict != "not run":
            df, _ = read(root, a)
            so_far = (f"its step, {a}, has not run yet" if df is None else
                      f"partial table, {len(df)} rows so far")
            f = replace(f, verdict="in progress",
                        ours=f"{f.ours} ({so_far}; the verdict waits for the step to finish)")
        out.append((a, f))
    return out


def _sizes(run: dict) -> list[str]:
    """The sample sizes of the run and, for the full run, why they are what they are."""
    why, settings = run.get("settings_why") or {}, run.get("settings") or {}
    if not settings:
        return []
    out = ["", "## Sample sizes", "", "| setting | value | why |", "|---|---|---|"]
    for k, v in settings.items():
        default = "reduced so that the quick run takes minutes" if run.get("quick") else "-"
        out.append(f"| {k} | {'all' if v is None else v} | {why.get(k, default)} |")
    return out


# What the papers' networks were (quoted; see REFERENCES.md), to set beside ours.
PAPER_NETWORKS = {
    "Veit": "Veit et al.: ResNet-110 (54 blocks) and its plain twin, trained with He et al.'s "
            "164-epoch recipe; stochastic depth as in Huang et al. (500 epochs)",
    "Huang": "Huang et al.: ResNet-110 (54 blocks), 500 epochs, lr 0.1 divided by 10 at epochs "
             "250 and 375, the best validation epoch of a 45k/5k split",
    "He": "He et al.: plain and residual nets of 20-110 layers (9-54 blocks), 164 epochs",
}


def networks_named(text: str, names: list[str] | None = None) -> list[str]:
    """The bundled networks (or ``names``) that ``text`` names as whole words: "resnet110"
    is not found inside "resnet110-sd"."""
    names = checkpoint.bundled_names() if names is None else names
    return [n for n in names if re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", text)]


_FALLS_SHORT = ("does not reproduce", "partly", "not comparable", "inconclusive")
_PASSES = ("reproduces", "extension: holds")


def differences(found: list[Finding]) -> list[str]:
    """For every finding that does not reproduce (or only partly): what the networks it names
    were (blocks, epochs and schedule, every deviation on their cards) beside the paper's. The
    facts a reader needs to judge why, read from the cards; no verdict is changed by them."""
    names = checkpoint.bundled_names()
    facts: dict[str, str] = {}  # one checkpoint load per network, however many findings name it

    def named(text: str) -> list[str]:
        return networks_named(text, names)

    def fact(n: str) -> str:
        if n not in facts:
            facts[n] = _network_facts(n)
        return facts[n]

    out = []
    for f in found:
        if f.verdict not in _FALLS_SHORT:
            continue
        nets = named(f.ours)
        paper = next((v for k, v in PAPER_NETWORKS.items() if f.section.startswith(k)), None)
        # the same test passed by other networks of the run: what differs between them is data
        others = [n for g in found if g is not f and g.criterion == f.criterion
                  and g.verdict in _PASSES for n in named(g.ours) if n not in nets]
        out += [f"- **{f.section}** ({f.verdict}). "
                + "; ".join(fact(n) for n in nets)
                + (f". Paper: {paper}." if paper else ".")
                + (f" The same criterion reproduces on {', '.join(dict.fromkeys(others))}."
                   if others else "")]
    if not out:
        return []
    return ["", "## Where a finding does not fully reproduce or is not comparable: what differs "
            "from the paper", "",
            "Read from the cards of the networks each finding names, beside what the paper "
            "used; the verdicts above are not adjusted by any of this.", "", *out]


def _network_facts(name: str) -> str:
    loaded = checkpoint.load(name)
    card, n = loaded.card, len(blocks(loaded.model))
    w = card.get("weights")
    if w:
        how = f"published ({w.get('source')}): {w.get('recipe', '').split('; ')[-1]}"
    else:
        how = (f"ablate.train, {card.get('epochs')} epochs, "
               f"{(card.get('recipe') or {}).get('schedule')} schedule; deviations: "
               + "; ".join(card.get("deviations") or ["none"]))
        how += "".join(f"; {note}" for note in card.get("notes") or [])
        how += _last_epochs(loaded.path, card)
    return f"{name}: {n} {units(models.family(name, card, default='resnet')).split(' (')[0]}, {how}"


def _last_epochs(weights: str | None, card: dict) -> str:
    """How far the run had got, from its log: the final train error (measured under the
    training-time regularisers: dropped blocks, mixing) and the test error's last five epochs,
    which say whether the schedule ended before the net had fit its data."""
    log = Path(weights).with_name(card["log"]) if weights and card.get("log") else None
    if log is None or not log.is_file():
        return ""
    df = pd.read_csv(log)
    if not {"train_error", "test_error"} <= set(df.columns) or df.empty:
        return ""
    last = df.tail(5)
    test = ", ".join(f"{100 * v:.2f}" for v in last["test_error"])
    return (f"; at its last epoch ({int(df['epoch'].iloc[-1])}): train error "
            f"{pct(df['train_error'].iloc[-1])} (as trained, with its regularisers on), test "
            f"error over the last {len(last)} epochs {test}%")


def _plan(run: dict) -> list[str]:
    p = Plan.read(run.get("plan") or {})
    return [] if p is None else [f"- Plan: {p.describe()}",
                                 *(f"- Plan note: {n}" for n in p.notes)]


# --- Transformers beside a ResNet: do a ViT's blocks behave like an ensemble? ------------------

REFERENCE = "resnet56"  # the ResNet of the same run, measured alike on the same images
ENSEMBLE_FACTOR = 2  # "much like its ensemble": median single-deletion damage at most twice its
_BRANCH = {"attn": "attention", "mlp": "MLP"}


def pooled(root: Path) -> list[str]:
    """One line per results table holding rows of two or more checkpoints of one model (rows
    added by hand after new weights were bundled): its findings would pool different nets."""
    out = []
    for e in registry.experiments():
        df, _ = read(root, e.name)
        if df is None or not {"model", "checkpoint_sha256"} <= set(df.columns):
            continue
        n = df.groupby("model")["checkpoint_sha256"].nunique()
        for model in n[n > 1].index:
            out.append(f"results/{e.name} holds rows of {n[model]} checkpoints of {model}: its "
                       "findings pool them; run `python -m ablate reproduce` to retire the "
                       "replaced one's rows")
    return out


def _retired(run: dict) -> list[str]:
    """The checkpoints whose rows ``reproduce`` moved out when new weights were bundled under
    their names: what they measured, so a reader can tell a training budget from a finding."""
    rs = run.get("retired") or []
    if not rs:
        return []
    lines = ["", "## Replaced checkpoints", "",
             "Bundled networks retrained under the same name. Their rows are in `retired/` (the "
             "same columns as `results/`), and the report on them is in this file's git history; "
             "no finding above uses them.", "",
             "| model | checkpoint | test error (images) | rows kept | measured at commit | "
             "replaced (UTC) | by |", "|---|---|---|---|---|---|---|"]
    for r in rs:
        err = (f"{100 * r['test_error']:.2f}% ({r['n_images']:,})" if "test_error" in r
               else "not measured")
        rows = ", ".join(f"{a} {n}" for a, n in r.get("rows", {}).items())
        commit = str(r.get("measured_commit") or "unknown")[:10]
        lines.append(f"| {r['model']} | {r['checkpoint_sha256'][:12]} | {err} | {rows} | "
                     f"{commit} | {r.get('replaced_utc', '')} | "
                     f"{str(r.get('replaced_by', ''))[:12]} |")
    return lines


def _vits(root: Path) -> tuple[list[str], pd.DataFrame, pd.DataFrame] | None:
    """The transformers of the single-deletion table, its whole-block rows and its branch rows
    (``delete_block --branches``); None when it holds no transformer."""
    path = root / "results" / delete_block.EXPERIMENT.name / "results.csv"
    if not path.exists():
        return None
    df = pd.read_csv(path, usecols=lambda c: c not in ("correct", "intact_correct"))
    vits = [m for m, d in df.groupby("model", sort=False)
            if "vit" in set(d.family) or models.family(m, default="") == "vit"]
    if not vits:
        return None
    whole = whole_blocks(df)
    return vits, whole, df.drop(whole.index)


def transformer_section(root: Path) -> list[str]:
    """REPRODUCTION.md's section on the transformers: each one's single-block deletions block by
    block (and branch by branch), then :func:`ensemble_answers`; none without a transformer."""
    found = _vits(root)
    if found is None:
        return []
    vits, whole, branches = found
    lines = ["", "## Do a ViT's blocks behave like an ensemble?", ""]
    for m in vits:
        d = delete_block.deletion_tests(whole[whole.model == m].sort_values("block"))
        eq = d.equivalent.tolist()
        worst = d.loc[d.error_change.idxmax()]
        lines += [f"`{m}` (intact {d.intact_error.iloc[0]:.2%} test error, "
                  f"{int(d.n_images.iloc[0]):,} images of `{d.dataset.iloc[0]}`): {sum(eq)} of "
                  f"{len(d)} blocks equivalent to the intact net within "
                  f"±{100 * EQUIVALENCE_MARGIN:g} point when deleted alone; {int(d.hurts.sum())} "
                  f"raise its error significantly (exact McNemar, Holm over {len(d)} blocks, "
                  f"p < {ALPHA:g}); the most fragile is {worst.block_name} "
                  f"({100 * worst.error_change:+.2f} points).", "",
                  "| block deleted | error | change (points) | 95% paired interval | p (Holm) | "
                  f"within ±{100 * EQUIVALENCE_MARGIN:g} point |", "|---|---|---|---|---|---|"]
        lines += [f"| {r.block_name} | {r.error:.2%} | {100 * r.error_change:+.2f} | "
                  f"{100 * r.change_low:+.2f} to {100 * r.change_high:+.2f} | {r.p_holm:.2g} | "
                  f"{'yes' if e else 'no'} |" for r, e in zip(d.itertuples(), eq, strict=True)]
        lines.append("")
        lines += _branch_lines(d, branches[branches.model == m])
    return lines + _answers(root, vits, whole, branches)


def ensemble_answers(root: Path) -> list[str]:
    """One paragraph per transformer of ``root``'s tables: do its blocks behave like an ensemble
    (as ``REFERENCE``'s do), and which are fragile? Empty when no transformer was measured."""
    found = _vits(root)
    return [] if found is None else _answers(root, *found)


def _answers(root: Path, vits: list[str], whole: pd.DataFrame, branches: pd.DataFrame
             ) -> list[str]:
    def single(m: str) -> pd.DataFrame:
        d = delete_block.deletion_tests(whole[whole.model == m].sort_values("block"))
        return d[~d.downsample.astype(bool)]

    def sweep(name: str, extra: tuple[str, ...] = ()) -> pd.DataFrame | None:
        path = root / "results" / name / "results.csv"
        return pd.read_csv(path, usecols=["model", "family", "k", "error", "n_images", *extra]
                           ) if path.exists() else None

    drops = sweep(drop_blocks.EXPERIMENT.name, ("n_candidates",))
    orders = sweep(reorder_blocks.EXPERIMENT.name)
    ref = REFERENCE if REFERENCE in set(whole.model) else None
    out = []
    for m in vits:
        d = single(m)
        worst = d.loc[d.error_change.idxmax()]
        text = (f"**Answer for `{m}`.** Deleting one of its {len(d)} blocks costs "
                f"{100 * d.error_change.median():+.2f} points at the median, and "
                f"{int(d.equivalent.sum())} of {len(d)} are equivalent to the intact net within "
                f"±{100 * EQUIVALENCE_MARGIN:g} point")
        if ref:
            r = single(ref)
            text += (f" (`{ref}`: {100 * r.error_change.median():+.2f} at the median over its "
                     f"{len(r)} non-downsampling blocks, {int(r.equivalent.sum())} equivalent)")
        text += (f". The fragile block is {worst.block_name} "
                 f"({100 * worst.error_change:+.2f} points)")
        b = branches[(branches.model == m) & (branches.layer == worst.block)] if (
            "layer" in branches) else branches.iloc[:0]
        if len(b) == 2:
            by = {r.branch: 100 * r.error_change for r in b.itertuples()}
            text += (f", and it is fragile through its {_BRANCH[max(by, key=by.get)]} branch "
                     f"(attention alone {by['attn']:+.2f}, MLP alone {by['mlp']:+.2f})")
        text += "."
        if drops is not None and (drops.model == m).any():
            s = drop_blocks.summary(drops[drops.model == m]).sort_values("k")
            e = s.mean_error.to_numpy()
            text += (f" Error rises with every further block deleted ({100 * e[0]:.1f}% intact "
                     f"to {100 * e[-1]:.1f}% with all {int(s.k.iloc[-1])} gone, on "
                     f"{int(drops.n_images.iloc[0]):,} images), in steps of up to "
                     f"{100 * (e[1:] - e[:-1]).max():.1f} points")
        if orders is not None and {m, ref} <= set(orders.model):
            one = orders[orders.k <= 1].groupby(["model", "k"]).error.mean()
            text += (f"; one swap of two blocks costs {100 * (one[m, 1] - one[m, 0]):+.1f} "
                     f"points (`{ref}`: {100 * (one[ref, 1] - one[ref, 0]):+.1f})")
        if ref:  # judged against the ResNet measured alike, not against a typed-in number
            ensemble = (d.error_change.median()
                        <= ENSEMBLE_FACTOR * single(ref).error_change.median())
            text += (f"; so its blocks behave much like {ref}'s ensemble" if ensemble else
                     "; so its blocks do not behave like an ensemble of shallow paths as "
                     f"`{ref}`'s do: each one matters, and their order matters")
        out += ["", f"{text}."]
    return out[1:]


def _branch_lines(whole: pd.DataFrame, rows: pd.DataFrame) -> list[str]:
    """Each layer's whole-block deletion beside deleting its attention or its MLP branch alone,
    Holm over the model's branches; none without branch rows."""
    if rows.empty:
        return []
    d = delete_block.deletion_tests(rows.sort_values("block"))
    worst = d.loc[d.error_change.idxmax()]
    cell = {(int(r.layer), r.branch): f"{100 * r.error_change:+.2f}{'*' if h else ''}"
            for r, h in zip(d.itertuples(), d.hurts, strict=True)}
    lines = [f"Deleting one branch alone (`--branches`): {int(d.equivalent.sum())} of {len(d)} "
             f"branches equivalent to the intact net within ±{100 * EQUIVALENCE_MARGIN:g} point, "
             f"{int(d.hurts.sum())} raise its error significantly (exact McNemar, Holm over "
             f"{len(d)} branches, p < {ALPHA:g}; marked *); the most fragile is "
             f"{worst.block_name} ({100 * worst.error_change:+.2f} points).", "",
             "| layer | whole block deleted (points) | attention branch only | MLP branch only |",
             "|---|---|---|---|"]
    for r in whole.itertuples():
        attn, mlp = (cell.get((r.block, br), "n/a") for br in ("attn", "mlp"))
        lines.append(f"| {r.block} | {100 * r.error_change:+.2f} | {attn} | {mlp} |")
    return [*lines, ""]


def write_report(root: str | Path) -> Path:
    """Regenerate ``root/REPRODUCTION.md`` from the tables under ``root/results``."""
    root = Path(root)
    run = json.loads((root / "run.json").read_text()) if (root / "run.json").exists() else {}
    # The header's data, hardware and code come from the first table that has its metadata (a
    # partial run may have only some).
    metas = [m for a in registry.names()
             for m in [read(root, a)[1]] if m]
    m0 = metas[0] if metas else {}
    data = m0.get("data", {})
    lines = [
        "# Reproduction report",
        "",
        "Generated by `python -m ablate.reproduce` from the tables under `results/`; do not edit.",
        "",
        f"- Data: `{data.get('name')}` {data.get('split')} split (sha256 "
        f"{str(data.get('sha256'))[:12]}); the images each finding used are in its last column"
        + (" (**quick run: reduced images and samples**)" if run.get("quick") else ""),
        f"- Hardware: {'; '.join(dict.fromkeys(d for m in metas for d in devices(m)))}; "
        f"versions: torch {m0.get('versions', {}).get('torch')}",
        f"- Code: commit {m0.get('git_commit')}; generated {m0.get('utc')}",
        "- Wall time per analysis (min, summed over resumed invocations): "
        + ", ".join(f"{k} {float(v) / 60:.1f}" for k, v in wall_seconds(run).items()),
        *_plan(run),
        *(f"- **Warning**: {w}" for w in pooled(root)),
        "",
        *([("The data set is a JPEG (quality 75) copy of CIFAR-10: absolute errors are not "
            "comparable with the papers' pristine CIFAR-10 numbers; the findings are about shapes "
            "and orderings, which are."), ""] if data.get("name") == "cifar10-jpeg" else []),
        "Each verdict applies the one-line criterion beside it to the tables. " + VOCABULARY
        + " Deleted \"units\" are residual blocks (two layers) or plain layers (one): k units "
        "are not k layers across families.",
        "",
        "## Networks",
        "",
        *_models(),
        "",
        "## Findings",
        "",
        "| source | the paper | ours | verdict | criterion | measured on |",
        "|---|---|---|---|---|---|",
    ]
    found = _pending(_by_analysis(root), run, root)
    for a, f in found:
        lines.append(f"| {f.section} | {f.claim} | {f.ours} | **{f.verdict}** | {f.criterion} "
                     f"| {f.measured or _measured(root, f.table or a, run)} |")
    lines += differences([f for _, f in found])
    lines += transformer_section(root)
    for e in registry.experiments():  # an experiment's own section (the LM's per-layer table)
        if e.section is not None:
            lines += e.section(root)
    lines += _retired(run)
    lines += _sizes(run)
    figs = sorted(str(p.relative_to(root)) for p in root.glob("results/*/*.png"))
    if figs:
        lines += ["", "## Figures", ""] + [f"![{Path(p).stem}]({p})" for p in figs]
    return write_text(root / "REPRODUCTION.md", "\n".join(lines) + "\n")
