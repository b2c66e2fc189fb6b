"""Multi-block sweeps (drop_blocks, reorder_blocks): equal to the naive loop, seeded,
resumable, their outputs and errors, and the torchrun split across two CPU processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import analyses.sweep
from ablate import data as data_mod
from ablate import drop_blocks as drop_cli
from ablate import models
from ablate import reorder_blocks as reorder_cli
from ablate.interventions import variants as lesion
from ablate.interventions.variants import Variant, evaluate_naive
from ablate.models import checkpoint
from analyses import drop_blocks, reorder_blocks
from analyses.table import Table

REPO = Path(__file__).resolve().parents[2]
N_IMAGES = 8
CKPTS = {"resnet20": ("resnet20", {}), "plain20": ("plain20", {}),
         "resnet20-sd": ("resnet20", {"stochastic_depth": 0.5})}


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> SimpleNamespace:
    """An ImageFolder of 40 random 32x32 PNGs in 4 classes, and three random 4-class nets with
    perturbed batch norms (so that deletions change the predictions)."""
    root = tmp_path_factory.mktemp("sweeps")
    rng = np.random.default_rng(0)
    for c in range(4):
        d = root / "data" / "test" / f"class{c}"
        d.mkdir(parents=True)
        for i in range(10):
            img = np.clip(60 * c + rng.integers(0, 100, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"{i}.png")
    paths = {}
    for seed, (name, (arch, kw)) in enumerate(CKPTS.items()):
        torch.manual_seed(seed)
        net = models.create(arch, num_classes=4, **kw)
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
        card = {"arch": arch, "arch_kwargs": {"num_classes": 4, **kw}, "dataset": "imagefolder"}
        paths[name] = checkpoint.save(net, root / name, card)
    return SimpleNamespace(root=root, data=root / "data", ckpt=paths, cache=root / "cache")


@pytest.fixture(autouse=True)
def _cache(fx, monkeypatch):
    monkeypatch.setenv("ABLATE_CACHE", str(fx.cache))


def _args(fx, *names: str, limit: int = N_IMAGES) -> list[str]:
    return ["--model", *names, "--checkpoint", *[str(fx.ckpt[n]) for n in names],
            "--data", str(fx.data), "--limit", str(limit), "--device", "cpu"]


def _load(fx, name: str):
    return checkpoint.load(name, fx.ckpt[name])


def _data(fx, n: int = N_IMAGES):
    return data_mod.load(fx.data, "test", quiet=True).subset(n)


def _same_as_naive(m, ds, df, variants) -> None:
    norm = {"mean": m.mean, "std": m.std}
    naive = evaluate_naive(m.model, ds.images, ds.labels, variants, **norm)
    assert df["errors"].tolist() == [o.errors for o in naive]
    assert df["loss"].tolist() == [o.loss_interval()[0] for o in naive]  # bitwise on the CPU


@pytest.fixture(scope="module")
def three_models(fx, tmp_path_factory) -> Path:
    """drop_blocks on a ResNet, its plain twin and the stochastic-depth ResNet, with the figure."""
    out = tmp_path_factory.mktemp("drop3")
    os.environ["ABLATE_CACHE"] = str(fx.cache)
    argv = [*_args(fx, "resnet20", "plain20", "resnet20-sd"), "--max-k", "2", "--samples", "3",
            "--out", str(out), "--seed", "7"]
    assert drop_cli.main(argv) == 0
    return out


def test_kendall_tau_of_known_permutations():
    n = 9
    assert reorder_blocks.kendall_tau(list(range(n))) == pytest.approx(1.0)
    swapped = list(range(n))
    swapped[3], swapped[4] = 4, 3
    assert reorder_blocks.kendall_tau(swapped) == pytest.approx(1 - 4 / (n * (n - 1)))
    assert reorder_blocks.kendall_tau(list(range(n))[::-1]) == pytest.approx(-1.0)


def test_candidates_pairs_and_seeded_draws(fx):
    res, plain = _load(fx, "resnet20"), _load(fx, "plain20")
    assert drop_blocks.candidates(res) == [0, 1, 2, 4, 5, 7, 8]  # 3 and 6 downsample
    assert len(drop_blocks.candidates(res, include_downsampling=True)) == 9
    assert len(drop_blocks.candidates(plain)) == 16  # 18 convs, 2 change the shape
    assert reorder_blocks.pairs(res) == [(0, 1), (0, 2), (1, 2), (4, 5), (7, 8)]
    cands = drop_blocks.candidates(res)
    a = drop_blocks.draw(3, "resnet20", cands, 4, 1)
    assert a == drop_blocks.draw(3, "resnet20", cands, 4, 1) and len(set(a)) == 4
    others = {tuple(drop_blocks.draw(s, m, cands, 4, j))
              for s, m, j in [(4, "resnet20", 1), (3, "resnet20-sd", 1), (3, "resnet20", 2)]}
    assert tuple(a) not in others
    o = reorder_blocks.draw(3, "resnet20", 9, reorder_blocks.pairs(res), 5, 0)
    assert o == reorder_blocks.draw(3, "resnet20", 9, reorder_blocks.pairs(res), 5, 0)
    assert sorted(o) == list(range(9)) and o[3] == 3 and o[6] == 6


def test_draws_are_keyed_by_architecture_not_display_name(fx):
    """resnet110 and resnet110-sd get the same sets and orders, so Fig. 8 is paired."""
    import dataclasses

    res = _load(fx, "resnet20")
    twin = dataclasses.replace(res, name="resnet20-sd")  # same architecture, another name
    ds = _data(fx, 8)
    a = drop_blocks.run(res, ds, max_k=3, samples=2, progress=False)
    b = drop_blocks.run(twin, ds, max_k=3, samples=2, progress=False)
    assert a.deleted.tolist() == b.deleted.tolist()
    a = reorder_blocks.run(res, ds, max_swaps=3, samples=2, progress=False)
    b = reorder_blocks.run(twin, ds, max_swaps=3, samples=2, progress=False)
    assert a.order.tolist() == b.order.tolist()


@pytest.mark.parametrize("name", ["resnet20", "plain20"])
def test_drop_blocks_rows_equal_naive(fx, name):
    m, ds = _load(fx, name), _data(fx)
    df = drop_blocks.run(m, ds, max_k=3, samples=2, group=4, progress=False)
    assert df["k"].tolist() == [0, 1, 1, 2, 2, 3, 3]
    sets = [[int(i) for i in s.split()] for s in df["deleted"].fillna("").astype(str)]
    assert [len(s) for s in sets] == df["k"].tolist()
    assert all(set(s) <= set(drop_blocks.candidates(m)) for s in sets)
    _same_as_naive(m, ds, df, [Variant.deleting(s) for s in sets])


def test_reorder_rows_equal_naive_and_tau(fx):
    m, ds = _load(fx, "resnet20"), _data(fx)
    df = reorder_blocks.run(m, ds, max_swaps=3, samples=2, group=4, progress=False)
    orders = [[int(i) for i in s.split()] for s in df["order"]]
    assert orders[0] == list(range(9)) and df["kendall_tau"].iloc[0] == 1.0
    assert df["kendall_tau"].tolist() == [reorder_blocks.kendall_tau(o) for o in orders]
    _same_as_naive(m, ds, df, [Variant.reordered(o) for o in orders])


def _counting(monkeypatch, fail_after: int | None = None) -> list[int]:
    """Count the variants each engine call of a sweep evaluates (optionally interrupt a later
    call)."""
    calls: list[int] = []
    real = lesion.evaluate_variants

    def counted(model, images, labels, variants, **kw):
        if fail_after is not None and len(calls) >= fail_after:
            raise KeyboardInterrupt
        calls.append(len(variants))
        return real(model, images, labels, variants, **kw)

    monkeypatch.setattr(analyses.sweep, "evaluate_variants", counted)
    return calls


def _sorted(path: Path, key) -> pd.DataFrame:
    return pd.read_csv(path).sort_values(list(key)).reset_index(drop=True)


def test_resumed_drop_blocks_equals_uninterrupted(fx, tmp_path, monkeypatch):
    calls = _counting(monkeypatch)
    base = [*_args(fx, "resnet20"), "--samples", "2", "--no-figure"]
    assert drop_cli.main([*base, "--max-k", "2", "--out", str(tmp_path / "a")]) == 0
    assert sum(calls) == 1 + 2 + 2
    assert drop_cli.main([*base, "--max-k", "4", "--out", str(tmp_path / "a")]) == 0
    assert sum(calls) == 5 + 2 + 2  # only k = 3, 4 were computed
    assert drop_cli.main([*base, "--max-k", "4", "--out", str(tmp_path / "a")]) == 0
    assert sum(calls) == 9  # nothing recomputed
    assert drop_cli.main([*base, "--max-k", "4", "--out", str(tmp_path / "b")]) == 0
    pd.testing.assert_frame_equal(_sorted(tmp_path / "a" / "results.csv", drop_blocks.KEY),
                                  _sorted(tmp_path / "b" / "results.csv", drop_blocks.KEY))


def test_interrupted_reorder_resumes(fx, tmp_path, monkeypatch):
    m, ds = _load(fx, "resnet20"), _data(fx)
    path = tmp_path / "results.csv"
    kw = {"max_swaps": 2, "samples": 2, "group": 2, "progress": False}
    _counting(monkeypatch, fail_after=1)
    with pytest.raises(KeyboardInterrupt):
        reorder_blocks.run(m, ds, table=Table(path, reorder_blocks.KEY), **kw)
    assert len(pd.read_csv(path)) == 2  # the first group was kept
    calls = _counting(monkeypatch)
    resumed = reorder_blocks.run(m, ds, table=Table(path, reorder_blocks.KEY), **kw)
    assert sum(calls) == 5 - 2
    whole = reorder_blocks.run(m, ds, **kw)
    cols = ["k", "sample", "order", "errors", "loss"]
    pd.testing.assert_frame_equal(resumed[cols], whole[cols], check_dtype=False)


def test_draws_do_not_depend_on_other_models(fx, three_models, tmp_path):
    argv = [*_args(fx, "resnet20"), "--max-k", "2", "--samples", "3", "--seed", "7",
            "--out", str(tmp_path), "--no-figure"]
    assert drop_cli.main(argv) == 0
    alone = pd.read_csv(tmp_path / "results.csv")
    together = pd.read_csv(three_models / "results.csv")
    together = together[together["model"] == "resnet20"].reset_index(drop=True)
    pd.testing.assert_frame_equal(alone, together)
    assert set(pd.read_csv(three_models / "results.csv")["family"]) == {
        "resnet", "plain", "stochastic_depth"}


def _check_outputs(out: Path, figure: str, seed: int) -> None:
    assert (out / "results.csv").stat().st_size > 0
    for suffix in (".pdf", ".png"):
        assert (out / f"{figure}{suffix}").stat().st_size > 1000
    meta = json.loads((out / "meta.json").read_text())
    assert meta["seed"] == seed and meta["data"]["n_images"] == N_IMAGES
    assert meta["versions"]["torch"] == torch.__version__ and meta["device"].startswith("cpu")
    assert meta["data"]["name"] == "imagefolder"


def test_commands_write_table_meta_and_figure(fx, three_models, tmp_path):
    _check_outputs(three_models, "drop_blocks", 7)
    argv = [*_args(fx, "resnet20", "resnet20-sd"), "--max-swaps", "2", "--samples", "2",
            "--out", str(tmp_path), "--seed", "3"]
    assert reorder_cli.main(argv) == 0
    _check_outputs(tmp_path, "reorder_blocks", 3)
    assert len(pd.read_csv(tmp_path / "results.csv")) == 2 * (1 + 2 + 2)


def test_bad_input_is_one_line_and_exit_2(fx, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        drop_cli.main([*_args(fx, "resnet20"), "--max-k", "8", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "\n" not in err and "--max-k 8" in err
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "ablate.reorder_blocks", *_args(fx, "plain20"),
                        "--out", str(tmp_path)], capture_output=True, text=True, cwd=REPO,
                       env=env, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error:") and "\n" not in r.stderr.strip()
    assert "plain" in r.stderr and not (tmp_path / "results.csv").exists()


_RUN_ALL = """
import sys
import ablate.delete_block as delete_block
import ablate.drop_blocks as drop_blocks
import ablate.reorder_blocks as reorder_blocks

