"""python -m ablate.gradnorm: gradient norms through depth, ResNet vs plain, init vs trained.

    python -m ablate.gradnorm --model resnet110 plain110 --states init trained \\
        --checkpoint resnet110.safetensors plain110.safetensors

For every unit: the norm of the loss gradient at its input (per image) and of its parameters
(per batch of --batch-size, default 128 as in training), averaged over --limit images (default
1024 on a GPU, 256 on the CPU). ``init`` re-creates each architecture with fresh, seeded
initialisation; ``trained`` uses the checkpoint. Writes ``results.csv`` (rerunning reuses the
(model, state) rows), ``meta.json`` and ``gradnorm.pdf/.png``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import pandas as pd

from ablate import _cli as cli
from ablate._infra.errors import UsageError, cli_main
from analyses import gradnorm as analysis
from analyses import registry


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    p = cli.parser(__doc__.splitlines()[0], default_models=("resnet20", "plain20"))
    p.add_argument("--states", nargs="+", default=None, metavar="STATE",
                   help="init and/or trained (default: trained where a checkpoint is given, "
                        "else init)")
    p.add_argument("--init", action="store_true", help="shorthand for --states init")
    p.add_argument("--bn", default="auto", choices=analysis.BN_MODES,
                   help="BN with running statistics (eval), batch statistics (train), or auto: "
                        "batch statistics at init (running ones are still 0 and 1 there), "
                        "running ones trained")
    args = p.parse_args(argv)
    if args.init and args.states:
        raise UsageError("give either --init or --states, not both")
    states = ["init"] if args.init else args.states
    for s in states or []:
        if s not in analysis.STATES:
            raise UsageError(f"unknown state {s!r}: use --states init and/or trained")
    loaded = cli.load_models(args, allow_init=True)
    if args.limit is None:
        args.limit = 1024 if next(loaded[0].model.parameters()).is_cuda else 256
    ds = cli.load_data(args, loaded)
    out, table = cli.results_table(args, loaded, "gradnorm", analysis.KEY)
    timer = cli.Timer()
    bs = 128 if args.batch_size is None else args.batch_size
    if bs < 1:
        raise UsageError(f"--batch-size must be at least 1, not {bs}")
    frames = []
    for m in loaded:
        own = tuple(states) if states else (("init",) if m.format == "init" else ("trained",))
        frames.append(analysis.run(m, ds, states=tuple(dict.fromkeys(own)), bn=args.bn,
                                   seed=args.seed, table=table, batch_size=bs))
    df = pd.concat(frames, ignore_index=True)
    meta = {
        "analysis": "gradnorm",
        "paper": registry.get("gradnorm").paper,
        "method": (
            "activation: mean over images of the L2 norm of d(summed cross-entropy)/d(unit "
            "input); parameters: mean over batches of the L2 norm of the batch-mean loss's "
            "gradient over the unit's parameters"
        ),
        "bn": args.bn,
        "bn_by_state": {s: analysis.bn_for(args.bn, s) for s in analysis.STATES},
        "batch_size": bs,
        "init_seed": args.seed,
    }
    modes = {s: analysis.bn_for(args.bn, s) for s in df.state.unique()}
    stat = {"train": "batch", "eval": "running"}
    note = f"{ds.name}, {len(ds)} images, BN: " + ", ".join(
        f"{s} {stat[m]} statistics" for s, m in modes.items())
    cli.write_outputs(out, meta, loaded, ds, args, timer, df, "gradnorm", note=note,
                      table=table)
    _summary(df)
    print(f"results: {out / 'results.csv'}", file=sys.stderr)
    return 0


def _summary(df: pd.DataFrame) -> None:
    act = df[df["kind"] == "activation"]
    for (model, state), d in act.groupby(["model", "state"], sort=False):
        d = d.sort_values("unit")
        first, last = d["grad_norm"].iloc[0], d["grad_norm"].iloc[-1]
        ratio = first / last if last > 0 else float("inf")
        print(f"{model} {state}: activation gradient {first:.3g} at the first unit, "
              f"{last:.3g} at the last ({ratio:.3g}x)")


if __name__ == "__main__":
    sys.exit(main())
