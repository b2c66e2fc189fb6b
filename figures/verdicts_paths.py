"""Verdicts on path lengths and gradients (Veit Fig. 6, He/Huang gradient flow), stochastic depth
(Huang et al. Table 1, training time, Fig. 7) and the attribution comparison (ours)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import torch
from scipy import stats

from ablate.measures.stats import mcnemar_exact, paired_bootstrap
from ablate.models import checkpoint
from analyses.paths import REFERENCE
from figures.verdicts import (
    HEALTHY_GRADIENT_RATIO,
    ONE_SEED,
    Finding,
    fig,
    pct,
    per_image_wrong,
    read,
    twins,
)

__all__ = ["HUANG_2016", "MIN_TIME_SAVING", "attribution", "gradnorm", "paths",
           "step_benchmarks", "stochastic_depth", "time_saving"]

HUANG_2016 = {"constant_110": 6.41, "stochastic_110": 5.25, "time_saving": 0.25}
MIN_TIME_SAVING = 0.20  # Huang et al.: about 25% less training time; we ask for at least 20%
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


def paths(root: Path) -> list[Finding]:
    df, meta = read(root, "paths")
    if df is None:
        return [Finding("Veit Sec. 5", "paths", "-", "not run", "-")]
    from analyses.paths import summary

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
                            f"({pct(at[m][model]['share_of_paths'])} of paths)" for m in at)
        out.append(Finding(
            "Veit Fig. 6b-c",
            "Gradient magnitude falls exponentially with path length, so almost all gradient "
            f"comes from short paths: {_VEIT_RANGE[0]}-{_VEIT_RANGE[1]} blocks of "
            f"{REFERENCE['n_blocks']}, {REFERENCE['effective_range_share_of_paths']:.2%} of all "
            "paths, in ResNet-110 (for a decay like theirs 5-17 holds about 95% of the gradient; "
            "90% gives 6-15).",
            f"{model}: magnitude changes by x{s['factor_per_block']:.3g} per block (log10 slope "
            f"{s['log10_slope_per_block']:+.3f}); {windows}; peak at {s['mode_length']}",
            "reproduces" if s["log10_slope_per_block"] < 0 and r[1] < n / 2
            else "does not reproduce",
            f"negative slope, and the shortest window holding {mass:.0%} of the total gradient "
            "(--mass) ends below the mean path length n/2", fig_))
    return out


def gradnorm(root: Path) -> list[Finding]:
    """He et al. 2015, Sec. 4.1: the plain nets' degradation is "unlikely to be caused by
    vanishing gradients ... the backward propagated gradients exhibit healthy norms with BN"."""
    df, meta = read(root, "gradnorm")
    if df is None:
        return [Finding("He et al. 2015 Sec. 4.1", "gradnorm", "-", "not run", "-")]
    act = df[df["kind"] == "activation"]
    by_state = meta.get("bn_by_state") or {}
    if "bn" in act and by_state:  # the rows of the BN mode this run asked for, per state
        act = act[act.apply(lambda r: r["bn"] == by_state.get(r["state"], r["bn"]), axis=1)]
    unit_col = "unit" if "unit" in act else "block"
    rows = []
    for (model, state), d in act.groupby(["model", "state"], sort=False):
        d = d.sort_values(unit_col)
        rows.append((model, d.family.iloc[0], state,
                     float(d.grad_norm.iloc[0] / d.grad_norm.iloc[-1])))
    r = pd.DataFrame(rows, columns=["model", "family", "state", "ratio"])
    plain = r[r.family == "plain"]
    ok = [bool((s.ratio >= HEALTHY_GRADIENT_RATIO).all()) for _, s in plain.groupby("state")]
    bn = {"train": "batch", "eval": "running"}
    return [Finding(
        "He et al. 2015 Sec. 4.1",
        "With BN a deep plain net's gradients do not vanish (\"the backward propagated gradients "
        "exhibit healthy norms\"): its degradation is an optimisation difficulty, not vanishing "
        "gradients.",
        "; ".join(f"{x.model} ({x.state}"
                  + (f", BN {bn[by_state[x.state]]} statistics" if x.state in by_state else "")
                  + f"): first/last unit {x.ratio:.3g}" for x in r.itertuples())
        + " (loss gradient norm at a unit's input, first unit over last: below 1 it fades "
        "towards the input, above 1 it grows; the ResNets for comparison)",
        "not run" if not ok else "reproduces" if all(ok) else "partly" if any(ok)
        else "does not reproduce",
        f"every plain net's gradient at its first unit's input at least {HEALTHY_GRADIENT_RATIO:g}"
        " of its last unit's (no decay by an order of magnitude or more), in every state "
        "measured (init, trained)", fig(root, "gradnorm"))]


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def step_benchmarks(arch: str, folder: Path | None = None) -> list[dict]:
    """``benchmarks/train_speed.py`` records of ``arch`` that timed the stochastic-depth twin."""
    folder = folder or BENCHMARKS
    out = []
    for f in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        r = json.loads(f.read_text())
        if r.get("model") == arch and r.get("sd_images_per_s"):
            out.append(r | {"file": f.name})
    return out


