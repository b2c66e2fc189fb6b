"""figures.readme: README.md's generated blocks are what the committed files say; the ViT answer
they show is the report's (figures.report), judged from the tables alone."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from analyses import registry
from figures import readme, report

ROOT = Path(__file__).resolve().parents[3]


def _block(text: str, name: str) -> str:
    m = re.search(rf"<!-- {name}:start -->\n(.*?)<!-- {name}:end -->", text, re.S)
    assert m, f"README.md has no {name} block"
    return m.group(1)


def test_fill_replaces_only_the_named_block():
    text = "a\n<!-- x:start -->\nold\n<!-- x:end -->\nb\n<!-- y:start -->\nkeep\n<!-- y:end -->\n"
    out = readme.fill(text, "x", "new $1 \\1")  # no regex escapes interpreted in the body
    assert _block(out, "x") == "new $1 \\1\n" and _block(out, "y") == "keep\n"
    assert out.startswith("a\n") and "\nb\n" in out
    with pytest.raises(SystemExit, match="no <!-- z:start/end -->"):
        readme.fill(text, "z", "")


@pytest.mark.parametrize("name", list(readme.BLOCKS))
def test_readme_blocks_match_the_committed_files(name, monkeypatch):
    """Nobody edits a generated block by hand, and nobody forgets to regenerate it after a
    checkpoint, benchmark, reproduction or experiment lands: run `python -m figures.readme`."""
    monkeypatch.delenv("ABLATE_CHECKPOINTS", raising=False)  # the cards the package ships
    assert _block((ROOT / "README.md").read_text(), name) == readme.BLOCKS[name]() + "\n", (
        f"README.md's {name} block is stale: run python -m figures.readme")


def test_models_table_gives_source_and_licence_or_the_training_run(tmp_path):
    (tmp_path / "resnet20.json").write_text(json.dumps(
        {"name": "resnet20", "test_error": 0.0827, "weights": {
            "source": "akamaster/pytorch_resnet_cifar10", "commit": "d5489e8",
            "license": "BSD-2-Clause", "published_error": 8.27}}))
    (tmp_path / "resnet110-sd.json").write_text(json.dumps(
        {"name": "resnet110-sd", "final_test_error": 0.1003, "stochastic_depth": 0.5,
         "epochs": 40, "recipe": {"schedule": "cosine"}, "train_seconds": 3 * 3600,
         "precision_by_epochs": [{"device": "NVIDIA H200"}, {"device": "AMD EPYC"},
                                 {"device": "NVIDIA H200"}]}))
    (tmp_path / "resnet110-full.json").write_text(json.dumps(
        {"name": "resnet110-full", "final_test_error": 0.065, "epochs": 164,
         "recipe": {"schedule": "he"}, "train_seconds": 7200, "device": "AMD EPYC"}))
    rows = readme.models_table(tmp_path).splitlines()
    assert rows[-1] == ("| `resnet110-full` | 6.50% | | `ablate train`: 164 epochs of He et "
                        "al.'s schedule, 2.0 h on AMD EPYC |")
    assert rows[2] == ("| `resnet20` | 8.27% | 8.27% | [akamaster/pytorch_resnet_cifar10]"
                       "(https://github.com/akamaster/pytorch_resnet_cifar10) @ d5489e8, "
                       "BSD-2-Clause |")  # published weights first
    assert rows[3] == ("| `resnet110-sd` | 10.03% | | `ablate train`, stochastic depth: 40 cosine "
                       "epochs, 3.0 h on NVIDIA H200, AMD EPYC |")


def test_gallery_lists_every_registered_experiment_with_its_figure(tmp_path, monkeypatch):
    """The experiments come from the registry (no list of names here); a step rerun alone
    (--only) resumes the run, so the gallery shows the run's whole command."""
    monkeypatch.setenv("ABLATE_CHECKPOINTS", str(tmp_path / "zoo"))
    (tmp_path / "zoo").mkdir()
    first = registry.experiments()[0].name
    (tmp_path / "results" / first).mkdir(parents=True)
    (tmp_path / "results" / first / f"{first}.png").write_bytes(b"")
    (tmp_path / "run.json").write_text(json.dumps(
        {"argv": ["--device", "cpu", "--only", "paths", "gradnorm", "--out", "r"],
         "wall_seconds_total": {"a": 1800.0, "b": 1800.0}}))
    text = readme.gallery(tmp_path)
    assert text.startswith("`python -m ablate reproduce --device cpu --out r` wrote ")
    assert "(1.0 h)" in text and "REPRODUCTION.md" in text
    bullets = [line for line in text.splitlines() if line.startswith("- **")]
    assert [re.search(r"`(\w+)`", b).group(1) for b in bullets] == registry.names()
    png = tmp_path / "results" / first / f"{first}.png"
    assert bullets[0].startswith(f"- **[`{first}`]({png})**") and f'<img src="{png}"' in text
    assert text.count("<img") == 1  # no figure drawn, none shown


