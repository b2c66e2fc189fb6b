"""python -m ablate.attribution: captum block attributions against block-deletion damage.

    python -m ablate.attribution --model resnet110 --checkpoint resnet110.safetensors \\
        --method conductance gradient_x_activation --limit 1000

Per block: a captum layer attribution of the true class's logit to the block's output (or, with
``--layer branch``, to its residual branch), aggregated as the mean over images of sum|A| and of
|sum A|; beside it the error and loss change when the block is deleted (Veit et al.'s lesion),
and Spearman's rank correlation between the two. --limit defaults to 512 images on a GPU, 64 on
the CPU. Writes ``results.csv`` (one row per model, method and block; rerunning reuses rows),
``delete_block.csv`` (the lesion rows, as ``python -m ablate.delete_block`` writes them),
``meta.json`` and ``attribution.pdf/.png``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import pandas as pd

from ablate import _cli as cli
from ablate._infra.errors import UsageError, cli_main
from analyses import attribution as analysis
from analyses import delete_block, registry
from analyses.table import Table


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    p = cli.parser(__doc__.splitlines()[0], default_models=("resnet20",))
    p.add_argument("--method", nargs="+", default=["conductance"], metavar="METHOD",
                   help=f"captum methods: {', '.join(analysis.METHODS)}")
    p.add_argument("--layer", default="block", help="block (its output) or branch (the output "
                   "of its residual branch)")
    p.add_argument("--n-steps", type=int, default=16,
                   help="integration steps of conductance and integrated gradients")
    p.add_argument("--baseline", default="mean", help="mean (zeros in normalised space: the mean "
                   "colour) or black")
    args = p.parse_args(argv)
    for m in args.method:
        analysis.check(m, args.layer, args.baseline)
    if args.n_steps < 1:
        raise UsageError(f"--n-steps must be at least 1, not {args.n_steps}")
    loaded = cli.load_models(args, allow_init=True)
    if args.limit is None:
        args.limit = 512 if next(loaded[0].model.parameters()).is_cuda else 64
    ds = cli.load_data(args, loaded)
    out, table = cli.results_table(args, loaded, "attribution", analysis.KEY)
    lesion = Table(out / "delete_block.csv", delete_block.KEY)
    timer = cli.Timer()
    frames = []
    for m in loaded:
        for method in dict.fromkeys(args.method):
            frames.append(analysis.run(m, ds, method=method, layer=args.layer,
                                       n_steps=args.n_steps, baseline=args.baseline, table=table,
                                       lesion_table=lesion, batch_size=cli.batch_size(args, m)))
    df = pd.concat(frames, ignore_index=True)
    corr = analysis.correlations(df)
    meta = {
        "analysis": "attribution",
        "paper": registry.get("attribution").paper,
        "method": args.method,
        "layer": args.layer,
        "n_steps": args.n_steps,
        "baseline": args.baseline,
        "target": "logit of the true class",
        "aggregates": {
            "attr_abs": "mean over images of sum |A|",
            "attr_signed": "mean over images of |sum A|",
        },
        "spearman": corr,
    }
    note = f"{ds.name}, {len(ds)} images"
    cli.write_outputs(out, meta, loaded, ds, args, timer, df, "attribution", note=note,
                      table=table)
    for c in corr:
        if c["aggregate"] == "attr_abs":
            print(f"{c['model']} {c['method']} ({c['layer']}): Spearman rho of sum|A| vs "
                  f"{c['damage']} = {c['rho']:.3f} (p = {c['p_value']:.3g}, "
                  f"{c['n_blocks']} blocks)")
    print(f"results: {out / 'results.csv'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
