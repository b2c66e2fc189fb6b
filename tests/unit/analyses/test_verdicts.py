"""Every verdict of REPRODUCTION.md on synthetic tables: one that must pass, one that must fail."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from ablate.measures import paths as ps
from ablate.measures.stats import pack_correct
from analyses import delete_block, drop_blocks, gradnorm, paths, reorder_blocks, training_curves

N = 10_000


def _write(root: Path, analysis: str, df: pd.DataFrame, meta: dict | None = None) -> Path:
    d = root / "results" / analysis
    d.mkdir(parents=True, exist_ok=True)
    df.to_csv(d / "results.csv", index=False)
    if meta is not None:
        (d / "meta.json").write_text(json.dumps(meta))
    return root


def _one(findings, section):
    got = [f for f in findings if f.section.startswith(section)]
    assert len(got) == 1, [f.section for f in findings]
    return got[0]


# ---- Fig. 3 -----------------------------------------------------------------------------------

def _deletions(model, family, broken_rest, broken_down, intact_wrong=700, rng=None):
    rng = rng or np.random.default_rng(0)
    intact = np.ones(N, bool)
    intact[rng.choice(N, intact_wrong, replace=False)] = False
    rows = []
    for b in range(9):
        down = b in (3, 6)
        c = intact.copy()
        right = np.flatnonzero(c)
        c[rng.choice(right, broken_down if down else broken_rest, replace=False)] = False
        change = (c != intact).sum() / N
        rows.append({"model": model, "family": family, "block": b, "downsample": down,
                     "n_images": N, "num_classes": 10, "error": 1 - c.mean(),
                     "intact_error": 1 - intact.mean(), "error_change": change,
                     "n_broken": int((intact & ~c).sum()), "n_fixed": 0,
                     "p_value": 1e-9 if down else 0.5, "correct": pack_correct(c),
                     "intact_correct": pack_correct(intact)})
    return pd.DataFrame(rows)


def test_fig3_residual(tmp_path):
    ok = _write(tmp_path / "a", "delete_block", _deletions("resnet20", "resnet", 5, 600))
    f = _one(delete_block.verdicts(ok), "Veit Fig. 3")
    assert f.verdict == "reproduces" and "Holm" in f.ours and "2 (3*, 6*" in f.ours
    bad = _write(tmp_path / "b", "delete_block", _deletions("resnet20", "resnet", 400, 600))
    assert _one(delete_block.verdicts(bad), "Veit Fig. 3").verdict == "does not reproduce"


def test_fig3_on_a_net_without_downsampling_blocks(tmp_path):
    """A ViT: every block keeps the shape; the text says so rather than averaging nothing."""
    df = _deletions("vit_cifar", "torchvision_vit", 5, 5).assign(downsample=False)
    f = _one(delete_block.verdicts(_write(tmp_path, "delete_block", df)), "Veit Fig. 3")
    assert f.verdict == "reproduces" and "no downsampling blocks" in f.ours
    assert "nan" not in f.ours and "9 of 9 shown equivalent" in f.ours


def test_fig3_no_change_needs_equivalence_not_a_large_p(tmp_path):
    """Few images: every p is large, but nothing is shown equivalent, so no "no change"."""
    df = _deletions("resnet20", "resnet", 5, 600).assign(n_images=60, n_broken=1)
    f = _one(delete_block.verdicts(_write(tmp_path, "delete_block", df)), "Veit Fig. 3")
    assert f.verdict == "does not reproduce" and "0 of 7 shown equivalent" in f.ours


def test_fig3_plain(tmp_path):
    df = pd.DataFrame({"model": "plain20", "family": "plain", "num_classes": 10,
                       "intact_error": 0.1, "error": [0.9, 0.88, 0.85]})
    assert delete_block.verdicts(_write(tmp_path / "a", "delete_block", df))[0].verdict == \
        "reproduces"
    bad = df.assign(error=[0.2, 0.3, 0.4])
    assert delete_block.verdicts(_write(tmp_path / "b", "delete_block", bad))[0].verdict == \
        "does not reproduce"


# ---- Fig. 8 -----------------------------------------------------------------------------------

def _plan(root: Path, const="resnet20", sd="resnet20-sd") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "run.json").write_text(json.dumps({"plan": {"resnet": const, "stochastic": sd}}))
    return root


@pytest.mark.parametrize("sd_broken, sd_down, verdict", [
    (100, 500, "reproduces"), (300, 600, "does not reproduce")])
def test_fig8_pairs_the_two_named_networks_on_the_same_images(tmp_path, sd_broken, sd_down,
                                                              verdict):
    rng = np.random.default_rng(1)
    df = pd.concat([_deletions("resnet20", "resnet", 300, 600, rng=rng),
                    _deletions("resnet20-sd", "stochastic_depth", sd_broken, sd_down, rng=rng),
                    _deletions("resnet56", "resnet", 10, 10, rng=rng)])  # not a twin: ignored
    f = _one(delete_block.verdicts(_write(_plan(tmp_path), "delete_block", df)), "Veit Fig. 8")
    assert f.verdict == verdict and "paired interval" in f.ours and "one training seed" in \
        f.criterion


# ---- Fig. 5a ----------------------------------------------------------------------------------

def _drops(model, family, errors):
    return pd.DataFrame([{"model": model, "family": family, "k": k, "sample": s,
                          "error": e + 0.001 * s, "num_classes": 10, "n_candidates": 54}
                         for k, e in enumerate(errors) for s in range(3)])


def test_fig5a(tmp_path):
    smooth = _drops("resnet110", "resnet", np.linspace(0.07, 0.5, 21))
    f = drop_blocks.verdicts(_write(tmp_path / "a", "drop_blocks", smooth))[0]
    assert f.verdict == "reproduces" and "two layers" in f.ours
    cliff = _drops("resnet110", "resnet", [0.07] * 10 + [0.9] * 11)
    assert drop_blocks.verdicts(_write(tmp_path / "b", "drop_blocks", cliff))[0].verdict == \
        "does not reproduce"
    vit = _drops("vit_cifar", "vit", np.linspace(0.1, 0.9, 8))
    f = drop_blocks.verdicts(_write(tmp_path / "c", "drop_blocks", vit))[0]
    assert "k = 7 transformer blocks (an attention and an MLP branch each)" in f.ours


def test_fig5a_plain(tmp_path):
    f = drop_blocks.verdicts(_write(tmp_path / "a", "drop_blocks",
                                  _drops("plain20", "plain", [0.1, 0.9, 0.9])))[0]
    assert f.verdict == "reproduces" and "layer (one)" in f.ours
    f = drop_blocks.verdicts(_write(tmp_path / "b", "drop_blocks",
                                  _drops("plain20", "plain", [0.1, 0.2, 0.3])))[0]
    assert f.verdict == "does not reproduce"


# ---- Fig. 5b ----------------------------------------------------------------------------------

def _orders(err_of_tau, intact=0.10):
    rows = [{"model": "resnet110", "k": 0, "sample": 0, "kendall_tau": 1.0, "error": intact}]
    rng = np.random.default_rng(2)
    for k in range(1, 21):
        for s in range(4):
            tau = 1 - 0.03 * k - 0.01 * rng.random()
            rows.append({"model": "resnet110", "k": k, "sample": s, "kendall_tau": tau,
                         "error": err_of_tau(tau)})
    return pd.DataFrame(rows)


def test_fig5b_smooth_bounded_growth_reproduces(tmp_path):
    df = _orders(lambda t: 0.10 + 0.5 * (1 - t) ** 1.5)
    assert reorder_blocks.verdicts(_write(tmp_path, "reorder_blocks", df))[0].verdict == \
        "reproduces"


@pytest.mark.parametrize("err", [
    lambda t: 0.89 + 0.01 * (1 - t),  # 10% intact, ~89% after any swap: rho -0.95 yet unbounded
    lambda t: 0.10 + 0.3 * (1 - t) - (0.08 if t < 0.5 else 0.0),  # bounded, rho < 0, a dip
])
def test_fig5b_fails_unbounded_or_non_monotone(tmp_path, err):
    df = _orders(err)
    assert reorder_blocks.verdicts(_write(tmp_path, "reorder_blocks", df))[0].verdict == \
        "does not reproduce"


# ---- Fig. 6 -----------------------------------------------------------------------------------

def _paths(slope: float, n: int = 54) -> pd.DataFrame:
    ks = np.arange(0, n + 1, 6)
    mag = 10.0 ** (slope * ks)
    base = {"model": "resnet110", "n_blocks": n}
    rows = [{**base, "kind": "gradient_magnitude", "tap": "input", "k": int(k), "value": v}
            for k, v in zip(ks, mag)]
    rows += [{**base, "kind": "path_fraction", "k": k, "value": v}
             for k, v in enumerate(ps.length_distribution(n))]
    total = ps.total_gradient(ps.path_counts(n, log=True), ps.log_interpolate(ks, mag, n))
    rows += [{**base, "kind": "total_gradient", "k": k, "value": v} for k, v in enumerate(total)]
    return pd.DataFrame(rows)


def test_fig6(tmp_path):
    root = _write(tmp_path / "a", "paths", _paths(-0.3), {"mass": 0.8})
    a, bc = paths.verdicts(root)
    assert a.verdict == "computed" and "more than 95%" in a.claim
    assert bc.verdict == "reproduces"
    assert "80% of the total gradient" in bc.criterion  # --mass reaches the report
    assert all(f"{m}% of the total gradient" in bc.ours for m in (80, 90, 95))
    root = _write(tmp_path / "b", "paths", _paths(+0.05), {"mass": 0.9})
    assert paths.verdicts(root)[1].verdict == "does not reproduce"


# ---- gradient flow -----------------------------------------------------------------------------

def _grads(ratios: dict[tuple[str, str], float], bn: dict[str, str] | None = None
           ) -> pd.DataFrame:
    rows = []
    for (model, state), r in ratios.items():
        fam = "plain" if model.startswith("plain") else "resnet"
        rows += [{"model": model, "family": fam, "state": state, "kind": "activation",
                  "unit": u, "grad_norm": g, "bn": (bn or {}).get(state, "eval")}
                 for u, g in ((0, r), (1, 1.0))]
    return pd.DataFrame(rows)


def test_gradnorm_healthy_plain_gradients_in_every_state(tmp_path):
    """He et al. Sec. 4.1: with BN the plain net's gradient does not vanish towards the input."""
    healthy = {(m, s): r for s in ("init", "trained")
               for m, r in (("resnet20", 2.0), ("resnet56", 3.0), ("plain20", 0.5))}
    f = gradnorm.verdicts(_write(tmp_path / "a", "gradnorm", _grads(healthy)))[0]
    assert f.section == "He et al. 2015 Sec. 4.1" and f.verdict == "reproduces"
    assert f.ours.count("resnet20") == 2  # the ResNets are shown beside, not judged
    init_vanishes = healthy | {("plain20", "init"): 0.05}
    assert gradnorm.verdicts(_write(tmp_path / "b", "gradnorm", _grads(init_vanishes)))[0].verdict \
        == "partly"
    both = init_vanishes | {("plain20", "trained"): 0.01}
    assert gradnorm.verdicts(_write(tmp_path / "c", "gradnorm", _grads(both)))[0].verdict == \
        "does not reproduce"