def test_gallery_names_the_networks_of_each_finding(tmp_path, monkeypatch):
    assert readme._whole_run(["--only", "paths"]) == []
    for n in ("resnet110", "resnet110-sd", "resnet1"):  # names only: the card is not read
        (tmp_path / f"{n}.safetensors").touch()
    monkeypatch.setenv("ABLATE_CHECKPOINTS", str(tmp_path))
    assert readme._networks("resnet110 8.6%, resnet110-sd 10.0% on the same images") == \
        "resnet110, resnet110-sd"
    assert readme._networks("no net: just words, here") == "no net"
    # an LM finding names CNNs as its yardsticks: the LM is what it is about
    assert readme._networks("smollm2-135m: 8.4% at the median; resnet110: 1.6%") == \
        "smollm2-135m"
    found = [report.Finding("Fig. 3", "c", "resnet110: x", "reproduces", "k"),
             report.Finding("Fig. 3", "c", "resnet1: y", "does not reproduce", "k"),
             report.Finding("Fig. 3", "c", "resnet110-sd: z", "reproduces", "k")]
    assert readme._found(found) == ("Fig. 3: reproduces (resnet110, resnet110-sd); "
                                    "does not reproduce (resnet1).")
    assert readme._found([]) == "Not run in this reproduction."


def _deletions(n: int = 10_000) -> list[dict]:
    rows = []
    for b in range(7):
        broken, fixed = (900, 10) if b == 0 else (20, 15)  # block 0 fragile, the rest harmless
        change = (broken - fixed) / n
        rows.append({"model": "vit_cifar", "family": "vit", "dataset": "cifar10",
                     "n_images": n, "block": b, "block_name": f"encoder.layers.encoder_layer_{b}",
                     "downsample": False, "intact_error": 0.10, "error": 0.10 + change,
                     "error_change": change, "change_low": change - 0.004,
                     "change_high": change + 0.004, "n_broken": broken, "n_fixed": fixed,
                     "p_value": 1e-200 if b == 0 else 0.5})
    return rows


def _write(root: Path, rows: list[dict]) -> None:
    (root / "results" / "delete_block").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(root / "results" / "delete_block" / "results.csv", index=False)


def test_vit_section_reads_the_deletion_table_block_by_block(tmp_path):
    """The report names the fragile block and counts equivalent ones from the table alone;
    without a ViT it has no such section, and the README says how to measure one."""
    assert report.transformer_section(tmp_path) == [] and report.ensemble_answers(tmp_path) == []
    assert readme.vit(tmp_path).startswith("Not measured yet")
    rows = _deletions()
    _write(tmp_path, rows)
    text = "\n".join(report.transformer_section(tmp_path))
    assert "6 of 7 blocks equivalent" in text and "1 raise its error significantly" in text
    assert "the most fragile is encoder.layers.encoder_layer_0 (+8.90 points)" in text
    assert "| encoder.layers.encoder_layer_0 | 18.90% | +8.90 |" in text
    assert "Deleting one branch alone" not in text  # no branch rows: no branch table
    for b in range(14):  # --branches rows: layer 0's attention is what breaks it
        layer, branch = divmod(b, 2)
        broken, fixed = (800, 10) if b == 0 else (20, 15)
        change = (broken - fixed) / 10_000
        rows.append({**rows[0], "granularity": "branch", "layer": layer,
                     "branch": ("attn", "mlp")[branch], "block": b,
                     "block_name": f"encoder.layers.encoder_layer_{layer}."
                                   f"{('self_attention', 'mlp')[branch]}",
                     "error": 0.10 + change, "error_change": change, "n_broken": broken,
                     "n_fixed": fixed, "p_value": 1e-200 if b == 0 else 0.5})
    _write(tmp_path, rows)
    again = "\n".join(report.transformer_section(tmp_path))
    assert again.startswith(text.split("\n\n")[0] + "\n\n" + text.split("\n\n")[1])
    assert "13 of 14 branches equivalent" in again and "1 raise its error" in again
    assert "most fragile is encoder.layers.encoder_layer_0.self_attention (+7.90" in again
    assert "| 0 | +8.90 | +7.90* | +0.05 |" in again
    answer = "\n".join(report.ensemble_answers(tmp_path))
    assert answer.startswith("**Answer for `vit_cifar`.**") and answer in again
    assert "fragile through its attention branch (attention alone +7.90, MLP alone +0.05)" in answer
    assert "like resnet56" not in answer and "shallow" not in answer  # no resnet56: no verdict
    assert readme.vit(tmp_path).startswith(answer)
    assert "## Do a ViT's blocks behave like an ensemble?" in \
        report.write_report(tmp_path).read_text()
    for harm in (0.03, 0.0001):  # resnet56 harmed far more, then far less, than the ViT
        ref = [{**r, "model": "resnet56", "family": "resnet", "error_change": harm}
               for r in rows[:7]]
        _write(tmp_path, rows + ref)
        like = "behave much like resnet56's ensemble" in "\n".join(
            report.ensemble_answers(tmp_path))
        assert like == (harm > 0.001)
