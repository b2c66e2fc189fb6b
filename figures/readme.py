"""README.md's generated blocks, rendered from the committed files (never typed by hand).

    python -m figures.readme [--main-job runs/delete_block/resnet56+plain56]

Each block sits between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` and is short: the
numbers and verdicts live in ``reproduction/REPRODUCTION.md`` (written by :mod:`figures.report`),
which the blocks link to. Nothing here judges anything.

- ``models``: the bundled checkpoints, from their cards (``ablate/checkpoints/*.json``).
- ``main-job``: the README's main job, from its run folder (``--main-job``; kept otherwise).
- ``gallery``: per experiment of the registry, what the reproduction found and its figure, from
  ``reproduction/`` once its run is complete, else from ``reproduction-quick/``.
- ``vit``: the report's answer on whether a ViT's blocks behave like an ensemble.
- ``benchmarks``: one line per ``benchmarks/*.json``.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pandas as pd

from ablate.models import checkpoint, language
from analyses import registry
from figures import report

__all__ = ["BLOCKS", "benchmarks", "fill", "gallery", "main", "main_job", "models_table",
           "update", "vit"]

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


# --- models ----------------------------------------------------------------------------------


_SCHEDULES = {"he": "He et al.'s schedule", "huang": "Huang et al.'s schedule"}


def models_table(folder: Path | None = None) -> str:
    """One row per bundled checkpoint: our measured error, the published one, who trained it."""
    folder = folder or checkpoint.BUNDLED_DIR
    rows = ["| network | test error (ours) | published | weights |", "|---|---|---|---|"]
    for path in sorted(folder.glob("*.json"), key=lambda p: (bool(_card(p).get("weights") is None),
                                                             len(p.stem), p.stem)):
        c = _card(path)
        w = c.get("weights")
        err = c.get("test_error", c.get("final_test_error"))
        if w:
            rows.append(f"| `{c['name']}` | {err:.2%} | {w['published_error']:.2f}% | "
                        f"[{w['source']}](https://github.com/{w['source']}) @ {w['commit']}, "
                        f"{w['license']} |")
            continue
        devices = dict.fromkeys(r["device"] for r in c.get("precision_by_epochs") or []) or [
            c.get("device", "?")]
        sd = ", stochastic depth" if c.get("stochastic_depth") else ""
        schedule = c["recipe"]["schedule"]
        epochs = (f"{c['epochs']} epochs of {_SCHEDULES[schedule]}" if schedule in _SCHEDULES
                  else f"{c['epochs']} {schedule} epochs")
        rows.append(f"| `{c['name']}` | {err:.2%} | | `ablate train`{sd}: {epochs}, "
                    f"{c['train_seconds'] / 3600:.1f} h on {', '.join(devices)} |")
    return "\n".join(rows)


def _card(path: Path) -> dict:
    return json.loads(path.read_text())


# --- main job --------------------------------------------------------------------------------


def main_job(folder: Path) -> str:
    """What the README's main job measured: per model its intact error and deletion damage."""
    df = pd.read_csv(folder / "results.csv")
    meta = json.loads((folder / "meta.json").read_text())
    n = meta["data"]["n_images"]
    lines = [f"Measured by the command above ({n} images of `{meta['data']['name']}`; "
             f"{meta['device']}; {meta['wall_seconds'] / 60:.1f} min of wall time):",
             "",
             "| model | intact error | median error, one unit deleted | non-downsampling units: "
             "median change | downsampling units: change | worst unit |",
             "|---|---|---|---|---|---|"]
    for model, d in df.groupby("model", sort=False):
        worst = d.loc[d.error.idxmax()]
        down = d[d.downsample.astype(bool)]
        rest = d[~d.downsample.astype(bool)]
        downs = ", ".join(f"{r.block_name} {100 * r.error_change:+.1f}" for r in down.itertuples())
        lines.append(f"| {model} | {d.intact_error.iloc[0]:.2%} | {d.error.median():.2%} | "
                     f"{100 * rest.error_change.median():+.2f} points | {downs or '-'} | "
                     f"{worst.block_name}: {worst.error:.1%} |")
    return "\n".join(lines)


# --- gallery ---------------------------------------------------------------------------------


def reproduction_root() -> Path:
    """The full reproduction once its run is complete, else the quick one."""
    full = ROOT / "reproduction"
    run = full / "run.json"
    done = run.exists() and json.loads(run.read_text()).get("complete")
    return full if done else ROOT / "reproduction-quick"


