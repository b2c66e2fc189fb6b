"""When does the ensemble emerge? Single-block deletion measured during training.

``python -m ablate train --lesion-at auto`` deletes every unit alone at chosen epochs on a fixed,
class-balanced test subset (``ablate.training.lesion``) and keeps the rows in the run folder's
``lesions.csv`` (shipped as ``NAME.lesions.csv`` beside the checkpoint). This experiment reads
those tables, one per training run, and asks of each epoch what Veit et al. (2016) ask of the
finished net: how much does deleting one block cost (the median change over the blocks that keep
the feature shape), how many blocks are equivalent to the intact net within the stated margin
(a paired TOST, ``analyses.verdicts.EQUIVALENCE_MARGIN``), and how much the downsampling blocks
cost. The learning-rate schedule comes from the run's log, so the drops can be marked.

No paper reports this: the report describes the curves (when robustness appears, what the drops
do, whether stochastic depth makes it appear earlier) and judges nothing.

    python -m ablate emergence runs/resnet110 runs/resnet110-sd      # run folders of ablate.train
    python -m ablate emergence ablate/checkpoints/resnet110.lesions.csv --names resnet110
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ablate import models
from ablate._infra.errors import UsageError, check_out
from ablate.measures.stats import tost_equivalent
from ablate.models import checkpoint
from ablate.training import lesion
from analyses.options import Base, flag
from analyses.plan import Plan, Settings
from analyses.registry import Experiment, Result
from analyses.table import Table, as_bool
from analyses.verdicts import ALPHA, EQUIVALENCE_MARGIN, Finding, fig, read

__all__ = ["EXPERIMENT", "KEY", "per_epoch", "read_runs", "verdicts"]

KEY = ("model", "epoch", "block")


def _sources(path: Path) -> tuple[Path, Path | None, Path | None]:
    """(lesion table, training log, card) of a run folder or of a ``NAME.lesions.csv``."""
    if path.is_dir():
        card = next(iter(sorted(path.glob("*.json"))), None)
        return path / lesion.TABLE, path / "log.csv", card
    stem = path.name.removesuffix(".lesions.csv").removesuffix(".csv")
    log = path.with_name(f"{stem}.log.csv")
    card = path.with_name(f"{stem}.json")
    return path, log if log.is_file() else None, card if card.is_file() else None


def _lr_by_epoch(log: Path | None) -> dict[int, float]:
    if log is None or not log.is_file():
        return {}
    df = pd.read_csv(log)
    if not {"epoch", "lr"} <= set(df.columns):
        return {}
    return {int(e): float(v) for e, v in zip(df["epoch"], df["lr"])}


def _check_same_run(table: Path, rows: list[dict], log: Path | None, lr: dict[int, float],
                    card_path: Path | None, card: dict) -> None:
    """Refuse a lesion table beside a card or log of another run (a checkpoint re-trained under
    the same name with one of its three files left behind): the epochs would be read at the wrong
    learning rates and the run named after the wrong training. A finished run's card lists the
    table's epochs and their summed seconds; its log ends at the card's last epoch. A live run
    (no card yet) writes an epoch's lesion rows just before that epoch's log row."""
    fix = "ship the run's NAME.json, NAME.log.csv and NAME.lesions.csv together"
    seconds = {int(r["epoch"]): float(r["seconds"]) for r in rows}
    if card_path is not None:
        c = card.get("lesions")
        if (not isinstance(c, dict) or c.get("epochs") != sorted(seconds)
                or abs(float(c.get("seconds", -1)) - sum(seconds.values())) > 0.051):
            raise UsageError(f"{card_path} is not the card of the run that wrote {table} (its "
                             f"lesion epochs or their seconds differ): {fix}")
    if log is None or not log.is_file():
        return
    logged = set(seconds) - {0}  # the log starts at epoch 1
    if card_path is None:
        logged.discard(max(seconds))  # a live run's newest lesion epoch may lead its log
    if not logged <= lr.keys() or (card_path is not None and lr and max(lr) != card.get("epochs")):
        raise UsageError(f"{log} is not the log of the run that wrote {table} (it ends at epoch "
                         f"{max(lr, default=0)}; the lesions reach epoch {max(seconds)}): {fix}")


def read_run(path: str | Path, name: str | None = None) -> pd.DataFrame:
    """The lesion rows of one training run (a run folder or a ``NAME.lesions.csv``) with
    ``model``, ``family``, the epoch's learning rate and the equivalence test of each row."""
    table, log, card_path = _sources(Path(path))
    if not table.is_file():
        raise UsageError(f"{path}: no lesion table ({table.name}); train with --lesion-at "
                         "to make one")
    rows = lesion.read_table(table)
    if not rows:
        raise UsageError(f"{table} holds no rows yet: wait for the first lesion epoch")
    card: dict = {}
    if card_path is not None:
        try:
            card = json.loads(card_path.read_text())
        except (OSError, ValueError) as e:
            raise UsageError(f"{card_path}: not a readable card ({type(e).__name__}): ship the "
                             "card that ablate train wrote, or move it away") from None
        if not isinstance(card, dict):
            raise UsageError(f"{card_path}: not a card (a JSON object): ship the card that "
                             "ablate train wrote, or move it away")
    model = name or card.get("name") or (Path(path).name if Path(path).is_dir() else
                                         table.name.removesuffix(".lesions.csv"))
    lr = _lr_by_epoch(log)
    _check_same_run(table, rows, log, lr, card_path, card)
    df = pd.DataFrame(rows)
    df.insert(0, "model", model)
    df.insert(1, "family", models.family(model, card or None, default="resnet"))
    df["lr"] = [lr.get(int(e), np.nan) for e in df["epoch"]]  # the rate of the epoch just run
    df["equivalent"] = [tost_equivalent(int(b), int(f), int(n), EQUIVALENCE_MARGIN, ALPHA)
                        for b, f, n in zip(df["n_broken"], df["n_fixed"], df["n_images"])]
    return df