def test_gradnorm_judges_the_bn_mode_the_run_asked_for(tmp_path):
    """An older table may hold init rows with running statistics beside the batch-statistics
    ones: the verdict reads those of the mode meta.json names per state."""
    auto = {"init": "train", "trained": "eval"}
    new = _grads({("plain20", "init"): 0.5, ("plain20", "trained"): 0.5}, auto)
    old = _grads({("plain20", "init"): 0.01})  # init measured with eval-mode BN
    root = _write(tmp_path, "gradnorm", pd.concat([old, new]), {"bn_by_state": auto})
    f = gradnorm.verdicts(root)[0]
    assert f.verdict == "reproduces" and "plain20 (init, BN batch statistics)" in f.ours


# ---- Huang et al. ------------------------------------------------------------------------------

def _cards(monkeypatch, **kw):
    cards = {"resnet20": {"final_test_error": 0.07, "epochs": 10, "device": "H100",
                          "train_step_seconds": 1000.0},
             "resnet20-sd": {"final_test_error": 0.06, "epochs": 10, "device": "H100",
                             "train_step_seconds": 740.0}}
    for m, c in kw.items():
        cards[m.replace("_", "-")] |= c
    monkeypatch.setattr(training_curves.checkpoint, "load", lambda m: SimpleNamespace(card=cards[m]))
    return cards


