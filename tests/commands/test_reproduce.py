"""python -m ablate.reproduce --quick on tiny checkpoints and data: every table, figure, report."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time

import pandas as pd
import pytest

import analyses.paths
from ablate import reproduce
from ablate._infra.errors import cli_main
from analyses.plan import Settings


@pytest.fixture()
def zoo(tmp_path, tiny_checkpoints, monkeypatch):
    d = tmp_path / "zoo"
    d.mkdir()
    for path in tiny_checkpoints.values():
        shutil.copy(path, d / path.name)
        shutil.copy(path.with_suffix(".json"), d / path.with_suffix(".json").name)
    log = pd.DataFrame({"epoch": [1, 2, 3], "lr": [0.1, 0.1, 0.01], "train_loss": [2.0, 1.5, 1.2],
                        "train_error": [0.7, 0.5, 0.4], "test_loss": [1.9, 1.6, 1.3],
                        "test_error": [0.68, 0.55, 0.45], "images_per_s": [100.0] * 3,
                        "epoch_seconds": [5.0] * 3, "grad_norm_conv1": [0.3, 0.2, 0.1],
                        "grad_mean_abs_first_block_conv1": [0.003, 0.002, 0.001]})
    log.to_csv(d / "resnet20.log.csv", index=False)
    monkeypatch.setenv("ABLATE_CHECKPOINTS", str(d))
    return d


def test_quick_reproduction_is_complete_and_idempotent(tmp_path, zoo, image_folder, monkeypatch):
    out = tmp_path / "repro"
    args = ["--quick", "--out", str(out), "--data", str(image_folder), "--device", "cpu"]
    assert reproduce.main(args) == 0
    analyses = ["delete_block", "drop_blocks", "reorder_blocks", "paths", "gradnorm", "attribution",
                "redundancy", "degradation", "training_curves"]
    for a in analyses:
        d = out / "results" / a
        assert (d / "results.csv").stat().st_size > 0, a
        assert (d / "meta.json").exists(), a
        assert list(d.glob("*.pdf")) and list(d.glob("*.png")), a
    report = (out / "REPRODUCTION.md").read_text()
    assert "quick run" in report
    for section in ("Veit Fig. 3", "Veit Fig. 5a", "Veit Fig. 5b", "Veit Fig. 6a",
                    "Veit Fig. 6b-c", "Huang et al.", "Attribution vs lesion", "He et al. Fig. 6",
                    "Men et al. 2024 (ShortGPT)", "Gromov et al. 2024",
                    "- Plan: ", "measured on"):
        assert section in report, section
    assert "resnet20" in report and "plain20" in report

    # A second run reuses every finished row: the batched engine is not called again.
    from ablate.interventions import variants as lesion
    from analyses import sweep as sweep_module

    calls = []
    real = lesion.evaluate_variants

    def spy(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(sweep_module, "evaluate_variants", spy)
    before = {a: pd.read_csv(out / "results" / a / "results.csv") for a in analyses[:3]}
    first = json.loads((out / "run.json").read_text())
    assert reproduce.main(args) == 0
    assert calls == []
    run = json.loads((out / "run.json").read_text())
    assert run["plan"]["resnets"] == ["resnet20"] and run["plan"]["plain"] == "plain20"
    assert set(run["wall_seconds_total"]) == set(analyses)
    assert first["complete"] and run["complete"] and set(run["finished"]) == set(analyses)
    for a in analyses:  # wall time sums over invocations
        assert run["wall_seconds_total"][a] == pytest.approx(
            first["wall_seconds_total"][a] + run["wall_seconds"][a], abs=0.11)
    for a, df in before.items():
        pd.testing.assert_frame_equal(pd.read_csv(out / "results" / a / "results.csv"), df)


def test_no_bundled_resnet_is_a_usage_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ABLATE_CHECKPOINTS", str(tmp_path))
    with pytest.raises(SystemExit) as e:
        reproduce.main(["--quick", "--out", str(tmp_path / "o")])
    assert e.value.code == 2
    assert "no trained ResNet checkpoint is bundled" in capsys.readouterr().err


def _bundle(tmp_path, monkeypatch, names):
    d = tmp_path / "bundle"
    d.mkdir()
    for n in names:
        (d / f"{n}.safetensors").write_bytes(b"")
    monkeypatch.setenv("ABLATE_CHECKPOINTS", str(d))


ZOO = ["plain20", "plain32", "plain44", "plain56", "resnet20", "resnet32", "resnet44", "resnet56"]


def test_plan_today_resnet56_with_paths_fallback(tmp_path, monkeypatch):
    _bundle(tmp_path, monkeypatch, ZOO)
    p = reproduce.plan()
    assert p.resnets == ("resnet56",) and p.plain == "plain56" and p.paths == "resnet56"
    assert p.deletion == ["resnet56", "plain56"] and p.gradnorm == ("resnet56", "plain56")
    assert p.stochastic is None and p.zoo == tuple(
        n for d in (20, 32, 44, 56) for n in (f"plain{d}", f"resnet{d}"))
    assert any("Fig. 6 (paths) runs on resnet56" in n for n in p.notes)
    q = reproduce.plan(quick=True)
    assert q.resnets == ("resnet20",) and q.plain == "plain20" and q.gradnorm == (
        "resnet20", "plain20")


def test_plan_picks_up_resnet110_and_its_sd_twin(tmp_path, monkeypatch):
    _bundle(tmp_path, monkeypatch, [*ZOO, "resnet110", "resnet110-sd"])
    p = reproduce.plan()
    assert p.resnets == ("resnet56", "resnet110") and p.paths == "resnet110"
    assert p.stochastic == ("resnet110", "resnet110-sd") and p.plain == "plain56"
    assert p.deletion == ["resnet56", "resnet110", "resnet110-sd", "plain56"]
    assert not p.notes
    assert reproduce.plan(["resnet56"], stochastic="resnet110-sd").deletion == [
        "resnet56", "resnet110", "resnet110-sd", "plain56"]


def test_plan_puts_a_bundled_vit_beside_the_resnets_in_figs_3_5a_5b(tmp_path, monkeypatch):
    _bundle(tmp_path, monkeypatch, [*ZOO, "resnet110", "vit_cifar"])
    p = reproduce.plan()
    assert p.vits == ("vit_cifar",)
    assert p.deletion == ["resnet56", "resnet110", "plain56", "vit_cifar"]
    assert p.sweeps == ["resnet56", "resnet110", "vit_cifar"]
    assert "vit_cifar" not in (*p.gradnorm, p.paths, *p.zoo)
    assert reproduce.plan(quick=True).vits == () and reproduce.plan(vit=[]).vits == ()
    monkeypatch.setattr(analyses.paths, "n_blocks", lambda name: 54)
    steps = {e.name: o for e, o in reproduce.steps(p, Settings.quick())}
    for a in ("delete_block", "drop_blocks", "reorder_blocks"):
        assert "vit_cifar" in steps[a].model, a
    assert "vit_cifar" not in steps["attribution"].model + steps["paths"].model
    assert steps["delete_block"].branches  # the ViT's attention and MLP branches too
    assert steps["redundancy"].model == ["resnet56", "vit_cifar"]
    assert steps["redundancy"].windows == [4]
    steps = {e.name: o for e, o in reproduce.steps(reproduce.plan(vit=[]), Settings.quick())}
    assert not steps["delete_block"].branches  # no transformer: the flag would refuse


def test_plan_refuses_names_not_bundled(tmp_path, monkeypatch, capsys):
    _bundle(tmp_path, monkeypatch, ZOO)
    with pytest.raises(SystemExit) as e:
        reproduce.main(["--resnet", "resnet110", "--out", str(tmp_path / "o")])
    assert e.value.code == 2
    assert "resnet110 is not a bundled checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("stop", ["interrupt", "sigterm"])
def test_a_stopped_run_keeps_the_wall_time_of_every_step_it_ran(tmp_path, zoo, monkeypatch, stop):
    """A session that ends mid-run (Ctrl-C, a kill, the end of a session)
    keeps run.json for what ran."""
    ran = []
    handler = signal.getsignal(signal.SIGTERM)

    def fake(e, o):
        if e.name == "reorder_blocks":  # the stop, in the middle of the third step
            if stop == "sigterm":
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the signal arrives before this ends
            cli_main(_raise_interrupt)()  # as the real commands: ^C becomes exit 130
        ran.append(e.name)
        return 0

    monkeypatch.setattr(reproduce, "execute", fake)
    out = tmp_path / "repro"
    with pytest.raises(SystemExit) as stop:
        reproduce.main(["--quick", "--out", str(out), "--device", "cpu"])
    assert stop.value.code == 130
    assert ran == ["delete_block", "drop_blocks"]
    run = json.loads((out / "run.json").read_text())
    # the stopped step's time counts (its rows so far are kept), but it is not finished
    assert set(run["wall_seconds_total"]) == {"delete_block", "drop_blocks", "reorder_blocks"}
    assert run["finished"] == ["delete_block", "drop_blocks"] and not run["complete"]
    assert run["steps"][:3] == ["delete_block", "drop_blocks", "reorder_blocks"]
    assert signal.getsignal(signal.SIGTERM) is handler  # put back for the caller


def _raise_interrupt() -> int:
    raise KeyboardInterrupt


def _rows(model: str, sha: str, error: float, n: int = 500) -> list[dict]:
    from analyses.deletion import KEY
    base = dict.fromkeys(KEY, "x")
    return [{**base, "model": model, "checkpoint_sha256": sha, "n_images": n, "block": b,
             "intact_error": error, "error": error + 0.01 * b} for b in range(3)]


def test_rows_of_a_replaced_checkpoint_are_retired_before_anything_runs(tmp_path, zoo,
                                                                         monkeypatch):
    """New weights bundled under an old name: the old net's rows leave results/ (no finding
    pools two nets), are kept in retired/, and the report says what they measured."""
    from ablate._infra.io import sha256_file
    from figures.report import _retired, pooled

    now = {n: sha256_file(zoo / f"{n}.safetensors") for n in ("resnet20", "plain20")}
    out = tmp_path / "repro"
    table = out / "results" / "delete_block" / "results.csv"
    table.parent.mkdir(parents=True)
    pd.DataFrame(_rows("resnet20", "a" * 64, 0.25, 10_000) + _rows("resnet20", "a" * 64, 0.3)
                 + _rows("resnet20", now["resnet20"], 0.2) + _rows("plain20", now["plain20"], 0.4)
                 + _rows("mine", "b" * 64, 0.5)).to_csv(table, index=False)
    (table.parent / "meta.json").write_text(json.dumps({"git_commit": "c0ffee" * 6}))
    assert pooled(out) == ["results/delete_block holds rows of 2 checkpoints of resnet20: its "
                           "findings pool them; run `python -m ablate reproduce` to retire the "
                           "replaced one's rows"]
    seen = []

    def fake(e, o):  # every step sees the tables already without the old net's rows
        seen.append(set(zip(pd.read_csv(table)["model"], pd.read_csv(table)["checkpoint_sha256"])))
        return 0

    monkeypatch.setattr(reproduce, "execute", fake)
    monkeypatch.setattr(reproduce, "write_report", lambda root: root / "REPRODUCTION.md")
    assert reproduce.main(["--quick", "--out", str(out), "--device", "cpu"]) == 0
    assert seen and all(s == {("resnet20", now["resnet20"]), ("plain20", now["plain20"]),
                              ("mine", "b" * 64)} for s in seen)
    assert pooled(out) == []
    kept = pd.read_csv(out / "retired" / "delete_block.csv")
    assert len(kept) == 6 and set(kept["checkpoint_sha256"]) == {"a" * 64}
    run = json.loads((out / "run.json").read_text())  # kept through every later run.json write
    [r] = run["retired"]
    assert r["model"] == "resnet20" and r["checkpoint_sha256"] == "a" * 64
    assert r["rows"] == {"delete_block": 6} and r["replaced_by"] == now["resnet20"]
    assert r["test_error"] == 0.25 and r["n_images"] == 10_000  # the largest sample
    assert r["measured_commit"] == "c0ffee" * 6
    report = "\n".join(_retired(run))
    assert "## Replaced checkpoints" in report
    assert f"| resnet20 | {'a' * 12} | 25.00% (10,000) | delete_block 6 | c0ffeec0ff |" in report

    # Nothing left to retire: a second run keeps the record and moves nothing.
    assert reproduce.retire(out) == []
    assert reproduce.main(["--quick", "--out", str(out), "--device", "cpu"]) == 0
    assert json.loads((out / "run.json").read_text())["retired"] == run["retired"]
    assert len(pd.read_csv(out / "retired" / "delete_block.csv")) == 6