def run_all(out, res, plain, data):
    common = ["--data", data, "--limit", "8", "--device", "cpu", "--no-figure"]
    drop_blocks.main([*common, "--model", "resnet20", "plain20", "--checkpoint", res, plain,
                      "--max-k", "2", "--samples", "2", "--out", out + "/drop"])
    reorder_blocks.main([*common, "--model", "resnet20", "--checkpoint", res, "--max-swaps", "2",
                  "--samples", "3", "--out", out + "/reorder"])
    delete_block.main([*common, "--model", "resnet20", "--checkpoint", res,
                       "--out", out + "/delete"])

if __name__ == "__main__":
    run_all(*sys.argv[1:5])
"""


def test_two_processes_equal_one(fx, tmp_path):
    """torchrun with two gloo CPU processes writes the same rows as one process (in this one)."""
    paths = [str(fx.ckpt["resnet20"]), str(fx.ckpt["plain20"]), str(fx.data)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "2", "--no-python", sys.executable, "-c", _RUN_ALL]
    r = subprocess.run([*torchrun, str(tmp_path / "two"), *paths], capture_output=True,
                       text=True, cwd=REPO, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    ns: dict = {"__name__": "run_all"}
    exec(_RUN_ALL, ns)
    ns["run_all"](str(tmp_path / "one"), *paths)
    for sub in ("drop", "reorder", "delete"):
        one = (tmp_path / "one" / sub / "results.csv").read_text()
        two = (tmp_path / "two" / sub / "results.csv").read_text()
        assert one == two and len(one.splitlines()) > 3, sub
    for sub in ("drop", "reorder"):
        assert json.loads((tmp_path / "two" / sub / "meta.json").read_text())["world_size"] == 2
        assert json.loads((tmp_path / "one" / sub / "meta.json").read_text())["world_size"] == 1
