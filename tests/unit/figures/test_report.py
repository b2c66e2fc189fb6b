"""REPRODUCTION.md's account of what differs where a finding does not reproduce."""

from __future__ import annotations

import json

from analyses.verdicts import Finding
from figures import report


def test_differences_name_each_network_with_its_card_beside_the_paper(
        tmp_path, tiny_checkpoints, monkeypatch):
    for name, path in tiny_checkpoints.items():
        card = json.loads(path.with_suffix(".json").read_text())
        if name == "resnet20":  # an own-trained network: epochs, schedule, deviations
            card |= {"epochs": 40, "recipe": {"schedule": "cosine"},
                     "deviations": ["epochs 40 instead of 164 (He et al. 2015)"],
                     "notes": ["the recipe Veit et al. took apart"]}
        (tmp_path / path.name).write_bytes(path.read_bytes())
        (tmp_path / f"{name}.json").write_text(json.dumps(card))
    monkeypatch.setenv("ABLATE_CHECKPOINTS", str(tmp_path))
    found = [
        Finding("Veit Fig. 5a", "claim", "resnet20: mean error 40% at k = 5; resnet20-sdx n/a",
                "does not reproduce", "rho >= 0.9"),
        Finding("Veit Fig. 3 (plain)", "claim", "plain20: median 85%", "reproduces", "c"),
    ]
    lines = report.differences(found)
    text = "\n".join(lines)
    assert "## Where a finding does not fully reproduce or is not comparable" in text
    assert len([x for x in lines if x.startswith("- ")]) == 1  # the reproducing one is left out
    assert "resnet20: 9 residual blocks, " in text
    assert "40 epochs, cosine schedule" in text and "instead of 164" in text
    assert "instead of 164 (He et al. 2015); the recipe Veit et al. took apart" in text
    assert "plain20" not in text  # named only by the finding that reproduces
    assert "Paper: Veit et al.: ResNet-110 (54 blocks)" in text
    assert report.differences(found[1:]) == []
    assert "The same criterion" not in text  # plain20's finding is judged by another criterion
    found.append(Finding("Veit Fig. 5a", "claim", "plain20: 30% at k = 5", "reproduces",
                         "rho >= 0.9"))
    assert "The same criterion reproduces on plain20." in "\n".join(report.differences(found))


def test_a_step_that_has_not_finished_withholds_its_verdict(tmp_path):
    (tmp_path / "results" / "delete_block").mkdir(parents=True)
    (tmp_path / "results" / "delete_block" / "results.csv").write_text("a\n1\n2\n3\n")
    found = [("delete_block", Finding("Veit Fig. 3", "c", "resnet110: 3", "reproduces", "k")),
             ("gradnorm", Finding("Gradients per depth", "c", "ratio 9", "partly", "k")),
             ("paths", Finding("Veit Sec. 5", "paths", "-", "not run", "-"))]
    run = {"steps": ["gradnorm", "delete_block", "paths"], "finished": ["gradnorm"]}
    out = dict(report._pending(found, run, tmp_path))
    assert out["delete_block"].verdict == "in progress"
    assert "3 rows so far" in out["delete_block"].ours
    assert out["gradnorm"].verdict == "partly"  # finished: judged
    assert out["paths"].verdict == "not run"  # nothing measured yet
    # a finding judged from other steps' tables while its own step has not run (Huang Table 1)
    early = [("training_curves", Finding("Huang et al. Table 1", "c", "8.6% vs 10.0%", "reproduces",
                                         "k"))]
    run = {"steps": ["training_curves"], "finished": []}
    (f,) = (f for _, f in report._pending(early, run, tmp_path))
    assert f.verdict == "in progress" and "its step, training_curves, has not run yet" in f.ours
    assert report._pending(found, {}, tmp_path) == found  # no plan (a single analysis): judged


def test_wall_time_is_the_sum_over_invocations():
    run = {"wall_seconds_total": {"degradation": 60.0, "delete_block": 600.0},
           "wall_seconds": {"delete_block": 5.0}}
    assert report.wall_seconds(run) == {"degradation": 60.0, "delete_block": 600.0}
    assert report.wall_seconds({"wall_seconds": {"a": 5.0}}) == {"a": 5.0}  # older run.json


def test_devices_are_those_of_the_invocations_that_measured_rows():
    from figures.report import devices

    meta = {"device": "cpu (Intel Xeon, 2 threads)", "invocations": [
        {"device": "cpu (AMD EPYC, 1 thread)", "rows": None},  # from before the list: kept
        {"device": "cuda (NVIDIA H200)", "rows": 27},
        {"device": "cpu (AMD EPYC, 1 thread)", "rows": 3},
        {"device": "cpu (Intel Xeon, 2 threads)", "rows": 0}]}  # reused only: measured nothing
    assert devices(meta) == ["cpu (AMD EPYC, 1 thread)", "cuda (NVIDIA H200)"]
    assert devices({"device": "cpu (AMD EPYC, 1 thread)"}) == ["cpu (AMD EPYC, 1 thread)"]


def test_models_table_names_each_device_of_a_moved_run(tmp_path, monkeypatch):
    spans = [{"epochs": "1-53", "amp": "bf16", "device": "NVIDIA H200"},
             {"epochs": "54-100", "amp": "bf16", "device": "AMD EPYC"}]
    for name, precision in (("vit_cifar", spans), ("resnet20", spans[1:])):
        (tmp_path / f"{name}.safetensors").write_bytes(b"")
        (tmp_path / f"{name}.json").write_text(json.dumps(
            {"name": name, "arch": name, "dataset": "cifar10", "epochs": 100,
             "device": "AMD EPYC", "final_test_error": 0.1, "precision_by_epochs": precision}))
    monkeypatch.setenv("ABLATE_CHECKPOINTS", str(tmp_path))
    rows = {r.split(" | ")[0]: r for r in report._models()[1:]}
    assert "100 epochs on epochs 1-53 on NVIDIA H200, epochs 54-100 on AMD EPYC" not in \
        rows["| vit_cifar"]
    assert "100 epochs: 1-53 on NVIDIA H200, 54-100 on AMD EPYC" in rows["| vit_cifar"]
    assert "100 epochs on AMD EPYC" in rows["| resnet20"]


def test_not_comparable_and_inconclusive_findings_are_explained_too(tmp_path, tiny_checkpoints,
                                                                    monkeypatch):
    for path in tiny_checkpoints.values():
        (tmp_path / path.name).write_bytes(path.read_bytes())
        (tmp_path / path.with_suffix(".json").name).write_bytes(
            path.with_suffix(".json").read_bytes())
    monkeypatch.setenv("ABLATE_CHECKPOINTS", str(tmp_path))
    for verdict in ("not comparable", "inconclusive"):
        found = [Finding("Huang et al. Table 1", "claim", "resnet20: 9%", verdict, "c"),
                 Finding("Huang et al. Table 1", "claim", "plain20: 9%", "extension: holds",
                         "c")]
        text = "\n".join(report.differences(found))
        assert "resnet20: 9 residual blocks" in text and f"({verdict})" in text
        assert "The same criterion reproduces on plain20." in text
