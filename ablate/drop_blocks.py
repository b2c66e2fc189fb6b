"""python -m ablate.drop_blocks: delete k random blocks at once (Veit et al. 2016, Fig. 5a).

    python -m ablate.drop_blocks --model resnet110 plain110 resnet110-sd --samples 20
    torchrun --standalone --nproc_per_node 4 -m ablate.drop_blocks --model resnet110 ...

Writes ``results.csv`` (one row per model, k and random set), ``meta.json`` (provenance) and
``drop_blocks.pdf/.png``; rerunning with the same arguments reuses the rows already written, and a
larger --max-k or --samples computes only the new sets.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import pandas as pd

from ablate import _cli as cli
from ablate._infra import distributed
from ablate._infra.errors import cli_main
from analyses import drop_blocks, registry


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    p = cli.parser(__doc__.splitlines()[0], default_models=("resnet20", "plain20"))
    p.add_argument("--max-k", type=int, default=None,
                   help="largest number of deleted blocks (default: all candidates, at most 20)")
    p.add_argument("--samples", type=int, default=20, help="random sets per k")
    p.add_argument("--include-downsampling", action="store_true",
                   help="let the random sets include downsampling blocks")
    args = p.parse_args(argv)
    loaded = cli.load_models(args)
    for m in loaded:  # refuse a bad --max-k for any model before computing anything
        drop_blocks.check(m, args.max_k, args.samples, args.include_downsampling)
    ds = cli.load_data(args, loaded)
    out, table = cli.results_table(args, loaded, "drop_blocks", drop_blocks.KEY,
                                     text=("deleted", "deleted_names"))
    main_rank = distributed.is_main()
    timer = cli.Timer()
    frames = [
        drop_blocks.run(m, ds, max_k=args.max_k, samples=args.samples, seed=args.seed,
                        include_downsampling=args.include_downsampling, table=table,
                        batch_size=cli.batch_size(args, m), progress=main_rank)
        for m in loaded
    ]
    meta = {
        "analysis": "drop_blocks",
        "paper": registry.get("drop_blocks").paper,
        "samples": args.samples,
        "max_k": args.max_k,
        "include_downsampling": args.include_downsampling,
    }
    return cli.finish_sweep(out, meta, loaded, ds, args, timer, frames, "drop_blocks", _summary,
                            table=table)


def _summary(df: pd.DataFrame) -> None:
    s = drop_blocks.summary(df)
    for model, d in s.groupby("model", sort=False):
        cli.print_table(
            d.assign(error_pct=d.mean_error * 100, low_pct=d.mean_low * 100,
                     high_pct=d.mean_high * 100),
            ["k", "sets", "error_pct", "low_pct", "high_pct"],
            title=f"\n{model}: mean test error (%) over random sets of k deleted blocks, 95% t "
                  "interval",
        )


if __name__ == "__main__":
    sys.exit(main())