def read_runs(paths: list[str | Path], names: list[str] | None = None) -> pd.DataFrame:
    if names is not None and len(names) != len(paths):
        raise UsageError(f"{len(names)} names for {len(paths)} runs: give one per run")
    frames = [read_run(p, names[i] if names else None) for i, p in enumerate(paths)]
    df = pd.concat(frames, ignore_index=True)
    if df.duplicated(["model", "epoch", "block"]).any():
        raise UsageError("two runs have the same name: tell them apart with --names")
    return df


def per_epoch(df: pd.DataFrame) -> pd.DataFrame:
    """Per model and epoch: the intact error, the median change over shape-keeping blocks and
    how many of them are equivalent to intact, the downsampling blocks' mean change, the rate."""
    df = df.assign(downsample=as_bool(df["downsample"]),
                   equivalent=as_bool(df["equivalent"]))
    out = []
    for (model, epoch), d in df.groupby(["model", "epoch"], sort=True):
        keep, down = d[~d["downsample"]], d[d["downsample"]]
        out.append({
            "model": model, "family": d["family"].iloc[0], "epoch": int(epoch),
            "intact_error": float(d["intact_error"].iloc[0]),
            "median_change": float(keep["error_change"].median()),
            "n_equivalent": int(keep["equivalent"].sum()), "n_blocks": len(keep),
            "share_equivalent": float(keep["equivalent"].mean()),
            "downsample_change": float(down["error_change"].mean()) if len(down) else np.nan,
            "lr": float(d["lr"].iloc[0]),
        })
    return pd.DataFrame(out)


def lr_drops(summary: pd.DataFrame) -> list[int]:
    """The first lesion epochs at a lower rate (a fall of 2x or more) than the lesion epoch
    before. ``--lesion-at auto`` measures each drop's epoch and the one after, so these are the
    drops themselves; a sparser schedule places them at the next lesion epoch."""
    drops: set[int] = set()
    for _, d in summary.dropna(subset=["lr"]).groupby("model"):
        d = d.sort_values("epoch")
        prev = None
        for e, lr in zip(d["epoch"], d["lr"]):
            if prev is not None and lr <= prev / 2:
                drops.add(int(e))
            prev = lr
    return sorted(drops)


# --- Verdicts: described, not judged ------------------------------------------------------------


def settled_from(d: pd.DataFrame, share: float = 0.5) -> int | None:
    """The first lesion epoch from which at least ``share`` of the shape-keeping blocks are
    equivalent to intact at every later lesion epoch too (None: not by the last one). A net at
    initialisation errs at chance with or without a block, so its "equivalent" blocks say
    nothing; a share that holds from some epoch to the end does not have that trap."""
    ok = (d.sort_values("epoch")["share_equivalent"] >= share).to_numpy()
    epochs = d.sort_values("epoch")["epoch"].to_numpy()
    if not len(ok) or not ok[-1]:
        return None
    i = len(ok) - 1
    while i > 0 and ok[i - 1]:
        i -= 1
    return int(epochs[i])


def _state(row: pd.Series) -> str:
    """One lesion epoch in words: median single deletion, blocks equivalent, downsampling."""
    text = (f"median change {row['median_change']:+.1%}, {int(row['n_equivalent'])}/"
            f"{int(row['n_blocks'])} blocks equivalent")
    if pd.notna(row["downsample_change"]):
        text += f", downsampling blocks {row['downsample_change']:+.1%}"
    return text


