"""python -m ablate.reproduce: every analysis of both papers on the bundled checkpoints.

    python -m ablate.reproduce --quick          # resnet20 and plain20, 500 images: a few minutes
    python -m ablate.reproduce --device cpu     # the full run (hours; resumable: run it again)

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

A bundled checkpoint replaced by new weights under the same name (a longer training run) has its
rows moved out of ``OUT/results`` into ``OUT/retired/<analysis>.csv`` before anything runs
(:func:`retire`), so that no finding mixes two nets; run.json and the report's "Replaced
checkpoints" section say what was retired, its measured test error and the commit it was measured
at.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, fields, replace
from pathlib import Path

import pandas as pd

from ablate._cli import execute
from ablate._infra.errors import ArgumentParser, UsageError, check_out, cli_main, non_negative
from ablate._infra.io import sha256_file, write_json
from ablate.models import checkpoint
from analyses import registry
from analyses.plan import Plan, Settings, plan
from analyses.registry import Experiment
from analyses.table import Table, header, stored_key
from figures.report import write_report

__all__ = ["Plan", "Settings", "main", "plan", "retire", "steps"]


def steps(p: Plan, s: Settings, **common: object) -> list[tuple[Experiment, object]]:
    """(experiment, its options) for every registered experiment that runs under this plan, in
    the registry's order. ``common`` (device, seed, data, mass) is set on every options object
    that has the field."""
    out = []
    for e in registry.experiments():
        o = e.reproduce(p, s) if e.reproduce is not None else None
        if o is None:
            continue
        have = {f.name for f in fields(o)}
        o = replace(o, **{k: v for k, v in common.items() if k in have and v is not None})
        out.append((e, o))
    return out


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
    settings = Settings.quick() if args.quick else Settings()
    out = check_out(args.out or ("reproduction-quick" if args.quick else "reproduction"))
    p = plan(args.resnet, args.plain, args.stochastic, quick=args.quick, vit=args.vit)
    for line in p.notes:
        print(f"plan: {line}", file=sys.stderr)
    plan_steps = steps(p, settings, device=args.device, seed=args.seed, data=args.data,
                       mass=args.mass)
    names = [e.name for e, _ in plan_steps]
    if args.only and not set(args.only) <= set(names):
        bad = sorted(set(args.only) - set(names))
        raise UsageError(f"unknown analysis {bad[0]!r}: choose from {', '.join(sorted(names))}")
    _write_run(out, args, argv, settings, p, names, {})
    for r in retire(out):
        print(f"retired: {r['model']} {r['checkpoint_sha256'][:12]} (replaced by the bundled "
              f"checkpoint): {sum(r['rows'].values())} rows moved to {out / 'retired'}",
              file=sys.stderr)
    running: list[tuple[str, float]] = []  # the step under way and when it began
    previous = signal.signal(signal.SIGTERM, _interrupt)  # a kill
    try:
        for analysis, t in _run_steps(plan_steps, out, args.only, running):
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


def retire(out: Path) -> list[dict]:
    """Move every row measured on an earlier checkpoint of a bundled name from
    ``out/results/<analysis>/results.csv`` to ``out/retired/<analysis>.csv``, and record each
    retired checkpoint in ``out/run.json`` (model, sha256, when, rows per analysis, its measured
    test error and the commit that measured it). Returns the new records.

    Tables are keyed by ``checkpoint_sha256``, so new weights under an old name get new rows;
    without this their findings would pool both nets. Rows of names not bundled stay."""
    current = {}
    for n in checkpoint.bundled_names():
        path = checkpoint.bundled(n)
        if path is not None and path.stat().st_size:
            current[n] = sha256_file(path)
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    found: dict[tuple[str, str], dict] = {}
    for e in registry.experiments():
        path = out / "results" / e.name / "results.csv"
        columns = header(path)
        if "checkpoint_sha256" not in columns:
            continue
        # a derived table (paths) has its own key; one with none recorded: each whole row
        key = stored_key(path) or list(e.key or columns)

        def stale(df: pd.DataFrame) -> pd.Series:
            was = df["model"].astype(str).map(current)
            return was.notna() & (df["checkpoint_sha256"].astype(str) != was)

        gone = Table(path, key).pop(stale)
        if gone.empty:
            continue
        Table(out / "retired" / f"{e.name}.csv", key).add(gone.to_dict("records"))
        commit = _measured_commit(path.with_name("meta.json"))
        for (model, sha), d in gone.groupby(["model", "checkpoint_sha256"], sort=False):
            r = found.setdefault((str(model), str(sha)), {
                "model": str(model), "checkpoint_sha256": str(sha), "replaced_utc": now,
                "replaced_by": current[str(model)], "measured_commit": commit, "rows": {}})
            r["rows"][e.name] = len(d)
            if {"intact_error", "n_images"} <= set(d.columns) and d["n_images"].max() > \
                    r.get("n_images", 0):
                best = d[d["n_images"] == d["n_images"].max()]
                r["test_error"] = float(best["intact_error"].iloc[0])
                r["n_images"] = int(best["n_images"].iloc[0])
    records = list(found.values())
    if records:
        f = out / "run.json"
        run = json.loads(f.read_text()) if f.is_file() else {}
        write_json(f, {**run, "retired": [*run.get("retired", []), *records]})
    return records


def _measured_commit(meta: Path) -> str | None:
    try:
        commit = json.loads(meta.read_text()).get("git_commit")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return None
    return commit if isinstance(commit, str) else None


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _run_steps(plan_steps: list[tuple[Experiment, object]], out: Path, only: list[str] | None,
               running: list[tuple[str, float]] | None = None) -> Iterator[tuple[str, float]]:
    """Run each experiment in turn; yield its name and wall seconds as it finishes (``running``
    gets each step's name and start time as it begins)."""
    for e, o in plan_steps:
        if only and e.name not in only:
            continue
        o = replace(o, out=str(out / "results" / e.name))
        print(f"\n== {e.name}: {_flags(o)}", file=sys.stderr)
        t = time.perf_counter()
        if running is not None:
            running.append((e.name, t))
        try:
            execute(e, o)
        except UsageError as err:
            raise UsageError(f"{e.name}: {err}") from None
        yield e.name, round(time.perf_counter() - t, 1)


def _flags(o: object) -> str:
    """The options as the command line that would give them (for the log)."""
    parts = []
    for f in fields(o):
        v = getattr(o, f.name)
        if v == f.default or v is None or v is False or v == []:
            continue
        flag = f"--{f.name.replace('_', '-')}"
        if f.metadata.get("positional"):
            flag = ""
        vals = v if isinstance(v, list) else ([] if v is True else [v])
        parts.append(" ".join([flag, *map(str, vals)]).strip())
    return " ".join(parts)


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
    same = old.get("plan") == plan_ and old.get("settings") == asdict(settings)
    finished = list(dict.fromkeys([*(old.get("finished", []) if same else []), *times]))
    write_json(f, {
        "quick": args.quick, "settings": asdict(settings), "plan": plan_,
        "steps": steps, "finished": finished, "complete": set(steps) <= set(finished),
        "settings_why": {} if args.quick else Settings.why(),
        "wall_seconds": {**old.get("wall_seconds", {}), **times}, "wall_seconds_total": total,
        "argv": list(argv) if argv is not None else sys.argv[1:],
        "retired": old.get("retired", []),
    })


if __name__ == "__main__":
    sys.exit(main())
