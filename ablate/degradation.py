"""python -m ablate.degradation: test error by depth, plain nets against ResNets (He et al. 2015).

    python -m ablate.degradation                      # the bundled zoo: plain/resnet 20-56
    python -m ablate.degradation --model plain20 plain56 resnet20 resnet56 --limit 2000

Evaluates each network once on the same test images. Writes ``results.csv`` (one row per
network: depth, error with its 95% Wilson interval, per-image correctness), ``comparison.csv``
(plain-n against ResNet-n at every depth, and the deepest against the shallowest net of each
family: paired difference with its 95% interval and exact McNemar p), ``meta.json`` and
``degradation.pdf/.png``; rerunning reuses the networks already measured.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import pandas as pd

from ablate import _cli as cli
from ablate._infra import distributed
from ablate._infra.errors import cli_main
from analyses import degradation, registry

ZOO = ("plain20", "plain32", "plain44", "plain56", "resnet20", "resnet32", "resnet44", "resnet56")


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    p = cli.parser(__doc__.splitlines()[0], default_models=ZOO)
    args = p.parse_args(argv)
    loaded = cli.load_models(args)
    ds = cli.load_data(args, loaded)
    out, table = cli.results_table(args, loaded, "degradation", degradation.KEY)
    timer = cli.Timer()
    frames = [degradation.run(m, ds, table=table, batch_size=cli.batch_size(args, m),
                              progress=distributed.is_main()) for m in loaded]
    meta = {"analysis": "degradation", "paper": registry.get("degradation").paper}
    if distributed.is_main():
        pairs = degradation.compare(pd.concat(frames, ignore_index=True))
        pairs.to_csv(out / "comparison.csv", index=False)
    return cli.finish_sweep(out, meta, loaded, ds, args, timer, frames, "degradation", _summary,
                            table=table)


def _summary(df: pd.DataFrame) -> None:
    cli.print_table(df.sort_values(["family", "depth"]).assign(error_pct=df.error * 100),
                    ["model", "family", "depth", "error_pct", "error_low", "error_high"],
                    title="\ntest error by depth:")
    pairs = degradation.compare(df)
    if len(pairs):
        cli.print_table(pairs.assign(diff_pct=pairs.difference * 100),
                        ["contrast", "a", "b", "diff_pct", "difference_low", "difference_high",
                         "p_value"], title="\npaired (a minus b, same images):")


if __name__ == "__main__":
    sys.exit(main())