def verdicts(root: Path) -> list[Finding]:
    df, _ = read(root, "emergence")
    claim = ("No published number: Veit et al. and Huang et al. test the finished nets only. "
             "Does robustness to single deletions appear early or late in training, does it "
             "move at the learning-rate drops, does stochastic depth make it appear earlier?")
    criterion = ("described, not judged: median change over shape-keeping blocks, and blocks "
                 f"equivalent to intact within {EQUIVALENCE_MARGIN:.0%} (paired TOST, "
                 f"alpha {ALPHA}), per lesion epoch")
    if df is None or df.empty:
        return [Finding("When the ensemble emerges (ours)", claim, "no lesion table",
                        "not run", criterion)]
    s = per_epoch(df)
    drops = lr_drops(s)
    parts, settled = [], {}
    for model, d in s.groupby("model", sort=False):
        d = d.sort_values("epoch")
        trained = d[d["epoch"] > 0]  # at initialisation every deletion leaves chance: no news
        first, last = (trained if len(trained) else d).iloc[0], d.iloc[-1]
        half = settled_from(d)
        settled[model] = (d["family"].iloc[0], half)
        text = (f"{model}: at epoch {int(first['epoch'])} (intact error "
                f"{first['intact_error']:.1%}) {_state(first)}; at epoch {int(last['epoch'])} "
                f"(intact error {last['intact_error']:.1%}) {_state(last)}; "
                + ("no epoch from which half the blocks stay equivalent to the last lesion epoch"
                   if half is None else
                   f"half the blocks equivalent at every lesion epoch from epoch {half} on"))
        for e in drops:
            before, after = d[d["epoch"] < e].tail(1), d[d["epoch"] >= e].head(1)
            if len(before) and len(after):
                b, a = before.iloc[0], after.iloc[0]
                text += (f"; across the drop at epoch {e}: epoch {int(b['epoch'])} "
                         f"{_state(b)} -> epoch {int(a['epoch'])} {_state(a)}")
        parts.append(text)
    sd = [m for m, (f, _) in settled.items() if f == "stochastic_depth"]
    const = [m for m, (f, _) in settled.items() if f == "resnet"]
    if len(sd) == 1 and len(const) == 1:
        a, b = settled[const[0]][1], settled[sd[0]][1]
        never = [m for m, e in ((sd[0], b), (const[0], a)) if e is None]
        parts.append(
            f"stochastic depth: half the blocks stay equivalent from epoch {b} in {sd[0]}, "
            f"from epoch {a} in {const[0]}" if not never else
            f"stochastic depth: not compared (half the blocks do not stay equivalent in "
            f"{' and '.join(never)})")
    return [Finding("When the ensemble emerges (ours)", claim, "; ".join(parts) + ".", "new",
                    criterion, fig(root, "emergence"))]


# --- The command -------------------------------------------------------------------------------


@dataclass
class Options(Base):
    runs: list[str] = flag([], "training runs with lesions: run folders (lesions.csv, log.csv) "
                           "or NAME.lesions.csv files", positional=True, metavar="RUN")
    names: list[str] | None = flag(None, "a display name per run")


def measure(o: Options) -> Result:
    out = check_out(o.out or "runs/emergence")
    df = read_runs(o.runs, o.names)
    table = Table(out / "results.csv", KEY)  # refuses a foreign table
    table.replace(df, by=("model",))  # other runs' rows stay
    s = per_epoch(df)
    meta = {"runs": [str(p) for p in o.runs], "equivalence_margin": EQUIVALENCE_MARGIN,
            "lr_drop_epochs": lr_drops(s),
            "lesion_images": sorted({int(n) for n in df["n_images"]})}
    return Result(out, df, meta, summary=lambda: print(s.to_string(index=False)))


def reproduce(p: Plan, s: Settings) -> Options | None:
    """The shipped lesion tables of the constant/stochastic-depth pair (none: not run)."""
    names = [m for m in (p.stochastic or ())
             if (checkpoint.bundled_dir() / f"{m}.lesions.csv").is_file()]
    return Options(runs=[str(checkpoint.bundled_dir() / f"{m}.lesions.csv") for m in names],
                   names=names) if names else None


EXPERIMENT = Experiment(
    name="emergence", paper="ours: Veit et al.'s single deletion during training, with and "
    "without stochastic depth (Huang et al.)", run=read_runs, key=KEY, options=Options,
    measure=measure, verdicts=verdicts, reproduce=reproduce, order=15,
    summary="when does robustness to deleting a block appear during training?",
)
