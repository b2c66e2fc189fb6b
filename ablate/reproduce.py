"""python -m ablate.reproduce: every analysis of both papers on the bundled checkpoints.

    python -m ablate.reproduce --quick          # resnet20 and plain20, 500 images: a few minutes
    python -m ablate.reproduce --device cpu     # the full run (hours: scripts/reproduce_cpu.sh)

The full plan (:func:`plan`) follows whatever is bundled: Veit Figs. 3, 5a, 5b and attribution on
resnet56 and resnet110, Fig. 3 against plain56; Figs. 3, 5a and 5b on a bundled ViT (vit_cifar),
whose attention and MLP branches are also deleted one at a time;
Block Influence and angular distance (4-block windows) against deletion damage on the first
ResNet and the ViTs;
Fig. 6 on resnet110 (resnet56 until it ships, said so in run.json and the report); Fig. 8 and
Huang et al. on resnet110 against resnet110-sd once both ship; gradients per depth on resnet56 and
plain56; He et al.'s degradation on every depth with both a plain net and a ResNet.

Writes ``OUT/results/<analysis>/`` (results.csv, meta.json, figures, PDF and PNG) for each
analysis, ``OUT/run.json`` (plan, sample sizes and why, wall times summed over invocations), then
regenerates ``OUT/REPRODUCTION.md`` from those tables. Each analysis resumes from the rows it
already has, so a second run (or one after a new checkpoint is bundled) measures only what is
missing.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ablate._experiments import commands
from ablate._infra.errors import ArgumentParser, UsageError, check_out, cli_main, non_negative
from ablate._infra.io import write_json
from ablate.models import checkpoint
from figures.report import write_report

__all__ = ["Plan", "Settings", "plan", "main"]


@dataclass(frozen=True)
class Settings:
    """How much work each analysis does: the full run or the reduced ``--quick`` one."""

    limit: int | None  # images for the error curves: Fig. 3, degradation (None: all)
    sweep_limit: int | None  # images for Figs. 5a and 5b and the redundancy step (None: all)
    drop_samples: int
    reorder_samples: int
    max_swaps: int
    path_samples: int
    path_images: int
    path_lengths: int  # about this many path lengths, evenly spaced over 0..n (0: all)
    grad_images: int
    attribution_images: int
    attribution_steps: int


FULL = Settings(None, 1000, 8, 8, 20, 8, 128, 18, 1000, 128, 16)
QUICK = Settings(500, 500, 4, 4, 6, 8, 64, 8, 128, 64, 8)

# Why the full run measures what it does (written into run.json, quoted in REPRODUCTION.md).
WHY = {
    "limit": "Fig. 3 and the degradation table use the whole 10,000-image split: at 10,000 "
             "images a paired 90% interval of a single deletion's change is a few tenths of a "
             "point wide, so a block can be shown equivalent to the intact net within 1 point, "
             "and the paper's error differences of 0.3-3 points between depths are resolvable",
    "sweep_limit": "Figs. 5a and 5b draw random sets and orders: their spread between draws "
                   "(several points) dominates the test-set noise of 1,000 images (Wilson "
                   "half-width about 2.8 points at 25% error, 1.6 at 7%), so the budget goes "
                   "to more draws rather than more images; the redundancy measures use the "
                   "same 1,000 images, their rank correlations bootstrapped over them",
    "drop_samples": "8 random sets per k = 1..20 (161 conditions per network): each mean "
                    "error per k averages 8 draws, a standard error about a third of the "
                    "between-set spread; more draws cost a ResNet-110 pass over 1,000 images each",
    "reorder_samples": "8 random orders per number of swaps 1..20 (161 orders per network): "
                       "about 15 orders per 0.1-wide bin of Kendall's tau",
    "max_swaps": "1 to 20 random swaps: enough to take the order far from the original (the "
                 "report gives the lowest Kendall's tau reached), as Veit's Fig. 5b does",
    "path_samples": "8 random block sets per image and path length; the interval is clustered "
                    "by image (the 128 images are the independent units, the sets within one "
                    "image are not)",
    "path_images": "128 images x 8 sets = 1,024 gradients per path length: the clustered 95% "
                   "interval of the log-magnitude is narrow against its decay over 50 lengths",
    "path_lengths": "about 18 path lengths evenly spaced over 0..n (every 3rd for ResNet-110's "
                    "54 blocks, every length for ResNet-56's 27): the slope and the effective "
                    "window are interpolated in log space between measured lengths",
    "grad_images": "1,000 images (eight batches of 128): the per-unit t intervals of the "
                   "gradient norm are a few percent of the norm, far below the orders of "
                   "magnitude between plain and residual nets",
    "attribution_images": "128 images: Spearman's rho is over the network's 27 or 54 blocks; "
                          "each block's mean attribution over 128 images has a t interval in "
                          "the table. Conductance costs blocks x steps x images backward passes, "
                          "the most expensive step per image",
    "attribution_steps": "16 integration steps of conductance (captum's default is 50; the "
                         "ranking of blocks, not the completeness error, is what is compared)",
}

@dataclass(frozen=True)
class Plan:
    """Which bundled networks play which part (see :func:`plan`)."""

    resnets: tuple[str, ...]  # Figs. 3, 5a, 5b and attribution (full: resnet56, resnet110)
    plain: str | None  # Fig. 3's plain comparator (plain56)
    paths: str  # Fig. 6 (resnet110, else the deepest of ``resnets``)
    gradnorm: tuple[str, ...]  # gradient per depth, init and trained (resnet56, plain56)
    stochastic: tuple[str, str] | None  # (constant, stochastic depth): Fig. 8 and Huang
    zoo: tuple[str, ...]  # degradation: plain-n and resnet-n at every depth with both
    notes: tuple[str, ...] = ()  # what fell back, said in run.json and the report
    vits: tuple[str, ...] = ()  # Figs. 3, 5a, 5b on vision transformers (vit_cifar, bundled)

    @property
    def deletion(self) -> list[str]:
        """Fig. 3 (and Fig. 8, Huang's Table 1): the ResNets, the SD pair, the plain net, the
        ViTs."""
        names = [*self.resnets, *(self.stochastic or ()), *([self.plain] if self.plain else []),
                 *self.vits]
        return list(dict.fromkeys(names))

    @property
    def sweeps(self) -> list[str]:
        """Figs. 5a and 5b: the ResNets and the ViTs."""
        return [*self.resnets, *self.vits]


def _depth(name: str) -> int:
    m = re.search(r"(\d+)", name)
    return int(m.group(1)) if m else 0


def _family(names: list[str], prefix: str) -> list[str]:
    return sorted((n for n in names if re.fullmatch(rf"{prefix}\d+", n)), key=_depth)


def _resnets(names: list[str], quick: bool) -> tuple[str, ...]:
    """Quick: the shallowest ResNet (resnet20). Full: resnet56 and resnet110 where bundled, the
    deep ones of Veit et al.'s comparison; else the deepest there is."""
    found = _family(names, "resnet")
    if not found:
        raise UsageError(
            "no trained ResNet checkpoint is bundled: pass --resnet NAME with a bundled name, or "
            "train one with python -m ablate.train and copy it into ablate/checkpoints")
    if quick:
        return (found[0],)
    deep = [n for n in found if 56 <= _depth(n) <= 110]
    return tuple(deep or found[-1:])


def _twins(names: list[str], resnets: tuple[str, ...], stochastic: str | None
           ) -> tuple[str, str] | None:
    if stochastic is not None:
        const = stochastic.removesuffix("-sd")
        return (const if const in names else resnets[-1], stochastic)
    for r in reversed(resnets):
        if f"{r}-sd" in names:
            return (r, f"{r}-sd")
    return None


def plan(resnet: Sequence[str] | None = None, plain: str | None = None,
         stochastic: str | None = None, quick: bool = False,
         vit: Sequence[str] | None = None) -> Plan:
    """The parts for the bundled networks: what ``--resnet/--plain/--stochastic/--vit`` name,
    else the defaults of :class:`Plan`; every fallback is written into ``notes``."""
    names = checkpoint.bundled_names()
    vits = tuple(vit) if vit is not None else (
        () if quick else tuple(n for n in names if n.startswith("vit")))
    resnets = tuple(resnet) if resnet else _resnets(names, quick)
    plains = _family(names, "plain")
    if plain is None and plains:
        plain = min(plains, key=lambda p: (abs(_depth(p) - _depth(resnets[0])), _depth(p)))
    paths = "resnet110" if "resnet110" in resnets else max(resnets, key=_depth)
    pair = _twins(names, resnets, stochastic)
    zoo = [n for d in sorted({_depth(p) for p in plains}) if f"resnet{d}" in names
           for n in (f"plain{d}", f"resnet{d}")]
    notes = []
    if paths != "resnet110":
        notes.append(f"Fig. 6 (paths) runs on {paths}: resnet110 is not bundled or not chosen")
    if pair is None:
        notes.append("Fig. 8 and Huang et al.: no stochastic-depth twin (NAME-sd) of "
                     f"{', '.join(resnets)} is bundled: not run")
    p = Plan(resnets, plain, paths, (resnets[0], *([plain] if plain else [])), pair,
             tuple(zoo), tuple(notes), vits)
    for n in dict.fromkeys([*p.deletion, *p.zoo]):
        if checkpoint.bundled(n) is None:
            have = ", ".join(names) or "none"
            raise UsageError(f"{n} is not a bundled checkpoint (bundled: {have})")
    return p


def _logs(p: Plan) -> list[str]:
    """The trainer logs of the plan's residual nets that ship one (Huang's Fig. 7 analogue)."""
    names = dict.fromkeys([*(p.stochastic or ()), *p.resnets])
    logs = [checkpoint.bundled_dir() / f"{m}.log.csv" for m in names]
    return [str(f) for f in logs if f.exists()]


def _steps(p: Plan, s: Settings, common: list[str], mass: float = 0.9
           ) -> list[tuple[str, str, list[str]]]:
    """(analysis, module, arguments) for every analysis."""
    lim = [] if s.limit is None else ["--limit", str(s.limit)]
    sweep_lim = [] if s.sweep_limit is None else ["--limit", str(s.sweep_limit)]
    n = _n_blocks(p.paths)
    ks = "all" if not s.path_lengths else f"0-{n}:{max(1, n // s.path_lengths)}"
    # Cheap steps first, so a run stopped early has their tables; the report keeps its order.
    steps = [
        ("degradation", "degradation", ["--model", *p.zoo, *lim]),
        ("gradnorm", "gradnorm", ["--model", *p.gradnorm, "--states", "init", "trained",
                                  "--limit", str(s.grad_images)]),
        ("delete_block", "delete_block", ["--model", *p.deletion, *lim,
                                          *(["--branches"] if p.vits else [])]),
        ("paths", "paths", ["--model", p.paths, "--samples", str(s.path_samples),
                            "--limit", str(s.path_images), "--ks", ks, "--mass", str(mass)]),
        ("drop_blocks", "drop_blocks", ["--model", *p.sweeps, "--samples", str(s.drop_samples),
                                        *sweep_lim]),
        ("reorder_blocks", "reorder_blocks", ["--model", *p.sweeps, "--samples",
                                              str(s.reorder_samples), "--max-swaps",
                                              str(s.max_swaps), *sweep_lim]),
        ("attribution", "attribution", ["--model", *p.resnets, "--limit",
                                        str(s.attribution_images), "--n-steps",
                                        str(s.attribution_steps)]),
        ("redundancy", "redundancy", ["--model", *p.resnets[:1], *p.vits, "--windows", "4",
                                      *sweep_lim]),
    ][0 if p.zoo else 1:]
    out = [(a, mod, [*args, *common]) for a, mod, args in steps]
    if _logs(p):
        out.append(("training_curves", "training_curves", _logs(p)))
    return out


def _n_blocks(name: str) -> int:
    from ablate.models.blocks import blocks

    return len(blocks(checkpoint.load(name).model))


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    ap = ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="reduced run (500 test images, fewer samples), said so in every output")
    ap.add_argument("--out", default=None, help="output folder (default: reproduction[-quick])")
    ap.add_argument("--data", default=None,
                    help="test data (default: the bundled pristine CIFAR-10 test split)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument("--seed", type=non_negative, default=0, help="seed of every random draw")
    ap.add_argument("--resnet", nargs="+", default=None, metavar="NAME",
                    help="bundled ResNets for Figs. 3, 5a, 5b and attribution (default: resnet56 "
                         "and resnet110 where bundled; --quick: the shallowest)")
    ap.add_argument("--plain", default=None, help="bundled plain net (default: the depth of the "
                                                   "first ResNet)")
    ap.add_argument("--stochastic", default=None,
                    help="bundled stochastic-depth ResNet (default: NAME-sd of a ResNet, if any)")
    ap.add_argument("--vit", nargs="*", default=None, metavar="NAME",
                    help="bundled vision transformers for Figs. 3, 5a and 5b beside the ResNets "
                         "(default: every bundled vit*; none with --quick; --vit alone: none)")
    ap.add_argument("--mass", type=float, default=0.9,
                    help="gradient share of the effective path window (paths and the report; "
                         "the report also gives 90%% and 95%%)")
    ap.add_argument("--only", nargs="+", default=None, metavar="ANALYSIS",
                    help="run only these analyses (the report still covers all tables present)")
    args = ap.parse_args(argv)
    settings = QUICK if args.quick else FULL
    out = check_out(args.out or ("reproduction-quick" if args.quick else "reproduction"))
    p = plan(args.resnet, args.plain, args.stochastic, quick=args.quick, vit=args.vit)
    for line in p.notes:
        print(f"plan: {line}", file=sys.stderr)
    common = ["--device", args.device, "--seed", str(args.seed)]
    if args.data:
        common += ["--data", args.data]
    steps = _steps(p, settings, common, args.mass)
    known = {a for a, _, _ in steps}
    if args.only and not set(args.only) <= known:
        bad = sorted(set(args.only) - known)
        raise UsageError(f"unknown analysis {bad[0]!r}: choose from {', '.join(sorted(known))}")
    names = [a for a, _, _ in steps]
    _write_run(out, args, argv, settings, p, names, {})
    running: list[tuple[str, float]] = []  # the step under way and when it began
    previous = signal.signal(signal.SIGTERM, _interrupt)  # `reproduce_cpu.sh stop`, a kill
    try:
        for analysis, t in _run_steps(steps, out, args.only, running):
            _write_run(out, args, argv, settings, p, names, {analysis: t})  # a stop keeps these
            running.clear()  # counted once
    except (KeyboardInterrupt, SystemExit):  # a command's cli_main turns ^C into exit 130
        # The stopped step's rows so far are in its table and the next run reuses them: count
        # the time they took, without marking the step finished.
        if running:
            a, t0 = running[-1]
            _write_run(out, args, argv, settings, p, names, {},
                       spent={a: round(time.perf_counter() - t0, 1)})
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    report = write_report(out)
    print(f"\nreport: {report}", file=sys.stderr)
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _run_steps(steps: list[tuple[str, str, list[str]]], out: Path, only: list[str] | None,
               running: list[tuple[str, float]] | None = None) -> Iterator[tuple[str, float]]:
    """Run each analysis in turn; yield its name and wall seconds as it finishes (``running``
    gets each step's name and start time as it begins)."""
    for analysis, module, a in steps:
        if only and analysis not in only:
            continue
        dest = out / "results" / analysis
        print(f"\n== {analysis}: python -m ablate.{module} {' '.join(a)}", file=sys.stderr)
        t = time.perf_counter()
        if running is not None:
            running.append((analysis, t))
        code = commands()[module]([*a, "--out", str(dest)])
        if code not in (0, None):
            raise UsageError(f"{analysis} stopped with status {code}; see the message above")
        yield analysis, round(time.perf_counter() - t, 1)


def _write_run(out: Path, args: argparse.Namespace, argv: Sequence[str] | None,
               settings: Settings, p: Plan, steps: list[str], times: dict[str, float],
               spent: dict[str, float] | None = None) -> None:
    """run.json: the plan and settings, each analysis' wall time, summed over the invocations
    that ran it (a resumed run adds only what it measured; ``spent``: the time of a step that
    was stopped, its rows kept), and which analyses have finished under this plan (``complete``
    once all of them have: a newly bundled network reopens them)."""
    f = out / "run.json"
    old = json.loads(f.read_text()) if f.exists() else {}
    total = dict(old.get("wall_seconds_total", old.get("wall_seconds", {})))
    for k, v in {**times, **(spent or {})}.items():
        total[k] = round(total.get(k, 0.0) + v, 1)
    plan_ = json.loads(json.dumps(asdict(p)))
    same = old.get("plan") == plan_ and old.get("settings") == settings.__dict__
    finished = list(dict.fromkeys([*(old.get("finished", []) if same else []), *times]))
    write_json(f, {
        "quick": args.quick, "settings": settings.__dict__, "plan": plan_,
        "steps": steps, "finished": finished, "complete": set(steps) <= set(finished),
        "settings_why": {} if args.quick else WHY,
        "wall_seconds": {**old.get("wall_seconds", {}), **times}, "wall_seconds_total": total,
        **({"wall_seconds_untimed": old["wall_seconds_untimed"]}
           if "wall_seconds_untimed" in old else {}),
        "argv": list(argv) if argv is not None else sys.argv[1:],
    })


if __name__ == "__main__":
    sys.exit(main())
