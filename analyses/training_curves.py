"""Training logs (``NAME.log.csv`` or a run's ``log.csv``, written by ``python -m ablate.train``)
as one tidy table: model, family, epoch, metric, value; and the epochs where the learning rate
dropped (Huang et al. 2016, Fig. 7 marks them).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ablate import models
from ablate._infra.errors import UsageError, check_out
from ablate.measures.stats import mcnemar_exact, paired_bootstrap
from ablate.models import checkpoint
from analyses.options import Base, flag
from analyses.plan import Plan, Settings
from analyses.registry import Experiment, Result
from analyses.table import Table
from analyses.verdicts import (
    MIN_BUDGET_SHARE,
    ONE_SEED,
    Finding,
    budget,
    fig,
    judged,
    pct,
    per_image_wrong,
    points,
    read,
    scope,
    twins,
)

__all__ = ["EXPERIMENT", "FIRST_CONV", "lr_drops", "model_name", "read_log", "read_logs"]

FIRST_CONV = "grad_mean_abs_first_block_conv1"  # Huang et al. Fig. 7's quantity


def model_name(path: Path) -> str:
    """``NAME.log.csv`` -> NAME; a run folder's ``log.csv`` -> the folder's name."""
    if path.name == "log.csv":
        return path.resolve().parent.name
    return path.name.removesuffix(".csv").removesuffix(".log")


def _card(path: Path, name: str) -> dict:
    for p in (path.with_name(f"{name}.json"), *sorted(path.parent.glob("*.json"))):
        try:
            card = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(card, dict) and "arch" in card:
            return card
    return {}


def read_log(path: str | Path, name: str | None = None) -> pd.DataFrame:
    """One trainer log as tidy rows (every numeric column but ``epoch`` and flags is a metric)."""
    path = Path(path)
    if path.is_dir():  # a run folder: its log.csv
        if not (path / "log.csv").is_file():
            raise UsageError(f"{path} is a folder without a log.csv: pass a trainer log "
                             "(NAME.log.csv) or a run folder")
        path = path / "log.csv"
    if not path.exists():
        raise UsageError(f"training log {path} does not exist: check the path")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UsageError(f"{path} is not a readable CSV log ({str(e).splitlines()[0]})") from None
    if "epoch" not in df.columns or df.empty:
        raise UsageError(f"{path} is not a training log: it has no 'epoch' column or no rows")
    epoch = pd.to_numeric(df["epoch"], errors="coerce")
    if epoch.isna().any() or not (epoch == epoch.round()).all():
        bad = df["epoch"][epoch.isna() | (epoch != epoch.round())].iloc[0]
        raise UsageError(f"{path}: epoch {bad!r} is not a whole number; a trainer log has "
                         "epochs 1, 2, ...")
    df["epoch"] = epoch.astype(int)
    name = name or model_name(path)
    card = _card(path, name)
    # True/False columns (channels_last) describe how an epoch ran; they are not measurements
    metrics = [c for c in df.columns if c != "epoch" and pd.api.types.is_numeric_dtype(df[c])
               and not pd.api.types.is_bool_dtype(df[c])]
    long = df.melt(id_vars="epoch", value_vars=metrics, var_name="metric", value_name="value")
    long.insert(0, "family", models.family(name, card, default="resnet"))
    long.insert(0, "model", name)
    long["source"] = str(path)
    return long


def read_logs(paths: Sequence[str | Path], names: Sequence[str] | None = None) -> pd.DataFrame:
    if names is not None and len(names) != len(paths):
        raise UsageError(f"{len(names)} names for {len(paths)} logs: give one per log")
    frames = [read_log(p, names[i] if names else None) for i, p in enumerate(paths)]
    df = pd.concat(frames, ignore_index=True)
    seen = df.drop_duplicates(["model", "source"])["model"]
    if seen.duplicated().any():
        raise UsageError(f"two logs are both called {seen[seen.duplicated()].iloc[0]!r}: "
                         "name them with --names")
    return df


def lr_drops(df: pd.DataFrame, model: str | None = None, factor: float = 2.0) -> list[int]:
    """Epochs whose learning rate is at least ``factor`` times below the previous epoch's after
    an epoch in which it fell by less than 10%: a step. A warm-up's rise is not a drop, nor is a
    cosine schedule's tail, whose last epochs fall by large factors but ever faster."""
    d = df[df["metric"] == "lr"]
    if model is not None:
        d = d[d["model"] == model]
    out: set[int] = set()
    for _, g in d.groupby("model"):
        g = g.sort_values("epoch")
        lr = g["value"].to_numpy(float)
        with np.errstate(divide="ignore", invalid="ignore"):
            drop = lr[1:] * factor <= lr[:-1]
            flat_before = np.r_[True, lr[1:-1] * 1.1 >= lr[:-2]]
        drop &= flat_before
        out |= set(g["epoch"].to_numpy()[1:][drop].astype(int).tolist())
    return sorted(out)


