"""The one theme every figure uses: sizes, family colours, saving, captions.

Nothing here touches matplotlib's global state at import time; :func:`figure`
(or :func:`apply`) installs the theme when a figure is actually made.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd

from ablate import models
from analyses.table import as_bool  # figures read the tables analyses write

__all__ = [
    "DPI",
    "FAMILY_COLORS",
    "FAMILY_LABELS",
    "FAMILY_ORDER",
    "FONT_SCALE",
    "GUIDE_COLOR",
    "NOTE_COLOR",
    "ONE_COLUMN",
    "TWO_COLUMN",
    "apply",
    "as_bool",
    "family_color",
    "model_colors",
    "family_label",
    "family_of",
    "figure",
    "note",
    "percent_axis",
    "rc_params",
    "save",
    "theme",
]

# Okabe-Ito, a colour-blind-safe palette; one fixed colour per model family.
FAMILY_COLORS: dict[str, str] = {
    "resnet": "#0072B2",  # blue
    "plain": "#D55E00",  # vermillion
    "stochastic_depth": "#009E73",  # bluish green
    "preact": "#CC79A7",  # reddish purple
    "torchvision": "#E69F00",  # orange
    "vit": "#56B4E9",  # sky blue
    "reference": "#000000",  # black: published numbers
}
FAMILY_LABELS: dict[str, str] = {
    "resnet": "ResNet",
    "plain": "plain",
    "stochastic_depth": "stochastic depth",
    "preact": "pre-activation",
    "torchvision": "torchvision",
    "vit": "ViT",
    "reference": "published",
}
FAMILY_ORDER: tuple[str, ...] = tuple(FAMILY_COLORS)

ONE_COLUMN: tuple[float, float] = (3.4, 2.4)  # inches
TWO_COLUMN: tuple[float, float] = (7.0, 2.8)  # inches
DPI = 300
FONT_SCALE = 0.85  # of seaborn's "paper" context
NOTE_COLOR = "#666666"
NOTE_WIDTH = 48  # characters of a caption on one line (beside a panel letter)
GUIDE_COLOR = "#9a9a9a"  # chance lines, separators, legend proxies


def family_of(model: str) -> str:
    """Model family from a model name, e.g. ``"resnet110-sd"`` -> ``"stochastic_depth"``:
    ``reference`` for names containing ``published`` or ``reference``, else
    :func:`ablate.models.family` (a ValueError when the name says nothing)."""
    name = str(model).strip().lower()
    if "published" in name or "reference" in name:
        return "reference"
    return models.family(name)


def family_color(family: str) -> str:
    """The fixed hex colour of a family (a model name is accepted too)."""
    if family not in FAMILY_COLORS:
        family = family_of(family)
    return FAMILY_COLORS[family]


SHADES = (0.0, 0.5, 0.7, 0.82)  # how far the 1st, 2nd, ... model of a family fades to white


def model_colors(models: Sequence[str], families: Sequence[str]) -> dict[str, str]:
    """One colour per model: its family's, the first model of each family at full strength and
    each further one lighter (``SHADES``), so that two ResNets in one plot stay apart by colour
    as well as by marker."""
    from matplotlib.colors import to_hex, to_rgb

    seen: dict[str, int] = {}
    out = {}
    for model, fam in zip(models, families):
        k = seen.get(fam, 0)
        seen[fam] = k + 1
        base = to_rgb(family_color(fam if fam in FAMILY_COLORS else model))
        f = SHADES[min(k, len(SHADES) - 1)]
        out[model] = to_hex(tuple(c + (1 - c) * f for c in base))
    return out


def family_label(family: str) -> str:
    """Human-readable family name for legends."""
    return FAMILY_LABELS.get(family, str(family))


def rc_params() -> dict[str, object]:
    """Matplotlib rc settings of the theme: seaborn paper context, ticks style."""
    import seaborn as sns

    rc: dict[str, object] = {}
    rc.update(sns.axes_style("ticks"))
    rc.update(sns.plotting_context("paper", font_scale=FONT_SCALE))  # ~8 pt labels, 7.5 ticks
    rc.update(
        {
            "axes.prop_cycle": mpl.cycler(color=list(FAMILY_COLORS.values())),
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.titlelocation": "left",
            "legend.frameon": False,
            "legend.handlelength": 1.8,
            "legend.columnspacing": 1.2,
            "figure.dpi": 100,
            "savefig.dpi": DPI,
            "pdf.fonttype": 42,  # embed TrueType, not Type 3
            "ps.fonttype": 42,
            "svg.fonttype": "none",
        }
    )
    return rc


def apply() -> None:
    """Install the theme into matplotlib's global rcParams."""
    mpl.rcParams.update(rc_params())


@contextmanager
def theme() -> Iterator[None]:
    """Use the theme inside a ``with`` block only."""
    with mpl.rc_context(rc_params()):
        yield


def _ensure_backend() -> None:
    """Pick the headless Agg backend unless a backend was already chosen."""
    getter = getattr(mpl.rcParams, "_get_backend_or_none", None)
    chosen = getter() if getter is not None else os.environ.get("MPLBACKEND")
    if chosen is None:
        mpl.use("Agg")


