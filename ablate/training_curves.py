"""python -m ablate.training_curves: gradient and error per epoch from training logs (Huang et al.
2016, Fig. 7).

    python -m ablate.training_curves runs/resnet110.log.csv runs/resnet110-sd.log.csv --out DIR

Reads the trainer's per-epoch logs (``NAME.log.csv``, or a run folder's ``log.csv``; a ``NAME.json``
card beside a log tells constant from stochastic depth) and writes ``results.csv`` (model, family,
epoch, metric, value), ``meta.json`` and ``training_curves.pdf/.png``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ablate import _cli as cli
from ablate._infra.errors import ArgumentParser, check_out, cli_main
from ablate._infra.provenance import environment
from analyses import registry
from analyses import training_curves as analysis
from analyses.table import Table, write_meta


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("logs", nargs="+", type=Path, metavar="LOG.csv", help="trainer logs")
    p.add_argument("--names", nargs="+", default=None, help="a display name per log")
    p.add_argument("--out", default="runs/training_curves", help="output folder")
    p.add_argument("--note", default=None, help="caption on the figure")
    p.add_argument("--no-figure", action="store_true", help="write the table only")
    args = p.parse_args(argv)
    timer = cli.Timer()
    out = check_out(args.out)
    table = Table(out / "results.csv", ("model", "epoch", "metric"))  # refuses a foreign table
    df = analysis.read_logs(args.logs, args.names)
    table.replace(df, by=("model",))  # other models' rows stay
    models = df.drop_duplicates("model")
    meta = {
        "analysis": "training_curves", "paper": registry.get("training_curves").paper,
        "logs": [{"model": m, "family": f, "log": s}
                 for m, f, s in models[["model", "family", "source"]].itertuples(index=False)],
        "lr_drop_epochs": analysis.lr_drops(df), "wall_seconds": timer.seconds,
        **environment("cpu"),
    }
    write_meta(out / "meta.json", meta)
    if not args.no_figure:
        from ablate._experiments import PLOTS
        from figures.theme import save

        files = save(PLOTS["training_curves"](df, note=args.note), out / "training_curves")
        print("figure:", *files, file=sys.stderr)
    _summary(df)
    print(f"results: {out / 'results.csv'}", file=sys.stderr)
    return 0


def _summary(df: pd.DataFrame) -> None:
    for model, d in df.groupby("model", sort=False):
        err = d[d["metric"] == "test_error"].sort_values("epoch")["value"]
        g = d[d["metric"] == analysis.FIRST_CONV]["value"]
        epochs = int(d["epoch"].max())
        best = f"best test error {err.min():.2%}" if not err.empty else "no test error"
        grad = f", mean |grad| of the first block's conv1 {g.mean():.3g}" if not g.empty else ""
        print(f"{model}: {epochs} epochs, {best}{grad}")


if __name__ == "__main__":
    sys.exit(main())