# --- Verdicts (the report's findings, read from results/<name>/) ---


HUANG_2016 = {"constant_110": 6.41, "stochastic_110": 5.25, "time_saving": 0.25}
HUANG_EPOCHS = 500  # Huang et al.'s schedule (lr drops at 250 and 375)
HE_EPOCHS = 164  # He et al.'s full CIFAR schedule (lr drops at 82 and 123): an equal budget for
# both nets at least this long is a fair test of "stochastic depth tests better"


MIN_TIME_SAVING = 0.20  # Huang et al.: about 25% less training time; we ask for at least 20%


def step_benchmarks(arch: str, folder: Path) -> list[dict]:
    """``benchmarks/train_speed.py`` records of ``arch`` that timed the stochastic-depth twin, in
    ``folder`` (a reproduction's ``benchmarks/``: the evidence travels with the tables, not with
    the source tree)."""
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
            "time per step",
            judged("holds" if saving >= MIN_TIME_SAVING else "does not hold", scope(sd, "huang")),
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
                   judged("holds" if saving >= MIN_TIME_SAVING else "does not hold",
                          scope(sd, "huang")), crit)


def equal_budget(a: dict, b: dict) -> bool:
    """Two cards trained alike: the same recipe (every hyperparameter but stochastic depth) for
    the same number of epochs, at least He et al.'s full schedule."""
    ea, eb = a.get("epochs"), b.get("epochs")
    return (ea is not None and ea == eb and int(ea) >= HE_EPOCHS
            and isinstance(a.get("recipe"), dict) and a.get("recipe") == b.get("recipe"))


def _table1(root: Path, cards: dict, const: str, sd: str) -> Finding:
    claim = (f"ResNet-110 on CIFAR-10+: {HUANG_2016['constant_110']}% constant depth, "
             f"{HUANG_2016['stochastic_110']}% stochastic depth ({HUANG_EPOCHS} epochs).")
    least = MIN_BUDGET_SHARE * HUANG_EPOCHS
    crit = (f"comparable if both nets trained at least {least:g} of Huang's {HUANG_EPOCHS} "
            f"epochs, or both on one recipe for the same number of epochs, at least He et al.'s "
            f"full {HE_EPOCHS} (equal budget; else: not comparable); then {sd} minus {const} test "
            f"error: 95% paired bootstrap interval on the same test images entirely below 0 "
            f"(exact McNemar p reported); {ONE_SEED}")
    df, _ = read(root, "delete_block")
    if df is None or "intact_correct" not in df or not {const, sd} <= set(df.model):
        e = {m: cards[m].get("final_test_error") for m in (const, sd)}
        return Finding("Huang et al. Table 1", claim, f"cards only: {const} {pct(e[const])}, "
                       f"{sd} {pct(e[sd])}; no per-image outcomes to pair", "not run", crit)
    w = {m: per_image_wrong(df[df.model == m].iloc[:1], "intact_correct")[0] for m in (const, sd)}
    diff, lo, hi = paired_bootstrap(w[const].astype(float), w[sd].astype(float))
    p = mcnemar_exact(torch.from_numpy(~w[const]), torch.from_numpy(~w[sd]))
    epochs = {m: cards[m].get("epochs") for m in (const, sd)}
    short = [m for m, e in epochs.items() if e is not None and int(e) < least]
    ours = (f"{const} {pct(w[const].mean())}, {sd} {pct(w[sd].mean())} on the same "
            f"{w[sd].size} images: difference {points(diff)} points (95% paired interval "
            f"{points(lo)} to {points(hi)}; McNemar p = {p:.2g})")
    if short and equal_budget(cards[const], cards[sd]):
        ours += (f". Budget: both trained {int(epochs[const])} epochs of one recipe "
                 f"({cards[const]['recipe'].get('schedule')} schedule), judged at equal budget; "
                 f"Huang et al. trained {HUANG_EPOCHS}")
        short = []
    if short:
        spent = budget(dict.fromkeys((const, sd), HUANG_EPOCHS)) or "; ".join(
            f"{m} trained {epochs[m]} epochs" for m in (const, sd))
        return Finding("Huang et al. Table 1", claim,
                       f"{ours}. Budget: {spent}: stochastic depth is a regulariser whose gain "
                       "Huang et al. report after a long schedule", "not comparable", crit,
                       table="delete_block")
    return Finding("Huang et al. Table 1", claim, ours,
                   judged("holds" if hi < 0 else "does not hold", scope(sd, "huang")), crit,
                   table="delete_block")


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
    verdict = judged("holds" if n and larger == n else
                     "partly" if 2 * larger > n else "does not hold", scope(sd, "huang"))
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


