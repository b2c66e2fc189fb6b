"""Veit et al. 2016, Fig. 3 / Fig. 8: test error after deleting one block.

Drawn from the tidy table of the single-block deletion experiment, one row per
(model, deleted block), and for a transformer swept with ``--branches`` one per
deleted attention or MLP branch (drawn beside its layer's block)::

    python -m figures.delete_block results.csv [more.csv ...] --out DIR [--note TEXT]

Panels are architectures: plain nets, ResNets, pre-activation ResNets and
torchvision models each get their own panel, and so does each depth of a family
(resnet56 and resnet110 do not share a block-index axis, whose downsampling
blocks sit elsewhere). Stochastic-depth ResNets and published reference numbers
are the same architecture as the ResNets, so they share the ResNet panel of their
depth, each in its own family colour (Veit et al. Fig. 8). An optional ``panel``
column overrides the grouping.

Under each panel, the change in points against the intact net with its 95% paired
interval, beside the ±1-point margin of "barely changes" (the verdict's TOST): the
0-100% panel above cannot show effects of a point.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from os import PathLike

import numpy as np
import pandas as pd

from figures import register, theme

__all__ = ["PANEL_OF", "REQUIRED", "main", "panel_of", "plot", "read"]

REQUIRED = ("model", "block", "error", "intact_error")
# Which panel each family is drawn in (see the module docstring).
PANEL_OF: dict[str, str] = {
    "resnet": "resnet",
    "stochastic_depth": "resnet",
    "reference": "resnet",
    "preact": "preact",
    "plain": "plain",
    "torchvision": "torchvision",
    "vit": "vit",
}
_PANEL_ORDER = ("resnet", "preact", "plain", "torchvision", "vit")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X")
_MS = 3.0  # marker size (points) of an ordinary block
# A transformer's single-branch deletions (rows with granularity "branch"), drawn at their
# layer's index beside the whole-block line, in the model's colour, hollow markers.
_BRANCHES = {"attn": ("attention branch only", (0, (4, 1.5)), "^"),
             "mlp": ("MLP branch only", (0, (1, 1.2)), "v")}
_SEPARATOR = "#dddddd"
MARGIN_POINTS = 1.0  # the equivalence margin of the Fig. 3 verdict, drawn as a band


def read(source: pd.DataFrame | str | PathLike | Sequence[str | PathLike]) -> pd.DataFrame:
    """The single-block table as a clean DataFrame (from a frame, a CSV, or several CSVs).

    Fills ``family`` from the model name where missing or unknown and ``granularity`` ("block"
    where the table predates branch rows), coerces ``downsample`` to bool, sorts by model,
    granularity and block, and rejects duplicate rows of one unit (e.g. two datasets mixed:
    filter first).
    """
    df = theme.table(source, REQUIRED, ("model", "granularity", "block"), "single-block",
                     defaults={"granularity": "block"})
    if "downsample" in df.columns:
        df["downsample"] = theme.as_bool(df["downsample"])
    return df


def panel_of(row_family: str, panel: object = None) -> str:
    """The panel a model is drawn in: an explicit ``panel`` value, else by family."""
    if isinstance(panel, str) and panel:
        return panel
    return PANEL_OF.get(row_family, row_family)


def _panels(df: pd.DataFrame) -> dict[str, list[str]]:
    """Panel name -> models in it, panels and models in a stable, readable order; a family with
    models of several depths (numbers of units) gets one panel per depth ("resnet/54")."""
    models = df.drop_duplicates("model")
    explicit = models["panel"] if "panel" in models.columns else [None] * len(models)
    units = df.groupby("model")["block"].nunique()
    keyed = [
        (panel_of(f, p), theme.FAMILY_ORDER.index(f) if f in theme.FAMILY_ORDER else 99, m)
        for m, f, p in zip(models["model"], models["family"], explicit)
    ]
    depths: dict[str, set[int]] = {}
    for panel, _, model in keyed:
        depths.setdefault(panel, set()).add(int(units[model]))
    order = {p: i for i, p in enumerate(_PANEL_ORDER)}
    out: dict[str, list[str]] = {}
    for panel, _, model in sorted(keyed, key=lambda k: (order.get(k[0], 99), k[0],
                                                        units[k[2]], k[1], k[2])):
        name = panel if len(depths[panel]) == 1 else f"{panel}/{int(units[model])}"
        out.setdefault(name, []).append(model)
    return out


def _title(panel: str, n_units: int) -> str:
    family, _, depth = panel.partition("/")
    return theme.family_label(family) + (f", {depth} units" if depth else "")


def _draw_change(ax, d: pd.DataFrame, color: str, marker: str, ms: float) -> None:
    """Error change in points with its 95% paired interval (``change_low``/``change_high``)."""
    model = d["model"].iloc[0]
    x = d["block"].to_numpy()
    y = (d["error"] - d["intact_error"]).to_numpy(dtype=float) * 100
    if "error_change" in d.columns:
        y = d["error_change"].to_numpy(dtype=float) * 100
    if {"change_low", "change_high"} <= set(d.columns) and d["change_low"].notna().any():
        err = np.abs(np.vstack([y - d["change_low"].to_numpy(dtype=float) * 100,
                                d["change_high"].to_numpy(dtype=float) * 100 - y]))
        ax.errorbar(x, y, yerr=err, fmt="none", ecolor=color, elinewidth=0.6, alpha=0.6,
                    zorder=2, gid=f"change_interval:{model}")
    ax.plot(x, y, linestyle="none", marker=marker, markersize=ms, color=color,
            markeredgewidth=0, zorder=3, gid=f"change:{model}")


def _draw_model(ax, d: pd.DataFrame, color: str, marker: str, ms: float = _MS) -> None:
    model = d["model"].iloc[0]
    x = d["block"].to_numpy()
    y = d["error"].to_numpy(dtype=float) * 100
    if {"error_low", "error_high"} <= set(d.columns) and d["error_low"].notna().any():
        ax.fill_between(
            x,
            d["error_low"].to_numpy(dtype=float) * 100,
            d["error_high"].to_numpy(dtype=float) * 100,
            color=color,
            alpha=0.18,
            linewidth=0,
            zorder=1,
        )
    ax.axhline(
        float(d["intact_error"].iloc[0]) * 100,
        color=color,
        linestyle="--",
        linewidth=0.9,
        zorder=1.5,
        gid=f"intact:{model}",
    )
    ax.plot(x, y, color=color, linewidth=1.0, zorder=2, gid=f"error:{model}")
    ds = d["downsample"].to_numpy() if "downsample" in d.columns else np.zeros(len(d), bool)
    ax.plot(
        x[~ds],
        y[~ds],
        linestyle="none",
        marker=marker,
        markersize=ms,
        color=color,
        markeredgewidth=0,
        zorder=3,
    )
    if ds.any():
        ax.plot(
            x[ds],
            y[ds],
            linestyle="none",
            marker=marker,
            markersize=ms * 1.8,
            markerfacecolor="white",
            markeredgecolor=color,
            markeredgewidth=1.0,
            zorder=4,
            gid=f"downsample:{model}",
        )


def _draw_branches(ax, d: pd.DataFrame, color: str, ms: float) -> list:
    """One dashed or dotted line per branch kind; returns their legend entries."""
    from matplotlib.lines import Line2D

    if d.empty:
        return []
    model, entries = d["model"].iloc[0], []
    for br, (label, ls, marker) in _BRANCHES.items():
        b = d[d["branch"] == br].sort_values("layer")
        if b.empty:
            continue
        style = {"color": color, "linestyle": ls, "marker": marker, "linewidth": 0.9,
                 "markerfacecolor": "white", "markeredgecolor": color, "markeredgewidth": 0.9}
        ax.plot(b["layer"].to_numpy(dtype=float), b["error"].to_numpy(dtype=float) * 100,
                markersize=ms * 1.3, zorder=2.5, gid=f"branch:{model}:{br}", **style)
        entries.append(Line2D([], [], markersize=_MS * 1.3, label=f"{model}: {label}", **style))
    return entries


def _draw_guides(ax, d: pd.DataFrame) -> None:
    """Chance error, downsampling blocks, stage separators."""
    classes = d["num_classes"].dropna().unique() if "num_classes" in d.columns else [10]
    for k in sorted({int(k) for k in classes} or {10}):
        ax.axhline(
            100 * (1 - 1 / k),
            color=theme.GUIDE_COLOR,
            linestyle=":",
            linewidth=0.9,
            zorder=0.5,
            gid=f"chance:{k}",
        )
    if "downsample" in d.columns:
        for b in sorted(d.loc[d["downsample"], "block"].unique()):
            ax.axvline(b, color=_SEPARATOR, linewidth=0.8, zorder=0)
    elif "stage" in d.columns:
        firsts = d.groupby("stage")["block"].min().sort_index().to_numpy()
        for b in firsts[1:]:
            ax.axvline(b - 0.5, color=_SEPARATOR, linewidth=0.8, zorder=0)


def _legend(fig, entries: list, any_downsample: bool, ncols: int) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    g = theme.GUIDE_COLOR
    handles = list(entries)
    handles.append(Line2D([], [], color=g, linestyle="--", linewidth=0.9, label="intact network"))
    handles.append(Line2D([], [], color=g, linestyle=":", linewidth=0.9, label="chance"))
    handles.append(Patch(color=g, alpha=0.15, label=f"±{MARGIN_POINTS:g} point (change panel)"))
    if any_downsample:
        handles.append(
            Line2D(
                [],
                [],
                linestyle="none",
                marker="o",
                markersize=_MS * 1.8,
                markerfacecolor="white",
                markeredgecolor=g,
                markeredgewidth=1.0,
                label="downsampling block",
            )
        )
    rows = -(-len(handles) // ncols)
    fig.legend(
        handles=handles,
        loc="outside upper center",
        ncols=-(-len(handles) // rows),  # balanced rows
        fontsize="small",
        handletextpad=0.5,
    )


@register("delete_block")
def plot(df: pd.DataFrame | str | PathLike, *, note: str | None = None):
    """Test error (%) after deleting each single block, against the block's index; under it the
    change in points with its 95% paired interval.

    One column per architecture (see the module docstring); top row: y axis shared and fixed to
    0-100 %. Per model: error line with markers and its 95 % interval band; the intact network's
    error as a dashed line in the same colour; downsampling blocks as larger hollow markers with
    a light vertical line; chance error (1 - 1/``num_classes``, default 10 classes) dotted grey.
    Bottom row: the error change in points with its paired interval, a grey band for the
    ±1-point margin within which a block "barely changes" the error. ``note`` (e.g. "quick run:
    500 images") is written above the last panel. A transformer's single-branch deletions
    (``granularity`` "branch") are drawn at their layer's index beside its whole-block line:
    dashed for attention, dotted for the MLP. Returns the Figure; pass it to
    :func:`figures.theme.save`.
    """
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator, MultipleLocator

    df = read(df)
    single = df[df["granularity"] == "branch"]
    df = df[df["granularity"] != "branch"]
    panels = _panels(df)
    n = len(panels)
    w, h = theme.ONE_COLUMN if n == 1 else theme.TWO_COLUMN
    fig, grid = theme.figure("one" if n == 1 else "two", 2, n, squeeze=False, sharex="col",
                             figsize=(w, h * 1.75), height_ratios=(3, 2))
    axes, lower = list(grid[0]), list(grid[1])
    everyone = [m for ms in panels.values() for m in ms]  # one colour per model, all panels
    colors = theme.model_colors(everyone, [df.loc[df["model"] == m, "family"].iloc[0]
                                           for m in everyone])
    entries = []
    for ax, low, (panel, models) in zip(axes, lower, panels.items()):
        d_panel = df[df["model"].isin(models)]
        _draw_guides(ax, d_panel)
        low.axhspan(-MARGIN_POINTS, MARGIN_POINTS, color=theme.GUIDE_COLOR, alpha=0.15,
                    linewidth=0, zorder=0.5, gid="margin")
        low.axhline(0, color=theme.GUIDE_COLOR, linewidth=0.7, zorder=0.6)
        if "downsample" in d_panel.columns:
            for b in sorted(d_panel.loc[d_panel["downsample"], "block"].unique()):
                low.axvline(b, color=_SEPARATOR, linewidth=0.8, zorder=0)
        ms = _MS if d_panel["block"].nunique() <= 30 else _MS * 0.7  # dense: smaller
        for i, model in enumerate(models):
            d = d_panel[d_panel["model"] == model]
            color = colors[model]
            marker = _MARKERS[i % len(_MARKERS)]
            _draw_model(ax, d, color, marker, ms)
            _draw_change(low, d, color, marker, ms)
            entries.append(
                Line2D(
                    [],
                    [],
                    color=color,
                    marker=marker,
                    markersize=_MS,
                    markeredgewidth=0,
                    linewidth=1.0,
                    label=model,
                )
            )
            entries += _draw_branches(ax, single[single["model"] == model], color, ms)
        lo, hi = d_panel["block"].min(), d_panel["block"].max()
        ax.set_xlim(lo - 0.6, hi + 0.6)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
        low.set_xlabel("deleted layer (index)" if panel == "plain" else "deleted block (index)")
        if n > 1:
            ax.set_title(_title(panel, d_panel["block"].nunique()), loc="left")
    theme.percent_axis(axes[0], "test error (%)")
    for ax in axes[1:]:
        ax.set_ylim(axes[0].get_ylim())
        ax.tick_params(labelleft=False)
    axes[0].yaxis.set_major_locator(MultipleLocator(20))
    lower[0].set_ylabel("change (points)")
    any_ds = "downsample" in df.columns and bool(df["downsample"].any())
    _legend(fig, entries, any_ds, ncols=3 if n == 1 else 5)
    if note:
        theme.note(axes[-1], note)
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    p = theme.parser("delete_block", __doc__)
    p.add_argument("--dataset", default=None, help="keep only rows of this dataset")
    args = p.parse_args(argv)
    df = pd.concat([pd.read_csv(f) for f in args.results], ignore_index=True)
    if args.dataset is not None:
        df = df[df["dataset"] == args.dataset]
    for path in theme.save(plot(df, note=args.note), args.out / args.name):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
