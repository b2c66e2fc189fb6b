"""python -m ablate.reproduce: every analysis of both papers on the shipped checkpoints.

    python -m ablate.reproduce --quick          # a reduced run on the CPU in a few minutes
    python -m ablate.reproduce --device cuda    # the full run: full test split, all samples

Writes ``OUT/results/<analysis>/`` (results.csv, meta.json, figures, PDF and PNG) for each
analysis, then regenerates ``OUT/REPRODUCTION.md`` from those tables. Each analysis resumes from
the rows it already has, so a second run reuses finished results.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ablate._experiments import commands
from ablate._infra.errors import ArgumentParser, UsageError, check_out, cli_main, non_negative
from ablate._infra.io import write_json
from ablate.models import checkpoint
from figures.report import write_report

__all__ = ["Plan", "Settings", "plan", "main"]


@dataclass(frozen=True)
class Settings:
    """How much work each analysis does: the full run or the reduced ``--quick`` one."""

    limit: int | None  # images of the test split (None: all)
    drop_samples: int
    reorder_samples: int
    max_swaps: int
    path_samples: int
    path_images: int
    path_stride: int  # measure every path length (1) or every n/path_stride-th
    grad_images: int
    attribution_images: int
    attribution_steps: int


FULL = Settings(None, 20, 20, 20, 32, 512, 0, 1000, 1000, 32)
QUICK = Settings(500, 4, 4, 6, 8, 64, 8, 128, 64, 8)


@dataclass(frozen=True)
class Plan:
    """Which shipped networks play which part."""

    resnet: str
    plain: str | None
    stochastic: str | None

    @property
    def residual(self) -> list[str]:
        return [m for m in (self.resnet, self.stochastic) if m]

    @property
    def all(self) -> list[str]:
        return [m for m in (self.resnet, self.stochastic, self.plain) if m]


def _depth(name: str) -> int:
    m = re.search(r"(\d+)", name)
    return int(m.group(1)) if m else 0


def plan(resnet: str | None = None, plain: str | None = None,
         stochastic: str | None = None) -> Plan:
    """Pick the deepest shipped ResNet, its stochastic-depth twin and the deepest plain net."""
    names = checkpoint.bundled_names()
    resnets = sorted((n for n in names if re.fullmatch(r"resnet\d+", n)), key=_depth)
    plains = sorted((n for n in names if re.fullmatch(r"plain\d+", n)), key=_depth)
    resnet = resnet or (resnets[-1] if resnets else None)
    if resnet is None:
        raise UsageError(
            "no trained ResNet checkpoint is bundled: pass --resnet NAME with a bundled name, or "
            "train one with python -m ablate.train and copy it into ablate/checkpoints"
        )
    if stochastic is None and f"{resnet}-sd" in names:
        stochastic = f"{resnet}-sd"
    if plain is None and plains:
        same = [p for p in plains if _depth(p) == _depth(resnet)]
        plain = same[0] if same else plains[-1]
    for n in (resnet, plain, stochastic):
        if n is not None and checkpoint.bundled(n) is None:
            have = ", ".join(names) or "none"
            raise UsageError(f"{n} is not a bundled checkpoint (bundled: {have})")
    return Plan(resnet, plain, stochastic)


def _steps(p: Plan, s: Settings, common: list[str], mass: float = 0.9
           ) -> list[tuple[str, str, list[str]]]:
    """(analysis, module, arguments) for every analysis."""
    lim = [] if s.limit is None else ["--limit", str(s.limit)]
    n = _n_blocks(p.resnet)
    ks = "all" if not s.path_stride else f"0-{n}:{max(1, n // s.path_stride)}"
    steps = [
        ("delete_block", "delete_block", ["--model", *p.all, *lim]),
        ("drop_blocks", "drop_blocks", ["--model", *p.all, "--samples", str(s.drop_samples),
                                        *lim]),
        ("reorder_blocks", "reorder_blocks", ["--model", *p.residual, "--samples",
                                              str(s.reorder_samples), "--max-swaps",
                                              str(s.max_swaps), *lim]),
        ("paths", "paths", ["--model", *p.residual, "--samples", str(s.path_samples),
                            "--limit", str(s.path_images), "--ks", ks, "--mass", str(mass)]),
        ("gradnorm", "gradnorm", ["--model", *([p.resnet] + ([p.plain] if p.plain else [])),
                                  "--states", "init", "trained", "--limit", str(s.grad_images)]),
        ("attribution", "attribution", ["--model", *([p.resnet] + ([p.plain] if p.plain else [])),
                                        "--limit", str(s.attribution_images), "--n-steps",
                                        str(s.attribution_steps)]),
    ]
    logs = [checkpoint.bundled_dir() / f"{m}.log.csv" for m in p.residual]
    logs = [str(f) for f in logs if f.exists()]
    out = [(a, mod, [*args, *common]) for a, mod, args in steps]
    if logs:
        out.append(("training_curves", "training_curves", [*logs]))
    return out


def _n_blocks(name: str) -> int:
    from ablate.models.blocks import blocks

    return len(blocks(checkpoint.load(name).model))


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    ap = ArgumentParser(description=__doc__.splitlines()[0],
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="reduced run (500 test images, fewer samples), said so in every output")
    ap.add_argument("--out", default=None, help="output folder (default: reproduction[-quick])")
    ap.add_argument("--data", default=None, help="test data (default: bundled cifar10-jpeg test)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=non_negative, default=0)
    ap.add_argument("--resnet", default=None, help="bundled ResNet (default: the deepest)")
    ap.add_argument("--plain", default=None, help="bundled plain net (default: same depth)")
    ap.add_argument("--stochastic", default=None, help="bundled stochastic-depth ResNet")
    ap.add_argument("--mass", type=float, default=0.9,
                    help="gradient share of the effective path window (paths and the report; "
                         "the report also gives 90%% and 95%%)")
    ap.add_argument("--only", nargs="+", default=None, metavar="ANALYSIS",
                    help="run only these analyses (the report still covers all tables present)")
    args = ap.parse_args(argv)
    settings = QUICK if args.quick else FULL
    out = check_out(args.out or ("reproduction-quick" if args.quick else "reproduction"))
    p = plan(args.resnet, args.plain, args.stochastic)
    common = ["--device", args.device, "--seed", str(args.seed)]
    if args.data:
        common += ["--data", args.data]
    steps = _steps(p, settings, common, args.mass)
    known = {a for a, _, _ in steps}
    if args.only and not set(args.only) <= known:
        bad = sorted(set(args.only) - known)
        raise UsageError(f"unknown analysis {bad[0]!r}: choose from {', '.join(sorted(known))}")
    times = {}
    for analysis, module, a in steps:
        if args.only and analysis not in args.only:
            continue
        dest = out / "results" / analysis
        print(f"\n== {analysis}: python -m ablate.{module} {' '.join(a)}", file=sys.stderr)
        t = time.perf_counter()
        code = commands()[module]([*a, "--out", str(dest)])
        times[analysis] = round(time.perf_counter() - t, 1)
        if code not in (0, None):
            raise UsageError(f"{analysis} stopped with status {code}; see the message above")
    write_json(out / "run.json", {
        "quick": args.quick, "settings": settings.__dict__, "plan": p.__dict__,
        "wall_seconds": times, "argv": list(argv) if argv is not None else sys.argv[1:],
    })
    report = write_report(out)
    print(f"\nreport: {report}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
