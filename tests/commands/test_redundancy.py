"""python -m ablate.redundancy end to end on tiny checkpoints: table, meta.json, figure, resume;
bad input ends with exit 2 and writes nothing."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from ablate.redundancy import main


def _args(ckpt, data, out, *extra):
    return ["--model", "resnet20", "--checkpoint", str(ckpt), "--data", str(data), "--out",
            str(out), "--device", "cpu", "--batch-size", "8", "--n-boot", "50", *extra]


def test_table_meta_figure_and_resume(tmp_path, cifar_batches, tiny_checkpoints, capsys):
    out = tmp_path / "red"
    assert main(_args(tiny_checkpoints["resnet20"], cifar_batches, out, "--windows", "3")) == 0
    df = pd.read_csv(out / "results.csv")
    assert set(zip(df.measure, df.n)) == {("block_influence", 1), ("contribution_ratio", 1),
                                          ("angular_distance", 1), ("angular_distance", 3),
                                          ("prune_block_influence", 2)}  # ShortGPT's rule
    assert (df.n_images == 30).all() and df.rho_loss[df.n == 1].between(-1, 1).all()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["windows"] == [1, 3] and meta["n_boot"] == 50
    assert (out / "redundancy.png").stat().st_size > 0
    assert "Spearman rho between each measure" in capsys.readouterr().out
    assert main(_args(tiny_checkpoints["resnet20"], cifar_batches, out, "--windows", "3")) == 0
    assert "reusing 34 of 34 rows" in capsys.readouterr().err


@pytest.mark.parametrize("model, extra, message", [
    ("plain20", [], "plain units"),
    ("resnet20", ["--n-boot", "0"], "--n-boot"),
])
def test_bad_input_exits_2(tmp_path, cifar_batches, tiny_checkpoints, capsys, model, extra,
                           message):
    out = tmp_path / "bad"
    with pytest.raises(SystemExit) as e:
        main([*_args(tiny_checkpoints[model], cifar_batches, out), "--model", model, *extra])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and "Traceback" not in err
    assert not (out / "results.csv").exists()
