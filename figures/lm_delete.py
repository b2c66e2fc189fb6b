"""Lad et al. 2024 style: what deleting or swapping each layer of a language model costs.

Drawn from the tidy table of the ``lm_delete`` experiment (one row per condition)::

    python -m figures.lm_delete results.csv --out DIR [--note TEXT]

Panels, each where the table has its rows: (a) the NLL change (nats/token) of deleting each layer
alone and of swapping it with the next (drawn between the two), with 95% sequence-bootstrap
intervals, on a symmetric log scale; (b) the same for top-1 accuracy (points); (c) windows of n
consecutive layers deleted, by first layer; (d) k random layers deleted (Veit's Fig. 5a): each
set and the mean per k; (e) random reorderings against Kendall's tau (Fig. 5b); (f) Block
Influence of each layer against its deletion's NLL change (ShortGPT).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from os import PathLike

import numpy as np
import pandas as pd

from figures import register, theme

__all__ = ["main", "plot"]

DELETE, SWAP = "#D55E00", "#0072B2"
WINDOW_COLORS = ("#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
LINTHRESH = 0.1  # nats/token: linear below, logarithmic above (layer 0 costs nats, others less)


def _read(source) -> pd.DataFrame:
    if isinstance(source, pd.DataFrame):
        return source
    if isinstance(source, (str, PathLike)):
        return pd.read_csv(source)
    return pd.concat([pd.read_csv(p) for p in source], ignore_index=True)


def _main(df: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    """The first model and its main configuration: the tokens and precision with the most rows
    (a spot check in another precision is not drawn)."""
    model = df.model.iloc[0]
    d = df[df.model == model]
    tokens, dtype = d.groupby(["tokens_sha256", "dtype"]).size().idxmax()
    return model, d[(d.tokens_sha256 == tokens) & (d.dtype == dtype)]


def _err(d: pd.DataFrame, col: str, scale: float = 1.0) -> np.ndarray:
    v = d[col].to_numpy(float)
    lo, hi = d[f"{col}_lo"].to_numpy(float), d[f"{col}_hi"].to_numpy(float)
    return scale * np.clip(np.vstack([v - lo, hi - v]), 0, None)


def _nll_axis(ax) -> None:
    ax.set_yscale("symlog", linthresh=LINTHRESH)
    ax.axhline(0, color=theme.GUIDE_COLOR, linewidth=0.8, zorder=0.5)
    ax.set_ylabel("NLL change (nats/token)")


def _layers(ax, dl: pd.DataFrame, sw: pd.DataFrame, col: str, scale: float) -> None:
    kw = {"markersize": 3, "capsize": 0, "elinewidth": 0.8, "linewidth": 0.9}
    if len(dl):
        ax.errorbar(dl["index"], scale * dl[col], yerr=_err(dl, col, scale), color=DELETE,
                    marker="o", label="delete layer", **kw)
    if len(sw):
        ax.errorbar(sw["index"] + 0.5, scale * sw[col], yerr=_err(sw, col, scale), color=SWAP,
                    marker="s", linestyle="--", label="swap with next", **kw)
    ax.set_xlabel("layer")
    ax.legend(loc="best", fontsize="x-small")


def _windows(ax, w: pd.DataFrame) -> None:
    for c, (n, g) in zip(WINDOW_COLORS, w.groupby("n", sort=True)):
        g = g.sort_values("index")
        ax.errorbar(g["index"], g.nll_change, yerr=_err(g, "nll_change"), color=c, marker=".",
                    markersize=3, elinewidth=0.7, linewidth=0.9, label=f"{int(n)} layers")
    _nll_axis(ax)
    ax.set_xlabel("first layer of the deleted window")
    ax.legend(loc="best", fontsize="x-small")


def _by_k(ax, g: pd.DataFrame, x: str, xlabel: str, color: str) -> None:
    rng = np.random.default_rng(0)
    xs = g[x].to_numpy(float)
    jitter = rng.uniform(-0.12, 0.12, len(g)) if x == "n" else 0.0
    ax.scatter(xs + jitter, g.nll_change, s=6, color=color, alpha=0.45, linewidths=0)
    if x == "n":
        m = g.groupby("n").nll_change.mean()
        ax.plot(m.index, m.to_numpy(), color=color, marker="o", markersize=3, linewidth=1)
    else:
        ax.invert_xaxis()  # from the original order (tau = 1) to far from it
    _nll_axis(ax)
    ax.set_xlabel(xlabel)


def _influence(ax, bi: pd.Series, dl: pd.DataFrame) -> None:
    d = dl.set_index("index")
    common = bi.index.intersection(d.index)
    ax.scatter(bi.loc[common], d.nll_change.loc[common], s=10, color=DELETE, linewidths=0)
    for i in common:
        if i in (common.min(), common.max()) or d.nll_change[i] >= d.nll_change.quantile(0.9):
            ax.annotate(str(int(i)), (bi[i], d.nll_change[i]), fontsize="xx-small",
                        xytext=(2, 2), textcoords="offset points")
    ax.set_xscale("log")
    _nll_axis(ax)
    ax.set_xlabel("Block Influence, 1 - cos(x, y)")


@register("lm_delete")
def plot(df: pd.DataFrame | str | PathLike | Sequence[str | PathLike], *,
         note: str | None = None):
    """The panels the table has rows for (see the module docstring); returns the Figure."""
    df = _read(df)
    if df.empty:
        raise ValueError("the lm_delete table has no rows")
    model, d = _main(df)
    dl = d[(d.condition == "delete") & (d.granularity == "block")].sort_values("index")
    sw = d[d.condition == "swap"].sort_values("index")
    panels = []
    if len(dl) or len(sw):
        panels += ["nll", "accuracy"]
    for kind in ("window", "drop", "reorder"):
        if (d.condition == kind).any():
            panels.append(kind)
    bi = (d[d.condition == "block_influence"].set_index("index")["value"].astype(float)
          if "value" in d else pd.Series(dtype=float))
    if len(bi) and len(dl):
        panels.append("influence")
    if not panels:
        panels = ["nll"]
    rows = math.ceil(len(panels) / 2)
    fig, axes = theme.figure("two", rows, 2, figsize=(theme.TWO_COLUMN[0], 2.3 * rows),
                             squeeze=False)
    for ax, p in zip(axes.flat, panels):
        if p == "nll":
            _layers(ax, dl, sw, "nll_change", 1.0)
            _nll_axis(ax)
        elif p == "accuracy":
            _layers(ax, dl, sw, "accuracy_change", 100.0)
            ax.axhline(0, color=theme.GUIDE_COLOR, linewidth=0.8, zorder=0.5)
            ax.set_ylabel("top-1 accuracy change (points)")
        elif p == "window":
            _windows(ax, d[d.condition == "window"])
        elif p == "drop":
            _by_k(ax, d[d.condition == "drop"], "n", "random layers deleted (k)", DELETE)
        elif p == "reorder":
            _by_k(ax, d[d.condition == "reorder"], "kendall_tau", "Kendall's tau of the order",
                  SWAP)
        elif p == "influence":
            _influence(ax, bi, dl)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    for ax, letter in zip(axes.flat, "abcdefgh"):
        if ax.get_visible():
            ax.set_title(f"({letter})", loc="left", fontsize="small")
    i = d[d.condition == "intact"]
    caption = note or model
    if len(i):
        caption += f"; intact NLL {float(i.nll.iloc[0]):.3f}, top-1 {float(i.accuracy.iloc[0]):.1%}"
    theme.note(axes.flat[0], caption)
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    args = theme.parser("lm_delete", __doc__).parse_args(argv)
    return theme.draw(plot, args)


if __name__ == "__main__":
    sys.exit(main())