@pytest.mark.parametrize("sd_wrong, verdict", [(500, "reproduces"), (700, "does not reproduce")])
def test_huang_table1_paired_on_the_same_images(tmp_path, monkeypatch, sd_wrong, verdict):
    _cards(monkeypatch)
    rng = np.random.default_rng(3)
    df = pd.concat([_deletions("resnet20", "resnet", 5, 5, intact_wrong=700, rng=rng),
                    _deletions("resnet20-sd", "stochastic_depth", 5, 5, intact_wrong=sd_wrong,
                               rng=rng)])
    root = _write(_plan(tmp_path), "delete_block", df)
    f = _one(training_curves.verdicts(root), "Huang et al. Table 1")
    assert f.verdict == verdict and "McNemar" in f.ours and "test-set noise only" in f.criterion


def test_huang_time_saving_from_training_steps_alone(monkeypatch):
    cards = _cards(monkeypatch)
    assert training_curves.time_saving(cards, "resnet20", "resnet20-sd").verdict == "reproduces"
    slow = cards | {"resnet20-sd": cards["resnet20-sd"] | {"train_step_seconds": 900.0}}
    assert training_curves.time_saving(slow, "resnet20", "resnet20-sd").verdict == "does not reproduce"
    old = cards | {"resnet20-sd": cards["resnet20-sd"] | {"train_step_seconds": None}}
    assert training_curves.time_saving(old, "resnet20", "resnet20-sd").verdict == "not run"
    other = cards | {"resnet20-sd": cards["resnet20-sd"] | {"device": "A100"}}
    assert training_curves.time_saving(other, "resnet20", "resnet20-sd").verdict == "not run"


