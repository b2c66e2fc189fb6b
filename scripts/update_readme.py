"""Fill README.md's generated blocks from measured files, never by hand.

- ``models``: the bundled checkpoints' table, from their cards (``ablate/checkpoints/*.json``).
- ``main-job``: the README's main job, from the run folder of ``python -m ablate.delete_block``
  (its ``results.csv`` and ``meta.json``: errors, the damage per block, the wall time).
- ``gallery``: the verdicts and figures of ``reproduction/`` (the full run) once every analysis
  of its plan has finished (``run.json``: complete), else of ``reproduction-quick/``.
- ``benchmarks``: one line per ``benchmarks/*.json`` written by ``benchmarks/train_speed.py`` or
  ``benchmarks/lesion_sweep.py``.
- ``vit``: do a ViT's blocks behave like an ensemble, and which are fragile? From the full
  reproduction's tables (Veit Figs. 3, 5a, 5b on each bundled ``vit*`` beside ``resnet56``).

Each block sits between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``. Usage:

    python scripts/update_readme.py [--main-job runs/delete_block/resnet56+plain56]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
CARDS = ROOT / "ablate" / "checkpoints"


def models_table() -> str:
    rows = ["| name | network | trained by | test error, pristine CIFAR-10 (measured) | "
            "published | recipe |", "|---|---|---|---|---|---|"]
    own = []
    for path in sorted(CARDS.glob("*.json"), key=lambda p: (len(p.stem), p.stem)):
        card = json.loads(path.read_text())
        err = card.get("test_error", card.get("final_test_error"))
        w = card.get("weights")
        if w is None:
            own.append(card)
            continue
        rows.append(f"| `{card['name']}` | {card['arch']} | [{w['source']}]"
                    f"(https://github.com/{w['source']}) @ {w['commit']}, {w['license']} | "
                    f"{err:.2%} | {w['published_error']:.2f}% | {w['recipe'].split(', SGD')[0]} |")
    out = "\n".join(rows)
    if own:
        lines = ["| name | network | test error, pristine CIFAR-10 (fp32) | epochs | "
                 "trained on | wall time |", "|---|---|---|---|---|---|"]
        for c in own:
            where = "; ".join(f"{r['device']}, epochs {r['epochs']}, "
                              f"{'bf16' if r['amp'] == 'bf16' else 'fp32'}"
                              for r in c.get("precision_by_epochs") or []) or c.get("device", "?")
            sd = " + stochastic depth (linear, p_L 0.5)" if c.get("stochastic_depth") else ""
            lines.append(f"| `{c['name']}` | {c['arch']}{sd} | {c['final_test_error']:.2%} | "
                         f"{c['epochs']} ({c['recipe']['schedule']}) | {where} | "
                         f"{c['train_seconds'] / 3600:.1f} h |")
        out += "\n\nTrained by ablate (`python -m ablate.train`):\n\n" + "\n".join(lines)
        out += "".join(_sd_against_constant(own))
    return out


def _sd_against_constant(own: list[dict]) -> list[str]:
    """Each own-trained NAME-sd beside its constant-depth twin NAME, from the two cards."""
    import sys

    sys.path.insert(0, str(ROOT))
    from figures.verdicts_paths import HUANG_2016

    cards = {c["name"]: c for c in own}
    out = []
    for name, sd in cards.items():
        const = cards.get(name.removesuffix("-sd")) if name.endswith("-sd") else None
        if const is None:
            continue
        e = {c["name"]: c["final_test_error"] for c in (const, sd)}
        gap = 100 * (e[sd["name"]] - e[const["name"]])
        out.append(
            f"\n\nStochastic against constant depth, trained alike ({sd['epochs']} "
            f"{sd['recipe']['schedule']} epochs, seed {sd['seed']}; Huang et al. trained 500): "
            f"`{const['name']}` {e[const['name']]:.2%}, `{sd['name']}` {e[sd['name']]:.2%} test "
            f"error, {gap:+.2f} points (Huang et al., ResNet-110: {HUANG_2016['constant_110']}% "
            f"-> {HUANG_2016['stochastic_110']}%). One seed each; the paired test on the same "
            "images is Huang et al. Table 1 in `reproduction/REPRODUCTION.md`.")
    return out


def main_job(folder: Path) -> str:
    df = pd.read_csv(folder / "results.csv")
    meta = json.loads((folder / "meta.json").read_text())
    n = meta["data"]["n_images"]
    lines = [f"Measured by the command above ({n} images of `{meta['data']['name']}`; "
             f"{meta['device']}; {meta['wall_seconds'] / 60:.1f} min of wall time):",
             "",
             "| model | intact error | median error, one unit deleted | non-downsampling units: "
             "median change | downsampling units: change | worst unit |",
             "|---|---|---|---|---|---|"]
    for model, d in df.groupby("model", sort=False):
        worst = d.loc[d.error.idxmax()]
        down = d[d.downsample.astype(bool)]
        rest = d[~d.downsample.astype(bool)]
        downs = ", ".join(f"{r.block_name} {100 * r.error_change:+.1f}" for r in down.itertuples())
        lines.append(f"| {model} | {d.intact_error.iloc[0]:.2%} | {d.error.median():.2%} | "
                     f"{100 * rest.error_change.median():+.2f} points | {downs or '-'} | "
                     f"{worst.block_name}: {worst.error:.1%} |")
    return "\n".join(lines)


def _train_speed(r: dict) -> str:
    line = (f"training steps of {r['model']}, batch {r['batch_size']}, {r['steps']} steps after "
            f"{r['warmup_steps']} ({r['device']}, torch {r['torch']}): ablate's trainer "
            f"{r['ours_images_per_s']:.0f} images/s ({r['precision_choice']})")
    if r.get("baseline_images_per_s"):
        line += (f" against {r['baseline_images_per_s']:.0f} for a torchvision DataLoader loop "
                 f"in fp32 ({r['baseline_workers']} workers): {r['ratio']:.2f}x")
    if r.get("sd_images_per_s"):
        line += (f"; its stochastic-depth twin (linear to 0.5) {r['sd_images_per_s']:.0f} "
                 f"images/s, {r['sd_time_saving']:.0%} less time per step (Huang et al.: about "
                 "25%: the expected share of the L blocks skipped is (L + 1) / 4L)")
    return line


def _lesion_sweep(r: dict) -> str:
    line = (f"every single-block deletion of {r['model']} ({r['deletions']} deletions x "
            f"{r['n_images']:,} images, {r['device']}, torch {r['torch']}): batched engine "
            f"{r['engine_s']:.1f} s")
    if "naive_s" in r:
        line += (f" against {r['naive_s']:.1f} s for one pass per deletion, {r['speedup']:.2f}x; "
                 f"error counts {'identical' if r['errors_agree'] else 'DIFFERENT'}")
    if "engine_bf16_s" in r:
        line += (f"; under bf16 autocast (opt-in{', native' if r['bf16_native'] else ''}) "
                 f"{r['engine_bf16_s']:.1f} s, intact errors {r['intact_errors_bf16']} against "
                 f"{r['intact_errors_fp32']} in fp32, {r['bf16_deletions_with_changed_count']} "
                 f"of {r['deletions']} deletions' error counts changed (at most by "
                 f"{r['bf16_error_count_max_diff']})")
    return line


def benchmarks() -> str:
    lines = []
    for path in sorted((ROOT / "benchmarks").glob("*.json")):
        r = json.loads(path.read_text())
        text = _train_speed(r) if "ours_images_per_s" in r else (
            _lesion_sweep(r) if "engine_s" in r else None)
        if text:
            lines.append(f"- {text} ([`{path.name}`](benchmarks/{path.name})).")
    return "\n".join(lines) or "No benchmark results are committed yet."


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def gallery(root: Path | None = None) -> str:
    """Verdicts and figures of the full reproduction if there is one, else of the quick one."""
    import sys

    sys.path.insert(0, str(ROOT))
    from figures.report import findings

    full = ROOT / "reproduction"
    done = (full / "run.json").exists() and json.loads((full / "run.json").read_text()).get(
        "complete")
    root = root or (full if done else ROOT / "reproduction-quick")
    run = json.loads((root / "run.json").read_text()) if (root / "run.json").exists() else {}
    from figures.report import wall_seconds

    wall = wall_seconds(run)
    argv = " ".join(_whole_run(run.get("argv", [])))
    lines = [f"`python -m ablate.reproduce {argv}`".replace(" `", "`") + " wrote "
             f"[`{root.name}/REPRODUCTION.md`]({root.name}/REPRODUCTION.md) "
             f"({'quick run: reduced images and samples; ' if run.get('quick') else ''}"
             f"{_duration(sum(map(float, wall.values())))} of wall time in all). Its verdicts, "
             "each with its one-line criterion there:", "",
             "| finding | verdict |", "|---|---|"]
    lines += [f"| {f.section}: {_networks(f.ours)} | {f.verdict} |" for f in findings(root)]
    pngs = sorted(root.glob("results/*/*.png"))
    lines += ["", "| | |", "|---|---|"]
    for i in range(0, len(pngs), 2):
        pair = pngs[i:i + 2]
        lines.append("| " + " | ".join(f"**{p.stem}**<br>![{p.stem}]({p.relative_to(ROOT)})"
                                       for p in pair) + (" | |" if len(pair) == 1 else " |"))
    return "\n".join(lines)


def _whole_run(argv: list[str]) -> list[str]:
    """The last invocation's arguments without ``--only A B ...``: the command of the whole run
    (a step rerun alone resumes it; the rest of the run is reused, not recomputed)."""
    out, skipping = [], False
    for a in argv:
        if a == "--only":
            skipping = True
        elif not (skipping and not a.startswith("-")):
            skipping = False
            out.append(a)
    return out


def _networks(ours: str) -> str:
    """The bundled networks a finding names (its first clause where it names none)."""
    from figures.report import networks_named

    names = networks_named(ours)
    if not names:
        return ours.split(":")[0][:60]
    return ", ".join(names) if len(names) <= 3 else f"{len(names)} networks"


def vit_answer(root: Path | None = None) -> str:
    """The ViTs' single-block deletions, block by block, and their Fig. 3/5a/5b verdicts beside
    resnet56's, read from ``root`` (default ``reproduction/``) once a ViT has been analysed."""
    import sys

    sys.path.insert(0, str(ROOT))
    from figures.verdicts import ALPHA, EQUIVALENCE_MARGIN
    from figures.verdicts_lesion import delete_block, deletion_tests, drop_blocks, reorder_blocks
    from figures.verdicts_redundancy import redundancy

    root = root or ROOT / "reproduction"
    table = root / "results" / "delete_block" / "results.csv"
    df = pd.read_csv(table, usecols=lambda c: c not in ("correct", "intact_correct")) if (
        table.exists()) else None
    vits = [] if df is None else [m for m in df.model.unique() if m.startswith("vit")]
    if not vits:
        return (f"Not measured yet: `{root.name}/` holds no ViT. Train `vit_cifar` "
                "(`scripts/train_vit_cpu.sh`), bundle it in `ablate/checkpoints/`, and rerun "
                "`python -m ablate.reproduce`: its Figs. 3, 5a and 5b join the ResNets' there "
                "and this block is filled from those tables.")
    from analyses.delete_block import whole_blocks

    branch_rows = df.drop(whole_blocks(df).index)
    df = whole_blocks(df)
    lines = []
    for m in vits:
        d = deletion_tests(df[df.model == m].sort_values("block"))
        n = int(d.n_images.iloc[0])
        eq = d.equivalent.tolist()
        hurt = d[d.hurts]
        worst = d.loc[d.error_change.idxmax()]
        lines += [f"`{m}` (intact {d.intact_error.iloc[0]:.2%} test error, {n:,} images of "
                  f"`{d.dataset.iloc[0]}`): {sum(eq)} of {len(d)} blocks equivalent to the intact "
                  f"net within ±{100 * EQUIVALENCE_MARGIN:g} point when deleted alone; "
                  f"{len(hurt)} raise its error significantly (exact McNemar, Holm over "
                  f"{len(d)} blocks, p < {ALPHA:g}); the most fragile is "
                  f"{worst.block_name} ({100 * worst.error_change:+.2f} points).", "",
                  "| block deleted | error | change (points) | 95% paired interval | p (Holm) | "
                  f"within ±{100 * EQUIVALENCE_MARGIN:g} point |", "|---|---|---|---|---|---|"]
        lines += [f"| {r.block_name} | {r.error:.2%} | {100 * r.error_change:+.2f} | "
                  f"{100 * r.change_low:+.2f} to {100 * r.change_high:+.2f} | {r.p_holm:.2g} | "
                  f"{'yes' if e else 'no'} |" for r, e in zip(d.itertuples(), eq, strict=True)]
        lines.append("")
        lines += _branch_lines(m, d, branch_rows[branch_rows.model == m])
    lines += _answer(root, vits, df, branch_rows)
    shown = [*vits, "resnet56"]
    lines += ["Veit et al.'s ensemble findings on them, and whether Block Influence and angular "
              "distance rank blocks by deletion damage, judged as in "
              f"[`{root.name}/REPRODUCTION.md`]({root.name}/REPRODUCTION.md):", "",
              "| finding | network | verdict | measured |", "|---|---|---|---|"]
    for f in [*delete_block(root), *drop_blocks(root), *reorder_blocks(root),
              *redundancy(root)]:
        net = f.ours.split(":")[0]
        if net in shown and "(plain)" not in f.section:
            lines.append(f"| {f.section} | `{net}` | {f.verdict} | "
                         f"{f.ours.split(':', 1)[1].strip()} |")
    return "\n".join(lines).rstrip()


