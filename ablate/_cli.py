"""The command layer every experiment shares: flags from its options, then ``measure``, then
``meta.json`` (the experiment's fields plus provenance) and its figure.

``python -m ablate NAME`` (``ablate/__main__.py``) and the ``python -m ablate.NAME`` modules both
end here; ``reproduce`` calls :func:`execute` with options it builds itself.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import fields, is_dataclass
from pathlib import Path

from ablate import models
from ablate._infra import distributed
from ablate._infra.errors import ArgumentParser, check_out, cli_main
from ablate.models import checkpoint
from analyses import registry
from analyses.options import Images, add_flags
from analyses.registry import Experiment, Result
from analyses.table import Table

__all__ = ["command", "execute", "invocations", "parser", "write_outputs"]


class _ListModels(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        print("architectures:", " ".join(models.names()))
        print("bundled checkpoints:", " ".join(checkpoint.bundled_names()) or "none")
        parser.exit()


def parser(exp: Experiment, prog: str | None = None) -> argparse.ArgumentParser:
    """The experiment's flags (its options' fields) under one description."""
    doc = exp.line
    if issubclass(exp.options, Images) and exp.default_models:
        doc += f" (default models: {' '.join(exp.default_models)})"
    p = ArgumentParser(prog=prog or f"python -m ablate {exp.name}", description=doc)
    add_flags(p, exp.options)
    if issubclass(exp.options, Images):
        p.add_argument("--list-models", action=_ListModels, nargs=0,
                       help="list models and exit")
    return p


def command(name: str):
    """The ``main(argv) -> int`` of experiment ``name``: parse, measure, write, draw."""

    @cli_main
    def main(argv: Sequence[str] | None = None) -> int:
        exp = registry.get(name)
        p = parser(exp)
        ns = p.parse_args(argv)
        o = exp.options(**{f.name: getattr(ns, f.name) for f in fields(exp.options)})
        return execute(exp, o)

    main.__name__ = main.__qualname__ = f"{name}_main"
    return main


def execute(exp: Experiment, o: object, argv: Sequence[str] | None = None) -> int:
    """Measure ``o`` (the experiment's options), then write meta.json and the figure on rank 0
    and print the summary; every rank leaves the process group."""
    assert is_dataclass(o) and isinstance(o, exp.options), f"options of {exp.name}"
    if o.out is not None:
        check_out(o.out)
    t0 = time.perf_counter()
    r = exp.measure(o)
    if distributed.is_main():
        write_outputs(exp, r, o, round(time.perf_counter() - t0, 2))
        if r.summary is not None:
            r.summary()
        print(f"results: {r.results or r.out / 'results.csv'}", file=sys.stderr)
    distributed.finish()
    return 0


def write_outputs(exp: Experiment, r: Result, o: object, wall_seconds: float) -> None:
    """``meta.json`` (the experiment's fields, models and data, seed, provenance, every
    invocation that measured rows), then the figure unless ``--no-figure``."""
    from ablate._infra.provenance import environment
    from analyses.context import data_meta
    from analyses.table import write_meta

    device = next(r.loaded[0].model.parameters()).device if r.loaded else "cpu"
    meta = {"analysis": exp.name, "paper": exp.paper, **r.meta}
    if r.loaded:
        meta["models"] = [m.provenance() for m in r.loaded]
    if r.ds is not None:
        meta["data"] = data_meta(r.ds, getattr(o, "limit", None))
    meta |= {"seed": o.seed, "wall_seconds": wall_seconds, **environment(device),
             "world_size": distributed.rank_world()[1]}
    meta["invocations"] = invocations(r.out / "meta.json", meta, r.table)
    write_meta(r.out / "meta.json", meta)
    if o.no_figure:
        return
    from figures import plot_for
    from figures.theme import save

    plot = plot_for(exp.name)
    if plot is None:
        print(f"figure: none registered for {exp.name}", file=sys.stderr)
        return
    note = r.note
    if note is None and r.ds is not None and getattr(o, "limit", None) is not None:
        note = f"{r.ds.name}, {len(r.ds)} images"
    print("figure:", *save(plot(r.df, note=note), r.out / exp.name), file=sys.stderr)


_INVOCATION = ("utc", "device", "git_commit", "command", "wall_seconds")


def invocations(path: Path, meta: dict, table: Table | None) -> list[dict]:
    """Every invocation that measured rows of a resumed table: where, when, with what code and
    how many rows. The top-level ``device`` etc. are the last invocation's, which may only have
    reused rows measured elsewhere; a table begun afresh starts the list afresh."""
    if table is None:  # a table rebuilt whole each time: this invocation alone
        return [{k: meta.get(k) for k in _INVOCATION}]
    now = [{**{k: meta.get(k) for k in _INVOCATION}, "rows": table.added}] if table.added else []
    if len(table.df) <= table.added or not path.is_file():
        return now
    try:
        prev = json.loads(path.read_text())
    except (OSError, ValueError):
        return now
    earlier = prev.get("invocations")
    if not isinstance(earlier, list):  # a meta.json from before this list: rows unknown
        earlier = [{**{k: prev.get(k) for k in _INVOCATION}, "rows": None}]
    return [*earlier, *now]
