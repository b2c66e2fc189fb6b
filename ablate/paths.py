"""python -m ablate.paths: path lengths and the gradient per path length (Veit et al. 2016, Fig. 6).

    python -m ablate.paths --model resnet110 --checkpoint resnet110.safetensors --ks 0-54:2

For each path length k, ``--samples`` random sets of k blocks per image pass gradient through
their residual branch and all other blocks through their shortcut (one path of length k); the
norm of the loss gradient at the input is averaged over images x sets. Writes ``results.csv``
(path_fraction, gradient_magnitude, total_gradient and, for stochastic depth, active_depth rows),
``gradients.csv`` (the measured magnitudes; rerunning reuses them), ``meta.json`` and
``paths.pdf/.png``. Plain nets have a single path and are refused.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import pandas as pd

from ablate import _cli as cli
from ablate._infra.errors import UsageError, cli_main
from ablate.measures.paths import residual_blocks
from analyses import paths as analysis
from analyses import registry
from analyses.table import Table


def parse_ks(spec: str, n: int) -> list[int]:
    """``--ks`` for a model of ``n`` residual blocks: sorted path lengths, always with 0 and n."""
    ks = cli.parse_range(spec, n, "--ks", "path length")
    return sorted({0, n, *(range(n + 1) if ks is None else ks)})


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    p = cli.parser(__doc__.splitlines()[0], default_models=("resnet20",))
    p.add_argument("--ks", default="all", help="path lengths: all, 0,3,5-9 or 0-54:3 (0 and n "
                   "are always measured)")
    p.add_argument("--samples", type=int, default=None,
                   help="random block sets per image and length (default 32 on a GPU, 8 on the "
                        "CPU); --limit defaults to 256 images on a GPU, 32 on the CPU")
    p.add_argument("--at", default="input", choices=("input", "stages"),
                   help="measure at the input only, or also at each stage's input")
    p.add_argument("--mass", type=float, default=0.9, help="gradient share of the effective range")
    args = p.parse_args(argv)
    if args.samples is not None and args.samples < 1:
        raise UsageError(f"--samples must be at least 1, not {args.samples}")
    if not 0 < args.mass <= 1:
        raise UsageError(f"--mass must be in (0, 1], not {args.mass}")
    loaded = cli.load_models(args, allow_init=True)
    for m in loaded:
        try:
            residual_blocks(m.model)
        except UsageError:
            raise UsageError(f"{m.name} has no residual blocks, so it has a single path: "
                             "use a ResNet (plain nets are refused)") from None
    gpu = next(loaded[0].model.parameters()).is_cuda
    samples = args.samples or (32 if gpu else 8)
    if args.limit is None:
        args.limit = 256 if gpu else 32
    lengths = [parse_ks(args.ks, len(residual_blocks(m.model))) for m in loaded]
    ds = cli.load_data(args, loaded)
    out, table = cli.results_table(args, loaded, "paths", analysis.KEY, "gradients.csv")
    results = Table(out / "results.csv", ("model", "kind", "k"))  # refuses a foreign table
    timer = cli.Timer()
    frames = []
    for m, ks in zip(loaded, lengths):
        if m.format == "init":
            print(f"note: {m.name} has freshly initialised weights (no checkpoint)",
                  file=sys.stderr)
        g = analysis.run(m, ds, ks=ks, samples=samples, seed=args.seed, at=args.at, table=table,
                         batch_size=cli.batch_size(args, m))
        frames += [g, analysis.derived(m, ds, g, args.mass)]
    df = pd.concat(frames, ignore_index=True)
    results.replace(df, by=("model",))  # other models' rows stay
    summary = analysis.summary(df, args.mass)
    meta = {
        "analysis": "paths",
        "paper": registry.get("paths").paper,
        "method": (
            "single path of length k: k random blocks pass gradient through their residual "
            "branch only, the others through their shortcut only; L2 norm of the summed "
            "cross-entropy's gradient at the normalised input, per image; eval-mode BN"
        ),
        "samples": samples,
        "mass": args.mass,
        "summary": summary,
        "reference": analysis.REFERENCE,
    }
    note = f"{ds.name}, {len(ds)} images x {samples} sets"
    cli.write_outputs(out, meta, loaded, ds, args, timer, df, "paths", note=note,
                      table=table)
    _print(summary)
    print(f"results: {out / 'results.csv'}", file=sys.stderr)
    return 0


def _print(summary: dict) -> None:
    ref = analysis.REFERENCE
    for model, s in summary.items():
        line = f"{model} ({s['n_blocks']} blocks): gradient magnitude x{s['factor_per_block']:.3g}"
        line += " per block"
        if "effective_range" in s:
            lo, hi = s["effective_range"]
            line += (f"; {s['gradient_mass']:.0%} of the total gradient from paths {lo}-{hi} "
                     f"blocks long, {s['share_of_paths']:.3%} of all paths")
        print(line)
    print(f"Veit et al. (quoted, ResNet-110, {ref['n_blocks']} blocks): paths "
          f"{ref['effective_range'][0]}-{ref['effective_range'][1]} blocks long, "
          f"{ref['effective_range_share_of_paths']:.2%} of all paths")


if __name__ == "__main__":
    sys.exit(main())