def time_saving(cards: dict[str, dict], const: str, sd: str,
                bench: list[dict] | None = None) -> Finding:
    """Huang's 25% from training-step time alone (no evaluation passes), on one device.

    Preferred: ``benchmarks/train_speed.py``, which times both nets' steps alike, one after the
    other on an otherwise idle machine. Else the cards' training-step seconds, if each run was
    trained on one device in one precision (a run's own clock also counts whatever else
    shared the machine)."""
    claim = "Stochastic depth trains about 25% faster (expected depth (3L - 1)/4 of L blocks)."
    crit = (f"training-step time per image at least {MIN_TIME_SAVING:.0%} lower with stochastic "
            "depth")
    if bench:
        r = bench[-1]
        saving = 1 - r["ours_images_per_s"] / r["sd_images_per_s"]
        return Finding(
            "Huang et al. training time", claim,
            f"{r['model']} {r['ours_images_per_s']:.0f} images/s, its stochastic-depth twin "
            f"{r['sd_images_per_s']:.0f}, timed alike ({r['steps']} steps of batch "
            f"{r['batch_size']} each, same initial weights, {r['device']}, "
            f"{r['precision_choice'].split(': ')[-1]}; benchmarks/{r['file']}): {saving:.0%} less "
            "time per step", "reproduces" if saving >= MIN_TIME_SAVING else "does not reproduce",
            crit + "; timed by benchmarks/train_speed.py, both nets alike",
            measured=f"benchmarks/{r['file']}: {r['device']}, random data")
    crit += ", from both cards' training-step seconds on one device and precision"
    t = {m: cards[m].get("train_step_seconds") for m in (const, sd)}
    devices = {cards[m].get("device") for m in (const, sd)}
    mixed = [m for m in (const, sd) if len(cards[m].get("precision_by_epochs") or []) > 1]
    if None in t.values() or len(devices) != 1 or mixed:
        why = (f"{', '.join(mixed)} trained on several devices or precisions" if mixed else
               "the cards lack training-step time on one device (train_seconds includes "
               "evaluation)")
        return Finding("Huang et al. training time", claim, f"{why}, and no "
                       "benchmarks/train_speed.py record: not checked", "not run", crit)
    per = {m: t[m] / max(int(cards[m].get("epochs") or 1), 1) for m in t}
    saving = 1 - per[sd] / per[const]
    return Finding("Huang et al. training time", claim,
                   f"{const} {per[const]:.1f} s, {sd} {per[sd]:.1f} s of training steps per "
                   f"epoch on {devices.pop()}: {saving:.0%} less",
                   "reproduces" if saving >= MIN_TIME_SAVING else "does not reproduce", crit)