def figure(size: str = "one", nrows: int = 1, ncols: int = 1, **kw):
    """A themed ``(fig, axes)`` pair, ``size`` "one" or "two" column wide.

    ``**kw`` goes to :func:`matplotlib.pyplot.subplots` (``figsize`` overrides
    ``size``; the layout is constrained unless ``layout`` says otherwise).
    """
    sizes = {"one": ONE_COLUMN, "two": TWO_COLUMN}
    if size not in sizes:
        raise ValueError(f"size must be 'one' or 'two', not {size!r}")
    _ensure_backend()
    apply()
    import matplotlib.pyplot as plt

    kw.setdefault("figsize", sizes[size])
    kw.setdefault("layout", "constrained")
    return plt.subplots(nrows, ncols, **kw)


def _atomic_savefig(fig, path: Path, fmt: str, **kw) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        fig.savefig(tmp, format=fmt, **kw)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(fig, path_without_suffix: str | os.PathLike) -> list[Path]:
    """Write ``<path>.pdf`` (vector) and ``<path>.png`` (300 dpi), then close ``fig``.

    Both files are written atomically (temp file in the same folder, then
    ``os.replace``). The page is not cropped, so the PNG is exactly
    ``figsize * 300`` pixels. A trailing ``.pdf`` / ``.png`` is ignored.
    """
    base = Path(path_without_suffix)
    if base.suffix.lower() in {".pdf", ".png"}:
        base = base.with_suffix("")
    base.parent.mkdir(parents=True, exist_ok=True)
    pdf, png = base.with_name(base.name + ".pdf"), base.with_name(base.name + ".png")
    try:
        _atomic_savefig(fig, pdf, "pdf", metadata={"CreationDate": None})
        _atomic_savefig(fig, png, "png", dpi=DPI)
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return [pdf, png]


_CORNERS = {
    "upper right": (1.0, 1.0, "right", "bottom"),
    "upper left": (0.0, 1.0, "left", "bottom"),
    "lower right": (0.98, 0.03, "right", "bottom"),
    "lower left": (0.02, 0.03, "left", "bottom"),
}


def note(ax, text: str, *, loc: str = "upper right"):
    """A small grey caption in a corner of ``ax`` (e.g. "quick run: 500 images").

    "upper ..." corners sit just above the axes frame (figures are title-less,
    so that space is free and never covers data); "lower ..." sit inside.
    """
    if loc not in _CORNERS:
        raise ValueError(f"loc must be one of {sorted(_CORNERS)}, not {loc!r}")
    x, y, ha, va = _CORNERS[loc]
    if len(text) > NOTE_WIDTH:  # a long caption would run into the panel letter: two lines
        import textwrap

        text = "\n".join(textwrap.wrap(text, width=max(NOTE_WIDTH * 2 // 3, len(text) // 2 + 8)))
    offset = 2 if loc.startswith("upper") else 0
    return ax.annotate(
        text,
        xy=(x, y),
        xycoords="axes fraction",
        xytext=(0, offset),
        textcoords="offset points",
        ha=ha,
        va=va,
        fontsize="x-small",
        color=NOTE_COLOR,
        gid="note",
    )


def percent_axis(ax, label: str = "test error (%)", *, lim: tuple[float, float] = (0, 100)):
    """Label ``ax``'s y axis in percent and fix its range."""
    ax.set_ylabel(label)
    ax.set_ylim(*lim)
    return ax


def parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    """The flags every ``python -m figures.<name>`` shares: result tables, --out, --name, --note."""
    p = argparse.ArgumentParser(prog=f"python -m figures.{name}", description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", type=Path, help="results.csv written by the analysis")
    p.add_argument("--out", type=Path, default=Path("."), help="output folder")
    p.add_argument("--name", default=name, help="file name without suffix")
    p.add_argument("--note", default=None, help='caption, e.g. "quick run: 500 images"')
    return p


def draw(plot, args: argparse.Namespace, **kw) -> int:
    """Draw ``plot(results, note=..., **kw)`` from parsed ``args``, save it, print the paths."""
    src = [str(f) for f in args.results]
    for path in save(plot(src[0] if len(src) == 1 else src, note=args.note, **kw),
                     args.out / args.name):
        print(path)
    return 0


def table(source, required: Sequence[str], key: Sequence[str], what: str,
          defaults: dict | None = None) -> pd.DataFrame:
    """A result table as a clean DataFrame, from a frame, a CSV path or several CSV paths.

    Checks the ``required`` columns, fills ``family`` from the model name where missing or
    unknown and each column of ``defaults`` where missing or empty (older tables), refuses several
    rows per ``key`` (e.g. two data sets mixed: filter first) and sorts by ``key``.
    """
    if isinstance(source, pd.DataFrame):
        df = source.copy()
    elif isinstance(source, (str, os.PathLike)):
        df = pd.read_csv(source)
    else:
        df = pd.concat([pd.read_csv(p) for p in source], ignore_index=True)
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"{what} table lacks column(s) {missing}")
    if df.empty:
        raise ValueError(f"{what} table is empty")
    df["model"] = df["model"].astype(str)
    for c, v in (defaults or {}).items():
        df[c] = df[c].fillna(v) if c in df.columns else v
    fam = df["family"] if "family" in df.columns else pd.Series(np.nan, index=df.index)
    df["family"] = fam.where(fam.isin(list(FAMILY_COLORS)), df["model"].map(family_of))
    dup = df.duplicated(list(key), keep=False)
    if dup.any():
        rows = df.loc[dup, list(key)].drop_duplicates().head(3).to_dict("records")
        raise ValueError(f"several rows per {tuple(key)} in the {what} table, e.g. {rows}; "
                         "filter by dataset, split or seed first")
    return df.sort_values(list(key), kind="stable").reset_index(drop=True)
