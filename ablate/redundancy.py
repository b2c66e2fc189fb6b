"""python -m ablate.redundancy: do Block Influence and angular distance predict deletion damage?

    python -m ablate.redundancy --model resnet56 vit_cifar --limit 1000 --windows 2 4

Per block, from one activation pass: Block Influence 1 - cos(x, y) (Men et al. 2024, ShortGPT),
the residual-contribution ratio ||y - x|| / ||x||, and the angular distance over n-block windows
(Gromov et al. 2024); beside each, the damage of deleting that block (or window) on the same
images, and Spearman's rho between measure and damage with a bootstrap interval over images (see
``analyses.redundancy``). --limit defaults to 1000 images. Writes ``results.csv`` (one row per
model, measure and block or window; rerunning reuses a model's rows), ``meta.json`` and
``redundancy.pdf/.png``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import pandas as pd

from ablate import _cli as cli
from ablate._infra import distributed
from ablate._infra.errors import UsageError, cli_main
from analyses import redundancy, registry


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    p = cli.parser(__doc__.splitlines()[0], default_models=("resnet56",))
    p.add_argument("--windows", type=int, nargs="+", default=[2, 4], metavar="N",
                   help="window lengths of the angular distance beyond single blocks")
    p.add_argument("--n-boot", type=int, default=1000,
                   help="bootstrap resamples of the images for each rank correlation")
    args = p.parse_args(argv)
    if args.n_boot < 1 or any(n < 1 for n in args.windows):
        raise UsageError("--n-boot and every --windows length must be at least 1")
    if args.limit is None:
        args.limit = 1000
    loaded = cli.load_models(args)
    ds = cli.load_data(args, loaded)
    out, table = cli.results_table(args, loaded, "redundancy", redundancy.KEY)
    timer = cli.Timer()
    frames = [redundancy.run(m, ds, windows=args.windows, n_boot=args.n_boot, seed=args.seed,
                             table=table, batch_size=cli.batch_size(args, m),
                             progress=distributed.is_main())
              for m in loaded]
    meta = {
        "analysis": "redundancy",
        "paper": registry.get("redundancy").paper,
        "windows": [1, *sorted(set(args.windows) - {1})],
        "n_boot": args.n_boot,
        "damage": {"error_change": "test error change when the block or window is deleted",
                   "loss_change": "mean per-image cross-entropy change, same deletion"},
    }
    return cli.finish_sweep(out, meta, loaded, ds, args, timer, frames, "redundancy", _summary,
                            table=table)


def _summary(df: pd.DataFrame) -> None:
    first = df.drop_duplicates(["model", "measure", "n"])
    cli.print_table(first, ["model", "measure", "n", "n_correlated", "rho_error", "rho_error_low",
                            "rho_error_high", "rho_loss", "rho_loss_low", "rho_loss_high"],
                    title="\nSpearman rho between each measure and the damage of deleting the "
                          "block (or window), 95% bootstrap interval over images:")


if __name__ == "__main__":
    sys.exit(main())