def _table1(root: Path, cards: dict, const: str, sd: str) -> Finding:
    claim = (f"ResNet-110 on CIFAR-10+: {HUANG_2016['constant_110']}% constant depth, "
             f"{HUANG_2016['stochastic_110']}% stochastic depth.")
    crit = (f"{sd} minus {const} test error: 95% paired bootstrap interval on the same test "
            f"images entirely below 0 (exact McNemar p reported); {ONE_SEED}")
    df, _ = read(root, "delete_block")
    if df is None or "intact_correct" not in df or not {const, sd} <= set(df.model):
        e = {m: cards[m].get("final_test_error") for m in (const, sd)}
        return Finding("Huang et al. Table 1", claim, f"cards only: {const} {pct(e[const])}, "
                       f"{sd} {pct(e[sd])}; no per-image outcomes to pair", "not run", crit)
    w = {m: per_image_wrong(df[df.model == m].iloc[:1], "intact_correct")[0] for m in (const, sd)}
    diff, lo, hi = paired_bootstrap(w[const].astype(float), w[sd].astype(float))
    p = mcnemar_exact(torch.from_numpy(~w[const]), torch.from_numpy(~w[sd]))
    return Finding("Huang et al. Table 1", claim,
                   f"{const} {pct(w[const].mean())}, {sd} {pct(w[sd].mean())} on the same "
                   f"{w[sd].size} images: difference {100 * diff:+.2f} points (95% paired "
                   f"interval {100 * lo:+.2f} to {100 * hi:+.2f}; McNemar p = {p:.2g})",
                   "reproduces" if hi < 0 else "does not reproduce", crit, table="delete_block")


def _fig7(root: Path, const: str, sd: str, cards: dict[str, dict]) -> list[Finding]:
    df, _ = read(root, "training_curves")
    if df is None:
        return []
    g = df[df.metric == "grad_mean_abs_first_block_conv1"].pivot_table(
        index="epoch", columns="model", values="value")
    if not {const, sd} <= set(g.columns):
        return []
    g = g[[const, sd]].dropna()  # the epochs both logs have
    larger = int((g[sd] > g[const]).sum())
    n = len(g)
    verdict = ("reproduces" if n and larger == n else
               "partly" if 2 * larger > n else "does not reproduce")
    return [Finding(
        "Huang et al. Fig. 7", "The mean absolute gradient of the first block's first convolution "
        "is larger with stochastic depth throughout training.",
        f"larger with stochastic depth in {larger} of {n} epochs; mean over epochs: {const} "
        f"{g[const].mean():.3g}, {sd} {g[sd].mean():.3g}", verdict,
        "larger with stochastic depth in every epoch both logs have (most but not all: partly)",
        fig(root, "training_curves"),
        measured="their training logs (" + "; ".join(
            f"{m}: {cards[m].get('epochs')} epochs on {cards[m].get('device')}"
            for m in (const, sd)) + ")")]


def stochastic_depth(root: Path) -> list[Finding]:
    pair = twins(root, [])
    if pair is None:
        return [Finding(
            "Huang et al. Table 1, Fig. 7",
            f"Stochastic depth (linear to p_L = 0.5) tests better (ResNet-110: "
            f"{HUANG_2016['constant_110']}% -> {HUANG_2016['stochastic_110']}%), trains about "
            "25% faster and keeps stronger gradients.",
            "no stochastic-depth checkpoint is bundled yet", "not run",
            "needs the resnet110 / resnet110-sd pair (python -m ablate.train, bundled)")]
    const, sd = pair
    cards = {m: checkpoint.load(m).card for m in pair}
    bench = step_benchmarks(cards[const].get("arch", const))
    return [_table1(root, cards, const, sd), time_saving(cards, const, sd, bench),
            *_fig7(root, const, sd, cards)]


def attribution(root: Path) -> list[Finding]:
    _, meta = read(root, "attribution")
    if not meta.get("spearman"):
        return [Finding("Attribution vs lesion", "-", "-", "not run", "-")]
    c = pd.DataFrame(meta["spearman"])
    c = c[c.damage == "error_change"]
    parts = [f"{r.model} {r.method} ({r.aggregate} vs {r.damage}): rho = {r.rho:.2f} "
             f"(p = {r.p_value:.2g}, {int(r.n_blocks)} units)" for r in c.itertuples()]
    return [Finding(
        "Attribution vs lesion (ours)",
        "No published number: does captum's per-block attribution predict what deleting the "
        "block does?", "; ".join(parts[:6]), "new", "Spearman rank correlation",
        fig(root, "attribution"))]
