"""Training logs (``NAME.log.csv`` or a run's ``log.csv``, written by ``python -m ablate.train``)
as one tidy table: model, family, epoch, metric, value; and the epochs where the learning rate
dropped (Huang et al. 2016, Fig. 7 marks them).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ablate import models
from ablate._infra.errors import UsageError

__all__ = ["FIRST_CONV", "lr_drops", "model_name", "read_log", "read_logs"]

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