_BRANCH = {"attn": "attention", "mlp": "MLP"}


def _answer(root: Path, vits: list[str], whole: pd.DataFrame, branches: pd.DataFrame) -> list[str]:
    """The issue's question in one paragraph per ViT, from the tables: do its blocks behave like
    an ensemble (as resnet56's do), and which are fragile?"""
    from analyses.drop_blocks import summary
    from figures.verdicts import EQUIVALENCE_MARGIN
    from figures.verdicts_lesion import deletion_tests

    def single(m: str) -> pd.DataFrame:
        d = deletion_tests(whole[whole.model == m].sort_values("block"))
        return d[~d.downsample.astype(bool)]

    def sweep(step: str) -> pd.DataFrame | None:
        path = root / "results" / step / "results.csv"
        return pd.read_csv(path, usecols=["model", "family", "k", "error", "n_images",
                                          *(["n_candidates"] if step == "drop_blocks" else [])],
                           ) if path.exists() else None

    drops, orders = sweep("drop_blocks"), sweep("reorder_blocks")
    ref = "resnet56" if "resnet56" in set(whole.model) else None
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
            s = summary(drops[drops.model == m]).sort_values("k")
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
            ensemble = d.error_change.median() <= 2 * single(ref).error_change.median()
            text += ("; so its blocks behave much like resnet56's ensemble" if ensemble else
                     "; so its blocks do not behave like an ensemble of shallow paths as "
                     f"`{ref}`'s do: each one matters, and their order matters")
        out += [f"{text}.", ""]
    return out


def _branch_lines(model: str, whole: pd.DataFrame, rows: pd.DataFrame) -> list[str]:
    """Each layer's whole-block deletion beside deleting its attention or its MLP branch alone
    (``delete_block --branches``), Holm over the model's branches; none without such rows."""
    if rows.empty:
        return []
    from figures.verdicts import ALPHA, EQUIVALENCE_MARGIN
    from figures.verdicts_lesion import deletion_tests

    d = deletion_tests(rows.sort_values("block"))
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


def fill(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no <!-- {name}:start/end --> block")
    return pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--main-job", type=Path, help="run folder of the README's main job")
    args = ap.parse_args()
    readme = ROOT / "README.md"
    text = fill(readme.read_text(), "models", models_table())
    text = fill(text, "gallery", gallery())
    text = fill(text, "benchmarks", benchmarks())
    text = fill(text, "vit", vit_answer())
    if args.main_job:
        text = fill(text, "main-job", main_job(args.main_job))
    readme.write_text(text)
    print(f"updated {readme}")


if __name__ == "__main__":
    main()