def gallery(root: Path | None = None) -> str:
    """Per experiment (the registry's order): what it asks, what the run found, its figure."""
    root = root or reproduction_root()
    rel = root.relative_to(ROOT) if root.is_relative_to(ROOT) else root
    run = json.loads((root / "run.json").read_text()) if (root / "run.json").exists() else {}
    wall = sum(map(float, report.wall_seconds(run).values()))
    argv = " ".join(["python -m ablate reproduce", *_whole_run(run.get("argv", []))])
    lines = [f"`{argv}` wrote [`{rel}/REPRODUCTION.md`]({rel}/REPRODUCTION.md) "
             f"({'quick run, reduced images and samples; ' if run.get('quick') else ''}"
             f"{_duration(wall)}), where every verdict has its criterion and its numbers:", ""]
    figures = []
    for e in registry.experiments():
        found = e.verdicts(root) if e.verdicts else []
        png = root / "results" / e.name / f"{e.name}.png"
        png = png.relative_to(ROOT) if png.is_relative_to(ROOT) else png
        name = f"[`{e.name}`]({png})" if (ROOT / png).exists() else f"`{e.name}`"
        line = e.line if e.line.endswith((".", "?", "!")) else f"{e.line}."
        lines.append(f"- **{name}**: {line} {_found(found)}")
        if (ROOT / png).exists():
            figures.append(f'<img src="{png}" width="250" alt="{e.name}">')
    return "\n".join([*lines, "", "<p>", *figures, "</p>"] if figures else lines)


def _found(found: list[report.Finding]) -> str:
    """The verdicts of one experiment, grouped by section then verdict, naming the networks."""
    by: dict[str, dict[str, list[str]]] = {}
    for f in found:
        by.setdefault(f.section, {}).setdefault(f.verdict, []).append(_networks(f.ours))
    if not by or all(set(v) == {"not run"} for v in by.values()):
        return "Not run in this reproduction."
    return " ".join(
        f"{section}: " + "; ".join(f"{v} ({', '.join(dict.fromkeys(nets))})"
                                   for v, nets in verdicts.items()) + "."
        for section, verdicts in by.items())


def _networks(ours: str) -> str:
    """The bundled networks a finding names (its first clause where it names none). A finding
    that names a registered language model is about it: the CNNs it names are its yardsticks."""
    lms = report.networks_named(ours, list(language.LMS))
    names = lms or report.networks_named(ours)
    if not names:
        return ours.split(":")[0][:60]
    return ", ".join(names) if len(names) <= 3 else f"{len(names)} networks"


def _whole_run(argv: list[str]) -> list[str]:
    """The last invocation's arguments without ``--only A B ...``: the command of the whole run
    (a step rerun alone resumes it; the rest of the run is reused, not recomputed)."""
    out, skipping = [], False
    for a in argv:
        if a == "--only":
            skipping = True
        elif not (skipping and not a.startswith("-")):
            skipping = False
            out.append(a)
    return out


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


# --- vit -------------------------------------------------------------------------------------


def vit(root: Path | None = None) -> str:
    """The report's answer for each ViT of the full reproduction, and where its tables are."""
    root = root or ROOT / "reproduction"
    answers = report.ensemble_answers(root)
    if not answers:
        return (f"Not measured yet: `{root.name}/` holds no ViT. Train one (`python -m ablate "
                "train --model vit_cifar`), bundle it in `ablate/checkpoints/` and rerun "
                "`python -m ablate reproduce`.")
    return "\n".join([*answers, "", "Block by block and branch by branch: "
                      f"[`{root.name}/REPRODUCTION.md`]({root.name}/REPRODUCTION.md)."])


# --- benchmarks ------------------------------------------------------------------------------


def _train_speed(r: dict) -> str:
    line = (f"training {r['model']} (batch {r['batch_size']}, {r['device']}): "
            f"{r['ours_images_per_s']:.0f} images/s")
    if r.get("baseline_images_per_s"):
        line += (f", {r['ratio']:.2f}x a DataLoader loop in fp32 "
                 f"({r['baseline_images_per_s']:.0f} images/s)")
    if r.get("sd_images_per_s"):
        line += (f"; with stochastic depth {r['sd_images_per_s']:.0f} images/s, "
                 f"{r['sd_time_saving']:.0%} less time per step (Huang et al.: about 25%)")
    return line


