"""A new experiment is one analysis module and one figure module: a toy experiment in a temporary
package shows up in ``--list``, runs as ``python -m ablate toy``, joins reproduce's quick plan and
gets its section in the report, with no edit to a shared file."""

from __future__ import annotations

import json
import shutil
import sys
import textwrap

import pytest

from ablate import reproduce
from ablate.__main__ import main
from analyses import registry
from analyses.plan import Settings
from figures import plot_for
from figures.report import write_report

ANALYSIS = '''
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from analyses import command
from analyses.options import Images, flag
from analyses.registry import Experiment, Result
from analyses.verdicts import Finding, read

KEY = ("model", "block")


@dataclass
class Options(Images):
    scale: float = flag(0.5, "a made-up setting")


def run(loaded, ds, *, scale=0.5):
    return pd.DataFrame({"model": [loaded.name] * 2, "block": [0, 1], "value": [scale, 1.0]})


def measure(o):
    loaded = command.load_models(o, EXPERIMENT.default_models)
    ds = command.load_data(o, loaded)
    out, table = command.results_table(o, loaded, "toy", KEY)
    table.add(pd.concat([run(m, ds, scale=o.scale) for m in loaded]).to_dict("records"))
    return Result(out, table.df, {"scale": o.scale}, loaded, ds, table)


def verdicts(root: Path):
    df, _ = read(root, "toy")
    ok = df is not None and (df["value"] > 0).all()
    return [Finding("Toy Fig. 1", "values are positive", "checked", "reproduces" if ok else
                    "not run", "every value > 0")]


EXPERIMENT = Experiment(
    name="toy", paper="Nobody et al. 2026", run=run, key=KEY, options=Options, measure=measure,
    verdicts=verdicts, order=95, summary="a toy experiment from outside the package",
    reproduce=lambda plan, s: Options(model=list(plan.resnets), scale=0.25),
)
'''

FIGURE = '''
import matplotlib.pyplot as plt

from figures import register


@register("toy")
def plot(df, *, note=None):
    fig, ax = plt.subplots()
    ax.plot(df["block"], df["value"])
    return fig
'''


@pytest.fixture()
def toy(tmp_path, monkeypatch):
    pkg = tmp_path / "toypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "toy_analysis.py").write_text(textwrap.dedent(ANALYSIS))
    (pkg / "toy_figure.py").write_text(textwrap.dedent(FIGURE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("ABLATE_EXPERIMENTS", "toypkg.toy_analysis")
    monkeypatch.setenv("ABLATE_FIGURES", "toypkg.toy_figure")
    yield
    for m in [m for m in sys.modules if m.startswith("toypkg")]:
        del sys.modules[m]
    import figures

    figures._PLOTS.pop("toy", None)


@pytest.fixture()
def bundled(tmp_path, tiny_checkpoints, monkeypatch):
    d = tmp_path / "zoo"
    d.mkdir()
    for path in tiny_checkpoints.values():
        shutil.copy(path, d / path.name)
        shutil.copy(path.with_suffix(".json"), d / path.with_suffix(".json").name)
    monkeypatch.setenv("ABLATE_CHECKPOINTS", str(d))
    return d


def test_toy_is_listed_and_runs_as_a_command(toy, tmp_path, tiny_checkpoints, image_folder,
                                             capsys):
    assert main(["--list"]) == 0
    listed = capsys.readouterr().out
    assert "toy" in listed and "a toy experiment from outside the package" in listed
    assert "delete_block" in listed  # the package's own are still there
    assert registry.get("toy").module == "toypkg.toy_analysis"
    assert plot_for("toy") is not None
    out = tmp_path / "out"
    argv = ["toy", "--checkpoint", str(tiny_checkpoints["resnet20"]), "--data",
            str(image_folder), "--scale", "2", "--out", str(out)]
    assert main(argv) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["analysis"] == "toy" and meta["scale"] == 2.0
    assert meta["paper"] == "Nobody et al. 2026" and meta["models"]
    assert (out / "toy.png").exists() and (out / "results.csv").exists()
    with pytest.raises(SystemExit) as e:
        main(["toy", "--scale", "x"])
    assert e.value.code == 2


def test_toy_joins_the_quick_plan_and_the_report(toy, bundled, tmp_path):
    steps = {e.name: o for e, o in reproduce.steps(reproduce.plan(quick=True), Settings.quick(),
                                                   device="cpu", seed=3)}
    assert steps["toy"].scale == 0.25 and steps["toy"].model == ["resnet20"]
    assert steps["toy"].seed == 3 and steps["toy"].device == "cpu"  # the run's common flags
    assert list(steps)[-1] == "toy"  # its order
    root = tmp_path / "repro"
    (root / "results" / "toy").mkdir(parents=True)
    (root / "results" / "toy" / "results.csv").write_text("model,block,value\nr,0,1.0\n")
    report = write_report(root).read_text()
    assert "| Toy Fig. 1 | values are positive | checked | **reproduces** |" in report


def test_a_name_declared_twice_is_refused(toy, tmp_path, monkeypatch):
    (tmp_path / "toypkg" / "again.py").write_text(
        "from toypkg.toy_analysis import EXPERIMENT as E\n"
        "from dataclasses import replace\nEXPERIMENT = replace(E, module='')\n")
    monkeypatch.setenv("ABLATE_EXPERIMENTS", "toypkg.toy_analysis,toypkg.again")
    with pytest.raises(ValueError, match="declared twice"):
        registry.experiments()


def test_the_dispatcher_lists_runs_tools_and_refuses_unknown_names(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m ablate EXPERIMENT") and "train" in out
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0 and "--lesion-at" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["nosuch"])
    assert e.value.code == 2 and "no experiment 'nosuch'" in capsys.readouterr().err


def test_a_closed_pipe_ends_quietly():
    """`python -m ablate --list | head -1`: no traceback when the reader stops reading."""
    import subprocess
    from pathlib import Path

    p = subprocess.Popen([sys.executable, "-m", "ablate", "--list"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, cwd=Path(__file__).resolve().parents[2])
    p.stdout.close()  # before the child writes anything: its flush meets a closed pipe
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141 and "Traceback" not in err, err
