"""Redundancy measures, paired statistics and the LM deletion sweep (tiny random models)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ablate.interventions import delete
from ablate.measures.paired import holm, paired_bootstrap
from ablate.measures.redundancy import rank_correlation, redundancy

transformers = pytest.importorskip("transformers")
from tests.unit.models.test_transformers import inputs, make  # noqa: E402


@pytest.mark.parametrize("name", ["tv_vit", "gpt2"])
def test_identity_block_has_zero_influence(name):
    model, x = make(name), inputs(name)
    fwd = (lambda m, b: m(b, use_cache=False)) if name == "gpt2" else None
    with delete(model, [1]):
        r = redundancy(model, [x, x[:1]], forward=fwd, windows=(1, 2))
    assert r.influence.shape == (3, 3) and r.angular[2].shape == (3, 2)
    assert np.abs(r.influence[:, 1]).max() < 1e-12 and np.abs(r.ratio[:, 1]).max() < 1e-12
    assert np.abs(r.angular[1][:, 1]).max() < 1e-6
    assert (r.influence[:, [0, 2]] > 1e-4).all()
    # angular distance over one block is arccos(1 - BI) / pi
    np.testing.assert_allclose(r.angular[1], np.arccos(1 - r.influence) / np.pi, atol=1e-6)
    t = r.table()
    assert set(t.measure) == {"block_influence", "contribution_ratio", "angular_distance"}
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0


def test_rank_correlation():
    rng = np.random.default_rng(0)
    damage = rng.normal(size=(50, 6)) * 0.1 + np.arange(6)
    rho, lo, hi = rank_correlation(damage + rng.normal(size=(50, 6)) * 0.1, damage, n_boot=200)
    assert rho == pytest.approx(1.0) and lo <= rho <= hi
    rho, lo, hi = rank_correlation(-np.arange(6.0), damage, n_boot=200)
    assert rho == pytest.approx(-1.0)


def test_paired_bootstrap_and_holm():
    a, b = np.zeros(100), np.r_[np.ones(30), np.zeros(70)]
    d, lo, hi = paired_bootstrap(a, b, n_boot=500)
    assert d == pytest.approx(0.3) and lo < 0.3 < hi
    d2, lo2, hi2 = paired_bootstrap(a, b, n_boot=500, clusters=np.arange(100) // 10)
    assert d2 == pytest.approx(0.3) and hi2 - lo2 > hi - lo  # whole clusters: wider
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def test_lm_sweep_and_cli(tmp_path):
    from ablate import lm_delete

    model = make("gpt2")
    ids = inputs("gpt2").repeat(2, 1)
    df, tok = lm_delete.lm_sweep(model, ids, batch_size=3, n_boot=100, device="cpu",
                                 conditions=lm_delete.deletion_conditions(model)
                                 + lm_delete.swap_conditions(model), return_tokens=True)
    assert list(df.condition) == ["intact"] + ["delete"] * 3 + ["swap"] * 2
    assert df.agreement.iloc[0] == 1.0 and df.kl.iloc[0] == 0.0
    assert tok["kl"].shape == (4 * 5, 6) and (df.kl.iloc[1:] > 0).all()
    assert df.p_holm.iloc[1:].between(0, 1).all()
    # the deletion equals the zeroed-layer model token by token
    with delete(model, [1]), torch.no_grad():
        want = model(ids, use_cache=False).logits[:, :-1].argmax(-1).flatten()
    assert np.array_equal(tok["correct"][:, 2], (want == ids[:, 1:].flatten()).numpy())
    # the command on a local model directory and a byte-level tokenizer
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=256, n_positions=64)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "tiny")
    (tmp_path / "t.txt").write_text("the quick brown fox jumps over the lazy dog. " * 8)
    out = lm_delete.main(["--model", str(tmp_path / "tiny"), "--tokenizer", "bytes",
                          "--text-file", str(tmp_path / "t.txt"), "--seq-len", "32",
                          "--max-sequences", "4", "--swaps", "--n-boot", "50",
                          "--device", "cpu", "--out", str(tmp_path / "o.csv")])
    assert len(out) == 1 + 2 + 1 and (tmp_path / "o.csv").exists()