def _lesion_sweep(r: dict) -> str:
    unit = "branch" if r.get("granularity") == "branch" else "block"
    line = (f"every single-{unit} deletion of {r['model']} ({r['deletions']} x "
            f"{r['n_images']:,} images, {r['device']}): {r['engine_s']:.0f} s batched")
    if "naive_s" in r:
        line += (f", {r['speedup']:.2f}x one pass per deletion, error counts "
                 f"{'identical' if r['errors_agree'] else 'DIFFERENT'}")
        if r.get("bitwise"):
            line += ", losses bitwise equal"
    if r.get("engine_gflops") and r.get("reference_gflops"):
        line += (f"; {r['engine_gflops']:.0f} GFLOP/s against {r['reference_gflops']:.0f} "
                 "for one large convolution")
    prof = r.get("profile") or {}
    if "convolution_kernel_vs_reference" in prof:
        line += (f" (profile: oneDNN {prof['onednn_share_of_thread_seconds']:.0%} of thread time, "
                 f"its convolution kernels at {prof['convolution_kernel_vs_reference']:.2f}x that "
                 f"rate, layout reorders {prof['reorder_share_of_convolution_calls']:.0%} of "
                 "convolution calls)")
    if "engine_channels_last_s" in r:
        line += (f"; channels-last (opt-in) {r['channels_last_speedup']:.2f}x, "
                 f"{r['channels_last_deletions_with_changed_count']} of {r['deletions']} "
                 "error counts changed")
    if "engine_bf16_s" in r:
        line += (f"; {r['engine_bf16_s']:.0f} s under bf16 autocast (opt-in), "
                 f"{r['bf16_deletions_with_changed_count']} of {r['deletions']} error counts "
                 f"changed by at most {r['bf16_error_count_max_diff']}")
    return line


_LM_KINDS = {"delete": "single-layer deletion", "swap": "swap of adjacent layers"}


def _lm_sweep(r: dict) -> str:
    kinds = " and ".join(_LM_KINDS.get(k, k) for k in r["kinds"])
    model = r["model"].split(" (")[0]
    line = (f"every {kinds} of {model} ({r['conditions']} conditions x {r['sequences']} x "
            f"{r['seq_len']} tokens, {str(r['dtype']).removeprefix('torch.')}, {r['device']}): "
            f"{r['engine_seconds']:.0f} s through the prefix-sharing engine, "
            f"{r['engine_speedup']:.2f}x one forward per condition")
    if "engine_vs_hooks" in r:
        line += f", {r['engine_vs_hooks']:.2f}x a `run_with_hooks`-style loop"
    prof = r.get("profile") or {}
    if "tail_share_of_forward" in prof:
        line += (f" (profile: final norm and output head {prof['tail_share_of_forward']:.0%} of a "
                 "forward, run by every condition" + (
                     f"; the work prefix sharing saves bounds it at {prof['prefix_bound']:.2f}x "
                     "at equal speed per operation"
                     if prof.get("prefix_bound") else "") + ")")
    exact = r.get("engine_bitwise") and r.get("engine_top1_equal")
    line += ", outcomes bitwise equal" if exact else (
        f", max NLL difference {r.get('engine_max_nll_diff', float('nan')):.1e}")
    return line


def benchmarks(folder: Path | None = None) -> str:
    lines = []
    for path in sorted((folder or ROOT / "benchmarks").glob("*.json")):
        r = json.loads(path.read_text())
        if "ours_images_per_s" in r:
            text = _train_speed(r)
        elif "engine_s" in r:
            text = _lesion_sweep(r)
        elif "engine_seconds" in r:
            text = _lm_sweep(r)
        else:
            text = None
        if text:
            lines.append(f"- {text} ([json](benchmarks/{path.name})).")
    return "\n".join(lines) or "No benchmark results are committed yet."


# --- the file --------------------------------------------------------------------------------

BLOCKS = {"models": models_table, "gallery": gallery, "vit": vit, "benchmarks": benchmarks}


def fill(text: str, name: str, body: str) -> str:
    """``text`` with block ``name``'s body replaced by ``body`` (taken literally)."""
    pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no <!-- {name}:start/end --> block")
    return pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)


def update(text: str, main_job_folder: Path | None = None) -> str:
    for name, render in BLOCKS.items():
        text = fill(text, name, render())
    if main_job_folder:
        text = fill(text, "main-job", main_job(main_job_folder))
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m figures.readme",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--main-job", type=Path, help="run folder of the README's main job")
    args = ap.parse_args(argv)
    README.write_text(update(README.read_text(), args.main_job))
    print(f"updated {README}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