def verdicts(root: Path) -> list[Finding]:
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
    bench = step_benchmarks(cards[const].get("arch", const), root / "benchmarks")
    return [_table1(root, cards, const, sd), time_saving(cards, const, sd, bench),
            *_fig7(root, const, sd, cards)]



# --- The command -----------------------------------------------------------------------------
#   python -m ablate training_curves runs/resnet110.log.csv runs/resnet110-sd.log.csv --out DIR
# Reads the trainer's per-epoch logs (a NAME.json card beside a log tells constant from
# stochastic depth) and writes results.csv (model, family, epoch, metric, value), meta.json and
# training_curves.pdf/.png.


@dataclass
class Options(Base):
    logs: list[str] = flag([], "trainer logs (NAME.log.csv or a run folder's log.csv)",
                           positional=True, metavar="LOG.csv")
    names: list[str] | None = flag(None, "a display name per log")
    note: str | None = flag(None, "caption on the figure")


def measure(o: Options) -> Result:
    if not o.logs:
        raise UsageError("name at least one trainer log: python -m ablate training_curves "
                         "runs/NAME/log.csv")
    out = check_out(o.out or "runs/training_curves")
    table = Table(out / "results.csv", ("model", "epoch", "metric"))  # refuses a foreign table
    df = read_logs([Path(p) for p in o.logs], o.names)
    table.replace(df, by=("model",))  # other models' rows stay
    models_ = df.drop_duplicates("model")
    meta = {
        "logs": [{"model": m, "family": f, "log": s}
                 for m, f, s in models_[["model", "family", "source"]].itertuples(index=False)],
        "lr_drop_epochs": lr_drops(df),
    }
    return Result(out, df, meta, note=o.note, summary=lambda: _summary(df))


def _summary(df: pd.DataFrame) -> None:
    for model, d in df.groupby("model", sort=False):
        err = d[d["metric"] == "test_error"].sort_values("epoch")["value"]
        g = d[d["metric"] == FIRST_CONV]["value"]
        epochs = int(d["epoch"].max())
        best = f"best test error {err.min():.2%}" if not err.empty else "no test error"
        grad = f", mean |grad| of the first block's conv1 {g.mean():.3g}" if not g.empty else ""
        print(f"{model}: {epochs} epochs, {best}{grad}")


def bundled_logs(p: Plan) -> list[str]:
    """The trainer logs of the plan's residual nets that ship one (Huang's Fig. 7 analogue)."""
    names = dict.fromkeys([*(p.stochastic or ()), *p.resnets])
    logs = [checkpoint.bundled_dir() / f"{m}.log.csv" for m in names]
    return [str(f) for f in logs if f.exists()]


def reproduce(p: Plan, s: Settings) -> Options | None:
    """Fig. 7's analogue from the bundled ResNets' training logs (none shipped: not run)."""
    logs = bundled_logs(p)
    return Options(logs=logs) if logs else None


EXPERIMENT = Experiment(
    name="training_curves", paper="Huang et al. 2016, Fig. 7", run=read_logs, key=None,
    options=Options, measure=measure, verdicts=verdicts, reproduce=reproduce, order=60,
    summary="gradient and error per epoch from training logs (Huang et al. 2016, Fig. 7)",
)
