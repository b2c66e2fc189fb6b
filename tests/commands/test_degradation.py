"""python -m ablate.degradation end to end on tiny checkpoints and data."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from ablate.degradation import main
from analyses.degradation import ZOO


def test_end_to_end_and_resume(tmp_path, cifar_batches, tiny_checkpoints, monkeypatch):
    out = tmp_path / "out"
    ck = tiny_checkpoints
    args = ["--model", "plain20", "resnet20", "--checkpoint", str(ck["plain20"]),
            str(ck["resnet20"]), "--data", str(cifar_batches), "--out", str(out), "--device",
            "cpu"]
    assert main(args) == 0
    df = pd.read_csv(out / "results.csv")
    assert df.model.tolist() == ["plain20", "resnet20"] and (df.depth == 20).all()
    assert set(df.family) == {"plain", "resnet"} and (df.n_images == 30).all()
    pairs = pd.read_csv(out / "comparison.csv")
    assert pairs.contrast.tolist() == ["plain vs resnet"]
    assert pairs.difference.iloc[0] == pytest.approx(df.error.iloc[0] - df.error.iloc[1])
    for f in ("meta.json", "degradation.pdf", "degradation.png"):
        assert (out / f).stat().st_size > 0
    assert json.loads((out / "meta.json").read_text())["analysis"] == "degradation"

    import analyses.degradation as analysis

    calls = []
    real = analysis.evaluate
    monkeypatch.setattr(analysis, "evaluate", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert main([*args, "--no-figure"]) == 0
    assert calls == []  # both networks reused
    pd.testing.assert_frame_equal(pd.read_csv(out / "results.csv"), df)


def test_default_models_are_the_zoo():
    assert ZOO == ("plain20", "plain32", "plain44", "plain56", "resnet20", "resnet32",
                   "resnet44", "resnet56")
