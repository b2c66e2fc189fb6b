"""python -m ablate.delete_block: delete one block at a time (Veit et al. 2016, Figs. 3 and 8).

    python -m ablate.delete_block --model resnet110 plain110 --data cifar10-png.tar.gz
    python -m ablate.delete_block --model vit_cifar --branches   # also each attention/MLP branch

Writes ``results.csv`` (one row per model and deleted block), ``meta.json`` (provenance) and
``delete_block.pdf/.png``; rerunning with the same arguments reuses the rows already written.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import pandas as pd

from ablate import _cli as cli
from ablate._infra import distributed
from ablate._infra.errors import UsageError, cli_main
from ablate.models.blocks import blocks
from ablate.models.transformers import is_transformer
from analyses import delete_block, registry


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    p = cli.parser(__doc__.splitlines()[0], default_models=("resnet56", "plain56"),
                   demo_limit=2000)
    p.add_argument("--blocks", default="all", help="units to delete: all, or e.g. 0,3,5-9")
    p.add_argument("--branches", action="store_true",
                   help="transformers: also delete each attention and MLP branch alone (rows "
                        "with granularity 'branch'); other networks have no branches to delete")
    args = p.parse_args(argv)
    loaded = cli.load_models(args)
    if args.branches and not any(is_transformer(m.model) for m in loaded):
        raise UsageError("--branches deletes a transformer's attention and MLP branches, and "
                         f"none of {', '.join(m.name for m in loaded)} is a transformer: drop "
                         "--branches, or add a ViT (e.g. --model vit_cifar)")
    chosen = []  # refuse a bad --blocks for any model before writing anything
    for m in loaded:
        chosen.append(cli.parse_range(args.blocks, len(blocks(m.model)) - 1))
        if chosen[-1] is not None:
            delete_block.check_deletable(m, chosen[-1])
    ds = cli.load_data(args, loaded)
    out, table = cli.results_table(args, loaded, "delete_block", delete_block.KEY)
    main_rank = distributed.is_main()
    timer = cli.Timer()
    frames = [delete_block.run(m, ds, indices=idx, branches=args.branches, table=table,
                               batch_size=cli.batch_size(args, m), progress=main_rank)
              for m, idx in zip(loaded, chosen)]
    meta = {
        "analysis": "delete_block",
        "paper": registry.get("delete_block").paper,
    }
    return cli.finish_sweep(out, meta, loaded, ds, args, timer, frames, "delete_block", _summary,
                            table=table)


def _summary(df: pd.DataFrame) -> None:
    for model, d in delete_block.whole_blocks(df).groupby("model", sort=False):
        worst = d.nlargest(5, "error_change")
        cli.print_table(
            worst.assign(error_pct=worst.error * 100, change_pct=worst.error_change * 100),
            ["block", "block_name", "downsample", "error_pct", "change_pct", "p_value"],
            title=f"\n{model}: intact error {d.intact_error.iloc[0]:.2%}; "
                  f"median after deleting one unit {d.error.median():.2%}; most damaging:",
        )
    single = df.drop(delete_block.whole_blocks(df).index)
    for model, d in single.groupby("model", sort=False):
        worst = d.nlargest(5, "error_change")
        cli.print_table(
            worst.assign(error_pct=worst.error * 100, change_pct=worst.error_change * 100,
                         layer=worst.layer.astype(int)),
            ["layer", "branch", "block_name", "error_pct", "change_pct", "p_value"],
            title=f"\n{model}: median after deleting one branch {d.error.median():.2%}; "
                  "most damaging:",
        )


if __name__ == "__main__":
    sys.exit(main())
