"""scripts/update_readme.py: the README's generated blocks are what the committed files say."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _module():
    spec = importlib.util.spec_from_file_location("update_readme",
                                                  ROOT / "scripts" / "update_readme.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _block(text: str, name: str) -> str:
    m = re.search(rf"<!-- {name}:start -->\n(.*?)<!-- {name}:end -->", text, re.S)
    assert m, f"README.md has no {name} block"
    return m.group(1)


def test_fill_replaces_only_the_named_block():
    u = _module()
    text = "a\n<!-- x:start -->\nold\n<!-- x:end -->\nb\n<!-- y:start -->\nkeep\n<!-- y:end -->\n"
    out = u.fill(text, "x", "new $1 \\1")  # no regex escapes interpreted in the body
    assert _block(out, "x") == "new $1 \\1\n" and _block(out, "y") == "keep\n"
    assert out.startswith("a\n") and "\nb\n" in out
    with pytest.raises(SystemExit, match="no <!-- z:start/end -->"):
        u.fill(text, "z", "")


@pytest.mark.parametrize("name", ["models", "benchmarks", "gallery", "vit"])
def test_readme_blocks_match_the_committed_files(name, monkeypatch):
    """Nobody edits a generated block by hand, and nobody forgets to regenerate it after a
    checkpoint, benchmark, reproduction or ViT analysis lands: run
    `python scripts/update_readme.py`."""
    monkeypatch.delenv("ABLATE_CHECKPOINTS")  # the cards the package ships
    u = _module()
    body = {"models": u.models_table, "benchmarks": u.benchmarks, "gallery": u.gallery,
            "vit": u.vit_answer}[name]()
    assert _block((ROOT / "README.md").read_text(), name) == body + "\n", (
        f"README.md's {name} block is stale: run python scripts/update_readme.py")


def test_stochastic_depth_twin_reported_beside_its_constant_twin():
    u = _module()
    const = {"name": "resnet110", "final_test_error": 0.0861, "epochs": 40, "seed": 0,
             "recipe": {"schedule": "cosine"}}
    sd = const | {"name": "resnet110-sd", "final_test_error": 0.0912}
    text = "".join(u._sd_against_constant([const, sd]))
    assert "`resnet110` 8.61%, `resnet110-sd` 9.12% test error, +0.51 points" in text
    assert "40 cosine epochs" in text and "6.41% -> 5.25%" in text  # beside Huang et al.'s
    assert u._sd_against_constant([const]) == [] and u._sd_against_constant([sd]) == []


def test_vit_answer_reads_the_deletion_table_block_by_block(tmp_path):
    """The ViT answer names the fragile block and counts equivalent ones from the table alone;
    without a ViT in it, it says how to measure one instead of printing anything."""
    import pandas as pd

    u = _module()
    assert u.vit_answer(tmp_path).startswith("Not measured yet")
    n, rows = 10_000, []
    for b in range(7):
        broken, fixed = (900, 10) if b == 0 else (20, 15)  # block 0 fragile, the rest harmless
        change = (broken - fixed) / n
        rows.append({"model": "vit_cifar", "family": "torchvision_vit", "dataset": "cifar10",
                     "n_images": n, "block": b, "block_name": f"encoder.layers.encoder_layer_{b}",
                     "downsample": False, "intact_error": 0.10, "error": 0.10 + change,
                     "error_change": change, "change_low": change - 0.004,
                     "change_high": change + 0.004, "n_broken": broken, "n_fixed": fixed,
                     "p_value": 1e-200 if b == 0 else 0.5})
    (tmp_path / "results" / "delete_block").mkdir(parents=True)
    pd.DataFrame(rows).to_csv(tmp_path / "results" / "delete_block" / "results.csv", index=False)
    text = u.vit_answer(tmp_path)
    assert "6 of 7 blocks equivalent" in text and "1 raise its error significantly" in text
    assert "the most fragile is encoder.layers.encoder_layer_0 (+8.90 points)" in text
    assert "| encoder.layers.encoder_layer_0 | 18.90% | +8.90 |" in text
    assert "| Veit Fig. 3 | `vit_cifar` | reproduces |" in text  # judged as REPRODUCTION.md is
    assert "Deleting one branch alone" not in text  # no branch rows: no branch table
    for b in range(14):  # --branches rows: layer 0's attention is what breaks it
        layer, branch = divmod(b, 2)
        broken, fixed = (800, 10) if b == 0 else (20, 15)
        change = (broken - fixed) / n
        rows.append({**rows[0], "granularity": "branch", "layer": layer,
                     "branch": ("attn", "mlp")[branch], "block": b,
                     "block_name": f"encoder.layers.encoder_layer_{layer}."
                                   f"{('self_attention', 'mlp')[branch]}",
                     "error": 0.10 + change, "error_change": change, "n_broken": broken,
                     "n_fixed": fixed, "p_value": 1e-200 if b == 0 else 0.5})
    pd.DataFrame(rows).to_csv(tmp_path / "results" / "delete_block" / "results.csv", index=False)
    again = u.vit_answer(tmp_path)
    assert again.startswith(text.split("\n\n")[0])  # the block findings are unchanged
    assert "13 of 14 branches equivalent" in again and "1 raise its error" in again
    assert "most fragile is encoder.layers.encoder_layer_0.self_attention (+7.90" in again
    assert "| 0 | +8.90 | +7.90* | +0.05 |" in again
    assert "**Answer for `vit_cifar`.**" in again and "0 of 7" not in again
    assert "fragile through its attention branch (attention alone +7.90, MLP alone +0.05)" in again
    assert "like resnet56" not in again and "shallow" not in again  # no resnet56: no verdict
    for harm in (0.03, 0.0001):  # resnet56 harmed far more, then far less, than the ViT
        ref = [{**r, "model": "resnet56", "family": "resnet", "error_change": harm}
               for r in rows[:7]]
        pd.DataFrame(rows + ref).to_csv(tmp_path / "results" / "delete_block" / "results.csv",
                                        index=False)
        like = "behave much like resnet56's ensemble" in u.vit_answer(tmp_path)
        assert like == (harm > 0.001)



def test_gallery_names_the_whole_run_and_the_networks_of_each_finding(tmp_path, monkeypatch):
    """A step rerun alone (--only) resumes the run: the gallery shows the run's command; each
    finding is labelled by the bundled networks it names, not a clipped sentence."""
    u = _module()
    argv = ["--device", "cpu", "--only", "attribution", "training_curves", "--out", "r"]
    assert u._whole_run(argv) == ["--device", "cpu", "--out", "r"]
    assert u._whole_run(["--only", "paths"]) == []
    for n in ("resnet110", "resnet110-sd", "resnet1"):  # names only: the card is not read
        (tmp_path / f"{n}.safetensors").touch()
    monkeypatch.setenv("ABLATE_CHECKPOINTS", str(tmp_path))
    assert u._networks("resnet110 8.6%, resnet110-sd 10.0% on the same images") == \
        "resnet110, resnet110-sd"
    assert u._networks("no net: just words, here") == "no net"
