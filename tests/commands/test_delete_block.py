"""python -m ablate.delete_block end to end, on tiny data in each input format, and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile

import pandas as pd
import pytest
import torch

from ablate.delete_block import main
from ablate.interventions.variants import Variant, evaluate_naive
from ablate.models import checkpoint


def _run(args: list[str]) -> int:
    with pytest.raises(SystemExit) as e:
        main(args)
    return e.value.code


def test_end_to_end_matches_naive_loop(tmp_path, cifar_batches, tiny_checkpoints):
    out = tmp_path / "out"
    ck = tiny_checkpoints
    assert main(["--model", "resnet20", "plain20", "--checkpoint", str(ck["resnet20"]),
                 str(ck["plain20"]), "--data", str(cifar_batches), "--out", str(out),
                 "--device", "cpu", "--batch-size", "7"]) == 0
    df = pd.read_csv(out / "results.csv")
    assert set(df.model) == {"resnet20", "plain20"}
    assert len(df[df.model == "resnet20"]) == 9
    plain = df[df.model == "plain20"]
    assert len(plain) == 16 and not plain.downsample.any()  # two shape-changing units refused
    assert df[df.model == "resnet20"].downsample.sum() == 2
    for f in ("meta.json", "delete_block.pdf", "delete_block.png"):
        assert (out / f).stat().st_size > 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["data"]["n_images"] == 30 and meta["data"]["name"] == "cifar10"
    assert meta["models"][0]["checkpoint_sha256"] == df.checkpoint_sha256.iloc[0]
    assert "torch" in meta["versions"] and meta["device"].startswith("cpu")

    # The table holds exactly what the naive loop (one forward pass per deletion) measures.
    from ablate import data

    ds = data.load(str(cifar_batches), "test")
    loaded = checkpoint.load(checkpoint=ck["resnet20"])
    naive = evaluate_naive(loaded.model, ds.images, ds.labels,
                           [Variant()] + [Variant.deleting(i) for i in range(9)],
                           mean=loaded.mean, std=loaded.std)
    r = df[df.model == "resnet20"].sort_values("block")
    assert r.errors.tolist() == [o.errors for o in naive[1:]]
    assert (r.intact_error == naive[0].error).all()
    assert r.loss.tolist() == pytest.approx([float(o.loss.double().mean()) for o in naive[1:]])


def test_resume_reuses_rows(tmp_path, cifar_batches, tiny_checkpoints, monkeypatch):
    out = tmp_path / "out"
    args = ["--model", "resnet20", "--checkpoint", str(tiny_checkpoints["resnet20"]), "--data",
            str(cifar_batches), "--out", str(out), "--device", "cpu", "--no-figure"]
    assert main([*args, "--blocks", "0-3"]) == 0
    first = pd.read_csv(out / "results.csv")
    calls = []
    import analyses.sweep

    real = analyses.sweep.evaluate_variants
    monkeypatch.setattr(analyses.sweep, "evaluate_variants",
                        lambda m, x, y, vs, **kw: calls.append(len(vs)) or real(m, x, y, vs, **kw))
    assert main(args) == 0
    assert calls == [5]  # only blocks 4..8 were computed
    df = pd.read_csv(out / "results.csv")
    assert len(df) == 9
    pd.testing.assert_frame_equal(df.iloc[:4], first)
    # meta.json lists every invocation that measured rows: 4 blocks, then the other 5; one that
    # only reuses adds none; a table begun afresh starts the list afresh
    meta = lambda: json.loads((out / "meta.json").read_text())  # noqa: E731
    assert [i["rows"] for i in meta()["invocations"]] == [4, 5]
    assert main(args) == 0
    assert [i["rows"] for i in meta()["invocations"]] == [4, 5]
    from figures.report import devices

    first = meta()["invocations"][0]
    assert devices(meta()) == [first["device"]] and first["utc"] and first["git_commit"] != ""
    (out / "results.csv").unlink()
    assert main([*args, "--blocks", "0-1"]) == 0
    assert [i["rows"] for i in meta()["invocations"]] == [2]


def test_image_folder_and_tarball(tmp_path, image_folder, tiny_checkpoints):
    tgz = tmp_path / "tiny.tar.gz"
    with tarfile.open(tgz, "w:gz") as t:
        t.add(image_folder / "train", arcname="train")
        t.add(image_folder / "test", arcname="test")
    tables = []
    for i, src in enumerate((image_folder, tgz)):
        out = tmp_path / f"out{i}"
        assert main(["--model", "resnet20", "--checkpoint", str(tiny_checkpoints["resnet20"]),
                     "--data", str(src), "--out", str(out), "--device", "cpu",
                     "--no-figure"]) == 0
        tables.append(pd.read_csv(out / "results.csv"))
    assert tables[0].errors.tolist() == tables[1].errors.tolist()
    assert (tables[0].n_images == 30).all()


def test_bundled_default_data(tmp_path, tiny_checkpoints, capsys):
    out = tmp_path / "out"
    assert main(["--model", "resnet20", "--checkpoint", str(tiny_checkpoints["resnet20"]),
                 "--limit", "20", "--blocks", "0,4", "--out", str(out), "--device", "cpu",
                 "--no-figure"]) == 0
    assert "bundled pristine CIFAR-10" in capsys.readouterr().err
    df = pd.read_csv(out / "results.csv")
    assert df.dataset.unique().tolist() == ["cifar10"] and df.block.tolist() == [0, 4]
    assert df.weights_source.unique().tolist() == ["ablate.train"]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["data"]["name"] == "cifar10" and meta["models"][0]["weights_source"]


def test_no_argument_demo_is_resnet56_against_plain56_on_2000_images(monkeypatch, capsys):
    """The README's main job: its defaults, without running the sweep."""
    from analyses import command

    seen, real_load_data = {}, command.load_data

    def models(args, defaults, **kw):
        seen["models"] = args.model or list(defaults)
        return []

    def stop(args, loaded, demo_limit):
        seen["ds"] = real_load_data(args, loaded, demo_limit)
        raise SystemExit(0)

    monkeypatch.setattr(command, "load_models", models)
    monkeypatch.setattr(command, "load_data", stop)
    with pytest.raises(SystemExit):
        main([])
    assert seen["models"] == ["resnet56", "plain56"] and len(seen["ds"]) == 2000
    assert "first 2000 images (200 per class)" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--model", "resnet2o"], "did you mean"),
        (["--model", "resnet32", "--checkpoint", "{resnet20}"], "not a resnet32"),
        (["--model", "resnet32", "--checkpoint", "{standard}"], "does not fit"),
        (["--model", "resnet20", "--checkpoint", "{resnet20}", "--data", "{missing}"],
         "does not exist"),
        (["--model", "resnet20", "--checkpoint", "{resnet20}", "--data", "{corrupt}"], ""),
        (["--model", "resnet20", "--checkpoint", "{resnet20}", "--blocks", "9"], "out of range"),
        (["--model", "plain20", "--checkpoint", "{plain20}", "--blocks", "6"], "changes"),
        (["--model", "resnet110"], "no trained checkpoint"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, tiny_checkpoints, args, needle, capsys):
    corrupt = tmp_path / "corrupt.tar.gz"
    corrupt.write_bytes(b"\x1f\x8b\x08\x00 not really gzip")
    standard = tmp_path / "resnet20.th"  # the pytorch_resnet_cifar10 format, DataParallel keys
    sd = checkpoint.load(checkpoint=tiny_checkpoints["resnet20"]).model.state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "best_prec1": 91.0},
               standard)
    subs = {"{resnet20}": str(tiny_checkpoints["resnet20"]), "{standard}": str(standard),
            "{plain20}": str(tiny_checkpoints["plain20"]),
            "{missing}": str(tmp_path / "nope"), "{corrupt}": str(corrupt)}
    args = [subs.get(a, a) for a in args] + ["--out", str(tmp_path / "o"), "--device", "cpu",
                                             "--limit", "4"]
    assert _run(args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and needle in err[0]


def test_cuda_absent_subprocess(tmp_path, tiny_checkpoints):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU visible, on any machine
    r = subprocess.run(
        [sys.executable, "-m", "ablate.delete_block", "--model", "resnet20", "--checkpoint",
         str(tiny_checkpoints["resnet20"]), "--device", "cuda", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: CUDA")
    assert "Traceback" not in r.stderr
