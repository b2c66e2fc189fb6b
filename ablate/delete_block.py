"""python -m ablate.delete_block: delete one block at a time (Veit et al. 2016, Figs. 3 and 8).

    python -m ablate.delete_block --model resnet110 plain110 --data cifar10-jpeg.tar.gz

Writes ``results.csv`` (one row per model and deleted block), ``meta.json`` (provenance) and
``single_block.pdf/.png``; rerunning with the same arguments reuses the rows already written.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from analyses import single_block
from analyses.table import Table

from . import cli, distributed
from .blocks import blocks
from .errors import cli_main


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    p = cli.parser(__doc__.splitlines()[0], default_models=("resnet20", "plain20"))
    p.add_argument("--blocks", default="all", help="units to delete: all, or e.g. 0,3,5-9")
    args = p.parse_args(argv)
    args.device = distributed.device(args.device)
    loaded = cli.load_models(args)
    ds = cli.load_data(args, loaded)
    main_rank = distributed.is_main()  # under torchrun only rank 0 writes files
    out = cli.default_out("delete_block", loaded) if args.out is None else Path(args.out)
    if main_rank:
        out.mkdir(parents=True, exist_ok=True)
    table = Table(out / "results.csv" if main_rank else None, single_block.KEY)
    timer = cli.Timer()
    frames = []
    for m in loaded:
        idx = cli.parse_indices(args.blocks, len(blocks(m.model)))
        if idx is not None:
            single_block.check_deletable(m, idx)
        frames.append(single_block.run(m, ds, indices=idx, table=table,
                                       batch_size=cli.batch_size(args, m), progress=main_rank))
    if not main_rank:
        distributed.finish()
        return 0
    df = pd.concat(frames, ignore_index=True)
    meta = {
        "analysis": "single_block",
        "paper": "Veit et al. 2016, Figs. 3 and 8",
    }
    cli.write_outputs(out, meta, loaded, ds, args, timer, df, "single_block")
    _summary(df)
    print(f"results: {out / 'results.csv'}", file=sys.stderr)
    distributed.finish()
    return 0


def _summary(df: pd.DataFrame) -> None:
    for model, d in df.groupby("model", sort=False):
        worst = d.nlargest(5, "error_change")
        cli.print_table(
            worst.assign(error_pct=worst.error * 100, change_pct=worst.error_change * 100),
            ["block", "block_name", "downsample", "error_pct", "change_pct", "p_value"],
            title=f"\n{model}: intact error {d.intact_error.iloc[0]:.2%}; "
                  f"median after deleting one unit {d.error.median():.2%}; most damaging:",
        )


if __name__ == "__main__":
    sys.exit(main())
