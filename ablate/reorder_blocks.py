"""python -m ablate.reorder_blocks: swap random pairs of blocks (Veit et al. 2016, Fig. 5b).

    python -m ablate.reorder_blocks --model resnet110 resnet110-sd --max-swaps 20 --samples 20
    torchrun --standalone --nproc_per_node 4 -m ablate.reorder_blocks --model resnet110 ...

Writes ``results.csv`` (one row per model, number of swaps and random order, with Kendall's tau
against the original order), ``meta.json`` (provenance) and ``reorder_blocks.pdf/.png``;
rerunning with the same arguments reuses the rows already written.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import pandas as pd

from ablate import _cli as cli
from ablate._infra import distributed
from ablate._infra.errors import cli_main
from ablate.measures import mean_interval
from analyses import registry, reorder_blocks


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    p = cli.parser(__doc__.splitlines()[0], default_models=("resnet20",))
    p.add_argument("--max-swaps", type=int, default=None,
                   help="largest number of swaps (default: 20, or the number of compatible pairs)")
    p.add_argument("--samples", type=int, default=20, help="random orders per number of swaps")
    args = p.parse_args(argv)
    loaded = cli.load_models(args)
    for m in loaded:  # refuse plain nets and bad numbers before computing anything
        reorder_blocks.check(m, args.max_swaps, args.samples)
    ds = cli.load_data(args, loaded)
    out, table = cli.results_table(args, loaded, "reorder_blocks", reorder_blocks.KEY)
    main_rank = distributed.is_main()
    timer = cli.Timer()
    frames = [
        reorder_blocks.run(m, ds, max_swaps=args.max_swaps, samples=args.samples, seed=args.seed,
                    table=table, batch_size=cli.batch_size(args, m), progress=main_rank)
        for m in loaded
    ]
    meta = {
        "analysis": "reorder_blocks",
        "paper": registry.get("reorder_blocks").paper,
        "samples": args.samples,
        "max_swaps": args.max_swaps,
    }
    return cli.finish_sweep(out, meta, loaded, ds, args, timer, frames, "reorder_blocks", _summary,
                            table=table)


def _summary(df: pd.DataFrame) -> None:
    for model, d in df.groupby("model", sort=False):
        rows = []
        for k, g in d.groupby("k"):
            m, lo, hi = mean_interval(g["error"].to_numpy(dtype=float))
            rows.append({"swaps": k, "orders": len(g), "tau": g["kendall_tau"].mean(),
                         "error_pct": m * 100, "low_pct": max(lo, 0.0) * 100,
                         "high_pct": min(hi, 1.0) * 100})
        cli.print_table(pd.DataFrame(rows), ["swaps", "orders", "tau", "error_pct", "low_pct",
                                             "high_pct"],
                        title=f"\n{model}: mean test error (%) over random orders, 95% t interval")


if __name__ == "__main__":
    sys.exit(main())