def test_huang_time_saving_refuses_cards_of_runs_that_changed_machine(monkeypatch):
    moved = [{"epochs": "1-19", "amp": "bf16", "device": "H100"},
             {"epochs": "20-30", "amp": "off", "device": "H100"}]
    cards = _cards(monkeypatch, resnet20={"precision_by_epochs": moved})
    f = training_curves.time_saving(cards, "resnet20", "resnet20-sd")
    assert f.verdict == "not run" and "several devices or precisions" in f.ours


@pytest.mark.parametrize("sd_speed, verdict",
                         [(212.0, "reproduces"), (160.0, "does not reproduce")])
def test_huang_time_saving_prefers_the_benchmark_that_times_both_alike(
        tmp_path, monkeypatch, sd_speed, verdict):
    import json

    cards = _cards(monkeypatch)  # the cards alone would say "reproduces" (26% less)
    (tmp_path / "speed.json").write_text(json.dumps({
        "model": "resnet20", "ours_images_per_s": 145.0, "sd_images_per_s": sd_speed,
        "steps": 40, "batch_size": 128, "device": "AMD EPYC",
        "precision_choice": "AMD EPYC has native bf16: bf16 autocast, channels-last"}))
    (tmp_path / "other.json").write_text(json.dumps({"model": "resnet56", "engine_s": 1.0}))
    bench = training_curves.step_benchmarks("resnet20", tmp_path)
    assert [b["file"] for b in bench] == ["speed.json"]
    f = training_curves.time_saving(cards, "resnet20", "resnet20-sd", bench)
    assert f.verdict == verdict and "speed.json" in f.ours and "alike" in f.criterion
    assert f"{1 - 145.0 / sd_speed:.0%} less" in f.ours
    assert f.measured == "benchmarks/speed.json: AMD EPYC, random data"


@pytest.mark.parametrize("sd_grad, verdict", [
    ((0.02, 0.02, 0.02), "reproduces"), ((0.02, 0.005, 0.02), "partly"),
    ((0.005, 0.005, 0.02), "does not reproduce")])
def test_huang_fig7_larger_in_every_epoch(tmp_path, monkeypatch, sd_grad, verdict):
    _cards(monkeypatch)
    df = pd.DataFrame([{"model": m, "epoch": e, "metric": "grad_mean_abs_first_block_conv1",
                        "value": g[e]} for m, g in (("resnet20", (0.01,) * 3),
                                                    ("resnet20-sd", sd_grad))
                       for e in range(3)])
    f = _one(training_curves.verdicts(_write(_plan(tmp_path), "training_curves", df)),
             "Huang et al. Fig. 7")
    assert f.verdict == verdict
    assert f"in {sum(x > 0.01 for x in sd_grad)} of 3 epochs" in f.ours
    # measured by the training runs, not by the step that read their logs
    assert f.measured.startswith("their training logs (resnet20:")
