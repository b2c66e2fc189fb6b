"""python -m ablate.delete_block: delete one block at a time (Veit et al. 2016, Figs. 3 and 8).

    python -m ablate.delete_block --model resnet110 plain110 --data cifar10-png.tar.gz

Writes ``results.csv`` (one row per model and deleted block), ``meta.json`` (provenance) and
``delete_block.pdf/.png``; rerunning with the same arguments reuses the rows already written.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import pandas as pd

from ablate import _cli as cli
from ablate._infra import distributed
from ablate._infra.errors import cli_main
from ablate.models.blocks import blocks
from analyses import delete_block, registry


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    p = cli.parser(__doc__.splitlines()[0], default_models=("resnet56", "plain56"),
                   demo_limit=2000)
    p.add_argument("--blocks", default="all", help="units to delete: all, or e.g. 0,3,5-9")
    args = p.parse_args(argv)
    loaded = cli.load_models(args)
    chosen = []  # refuse a bad --blocks for any model before writing anything
    for m in loaded:
        chosen.append(cli.parse_range(args.blocks, len(blocks(m.model)) - 1))
        if chosen[-1] is not None:
            delete_block.check_deletable(m, chosen[-1])
    ds = cli.load_data(args, loaded)
    out, table = cli.results_table(args, loaded, "delete_block", delete_block.KEY)
    main_rank = distributed.is_main()
    timer = cli.Timer()
    frames = [delete_block.run(m, ds, indices=idx, table=table,
                               batch_size=cli.batch_size(args, m), progress=main_rank)
              for m, idx in zip(loaded, chosen)]
    meta = {
        "analysis": "delete_block",
        "paper": registry.get("delete_block").paper,
    }
    return cli.finish_sweep(out, meta, loaded, ds, args, timer, frames, "delete_block", _summary,
                            table=table)


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
