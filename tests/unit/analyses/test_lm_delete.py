"""The LM experiment (analyses.lm_delete) on tiny random GPT-2, Llama and NeoX models: its
conditions, the replayed prefix (bitwise the intact pass), the per-token outcomes against a plain
forward pass, the statistics and their columns, resume, the verdicts and the figure."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from ablate._infra.errors import UsageError
from ablate.interventions import delete, reorder
from ablate.measures.stats import holm, mcnemar_clustered
from analyses import lm_delete
from analyses.table import Table
from tests.unit.models.test_transformers import V, make

pytest.importorskip("transformers")


def _ids(n: int = 5, t: int = 12, seed: int = 3) -> torch.Tensor:
    return torch.randint(0, V, (n, t), generator=torch.Generator().manual_seed(seed))


def _plain(model, ids, edit=None) -> torch.Tensor:
    """Logits of the scored positions from one ordinary forward pass."""
    with torch.no_grad(), (edit(model) if edit else torch.no_grad()):
        return model(input_ids=ids, use_cache=False).logits[:, :-1].flatten(0, 1)


def test_conditions():
    m = make("llama")  # 3 layers
    d = lm_delete.delete_conditions(m)
    assert [(c.kind, c.n, c.index, c.layers, c.first) for c in d] == [
        ("delete", 1, i, (i,), i) for i in range(3)]
    b = lm_delete.delete_conditions(m, "branch", layers=[1])
    assert [(c.index, c.first, c.columns["branch"], c.granularity) for c in b] == [
        (2, 1, "attn", "branch"), (3, 1, "mlp", "branch")]
    s = lm_delete.swap_conditions(m)
    assert [c.layers for c in s] == [(1, 0, 2), (0, 2, 1)] and [c.first for c in s] == [0, 1]
    assert s[0].columns["kendall_tau"] == pytest.approx(1 / 3)
    w = lm_delete.window_conditions(m, [2, 3, 9])
    assert [(c.n, c.index, c.layers) for c in w] == [(2, 0, (0, 1)), (2, 1, (1, 2))]
    dr = lm_delete.drop_conditions(m, 2, 3, seed=0)
    assert [(c.n, c.index) for c in dr] == [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]
    assert all(len(set(c.layers)) == c.n and c.first == min(c.layers) for c in dr)
    assert [c.layers for c in dr] == [c.layers for c in lm_delete.drop_conditions(m, 2, 3, 0)]
    ro = lm_delete.reorder_conditions(m, 2, 2, seed=0)
    assert all(sorted(c.layers) == [0, 1, 2] for c in ro)
    for c in ro:
        moved = [p for p, i in enumerate(c.layers) if p != i]
        assert c.first == (moved[0] if moved else 3)
    inf = pd.Series([0.3, 0.1, 0.2])
    dmg = pd.Series([1.0, 0.5, 0.1])
    pr = lm_delete.prune_conditions(m, inf, dmg, [1, 2], draws=20, seed=0)
    rules = [(c.n, c.columns["rule"], c.layers) for c in pr]
    assert rules[:2] == [(1, "lowest", (1,)), (1, "oracle", (2,))]
    assert [r for r in rules if r[0] == 2][:2] == [(2, "lowest", (1, 2)), (2, "oracle", (1, 2))]
    assert sum(r[1] == "every" for r in rules) == 3 + 3  # every set: C(3,1) + C(3,2) <= 20
    assert lm_delete.prune_sizes(30) == [2, 4, 8] and lm_delete.prune_sizes(3) == [1, 2]
    assert lm_delete.prune_sizes(30, [8, 40, 0]) == [8]


@pytest.mark.parametrize("name", ["llama", "gpt2", "neox"])
def test_replayed_prefix_is_the_plain_forward_pass(name):
    """A condition's pass with the layers before it replayed gives bitwise the logits of the
    plain forward pass under the same intervention, on the same batch."""
    m = make(name)
    ids = _ids()
    runner = lm_delete._Runner(m, ids, batch_size=5)
    conds = [*lm_delete.delete_conditions(m), *lm_delete.swap_conditions(m),
             *lm_delete.window_conditions(m, [2]), *lm_delete.drop_conditions(m, 2, 1, 0),
             *lm_delete.reorder_conditions(m, 2, 2, 0)]
    seen = {}

    def spy(logits, *rest):
        seen["logits"] = logits
        return real(logits, *rest)

    real = lm_delete.outcomes
    lm_delete.outcomes = spy
    try:
        with torch.inference_mode():
            runner.intact(0)  # the intact pass itself
            assert torch.equal(seen["logits"], _plain(m, ids))
            for c in conds:
                runner.run(0, c)
                assert torch.equal(seen["logits"], _plain(m, ids, c.edit)), (c.kind, c.index)
    finally:
        lm_delete.outcomes = real
    assert sum(len(x._forward_hooks) for x in m.modules()) == 0
    assert not any(isinstance(x, lm_delete._Replay) for x in m.modules())


def test_rows_match_a_plain_computation():
    m = make("llama")
    ids = _ids()
    df = lm_delete.run(m, ids, kinds=["delete", "swap"], n_boot=200, batch_size=2,
                       progress=False)
    assert df.condition.tolist() == ["intact"] + ["delete"] * 3 + ["swap"] * 2
    labels = ids[:, 1:].flatten()
    intact = _plain(m, ids)
    lp = F.log_softmax(intact, -1)
    for r in df.itertuples():
        order = [int(v) for v in str(r.layers).split()]
        edit = None if r.condition == "intact" else (
            (lambda x, i=r.index: delete(x, [i])) if r.condition == "delete" else
            (lambda x, o=order: reorder(x, o)))
        lg = _plain(m, ids, edit)
        lq = F.log_softmax(lg, -1)
        nll = F.cross_entropy(lg, labels, reduction="none")
        correct = lg.argmax(-1) == labels
        assert r.nll == pytest.approx(float(nll.mean()), abs=1e-5)
        assert r.perplexity == pytest.approx(math.exp(r.nll))
        assert r.accuracy == pytest.approx(float(correct.float().mean()))
        assert r.agreement == pytest.approx(float((lg.argmax(-1) == intact.argmax(-1))
                                                  .float().mean()))
        kl = (lp.exp() * (lp - lq)).sum(-1).clamp_min(0)
        assert r.kl == pytest.approx(float(kl.mean()), abs=1e-5)
        assert r.nll_change == pytest.approx(r.nll - r.nll_intact, abs=1e-9)
        assert r.nll_change_lo <= r.nll_change <= r.nll_change_hi
        assert r.accuracy_change == pytest.approx(r.accuracy - r.accuracy_intact)
        seq = np.repeat(np.arange(5), 11)
        c0 = (intact.argmax(-1) == labels).numpy()
        assert r.mcnemar_p == pytest.approx(mcnemar_clustered(c0, correct.numpy(), seq))
        per_seq = lm_delete._floats(r.seq_nll_change)
        assert per_seq.size == 5 and per_seq.mean() == pytest.approx(r.nll_change, abs=1e-5)
        assert r.tokens == 55 and r.sequences == 5 and r.dtype == "fp32"
    assert df.iloc[0][["nll_change", "accuracy_change", "kl"]].abs().max() < 1e-6
    # Holm over the conditions of one kind, computed on read
    for kind in ("delete", "swap"):
        d = df[df.condition == kind]
        assert np.allclose(d.p_holm, holm(d.mcnemar_p.tolist()))
    assert math.isnan(df.p_holm.iloc[0])


def test_every_kind_and_its_columns(tmp_path):
    m = make("gpt2")
    ids = _ids(4, 10)
    table = Table(tmp_path / "results.csv", lm_delete.KEY, lm_delete.TEXT_COLUMNS)
    df = lm_delete.run(m, ids, kinds=["prune", "window", "drop", "reorder"], windows=[2],
                       max_k=2, samples=2, max_swaps=2, prune=[1, 2], n_boot=50, table=table,
                       progress=False)
    counts = df.condition.value_counts().to_dict()
    assert counts == {"intact": 1, "delete": 3, "window": 2, "block_influence": 3,
                      "contribution_ratio": 3, "angular_distance": 3 + 2,
                      "angular_distance_last": 3 + 2, "prune": 2 * (2 + 3), "drop": 4,
                      "reorder": 4}
    bi = df[df.condition == "block_influence"]
    assert bi.value.between(0, 2).all() and bi.nll_change.isna().all()
    # angular distance over one layer is arccos(1 - BI) / pi, per sequence: means agree roughly
    ad = df[(df.condition == "angular_distance") & (df.n == 1)]
    assert np.allclose(ad.value, np.arccos(1 - bi.value.to_numpy()) / np.pi, atol=0.05)
    pr = df[df.condition == "prune"]
    low = pr[(pr.n == 1) & (pr.rule == "lowest")].layers.iloc[0]
    assert int(low) == int(bi.loc[bi.value.idxmin(), "index"])
    dl = df[df.condition == "delete"].set_index("index")
    oracle = pr[(pr.n == 1) & (pr.rule == "oracle")]
    assert int(oracle.layers.iloc[0]) == int(dl.nll_change.idxmin())
    assert oracle.nll_change.iloc[0] == pytest.approx(dl.nll_change.min())
    ro = df[df.condition == "reorder"]
    assert ro.kendall_tau.between(-1, 1).all() and ro.name.str.startswith("order").all()
    on_disk = pd.read_csv(tmp_path / "results.csv")
    assert len(on_disk) == len(df) and set(lm_delete.KEY) <= set(on_disk.columns)


def test_resume_measures_only_what_is_missing(tmp_path, monkeypatch):
    m = make("llama")
    ids = _ids()
    path = tmp_path / "results.csv"
    first = lm_delete.run(m, ids, kinds=["delete", "swap"], n_boot=50, progress=False,
                          table=Table(path, lm_delete.KEY, lm_delete.TEXT_COLUMNS))
    df = pd.read_csv(path)
    df[~((df.condition == "delete") & (df["index"] == 1))].to_csv(path, index=False)
    calls = []
    real = lm_delete._Runner.run

    def spy(self, b, cond):
        calls.append((cond.kind, cond.index))
        return real(self, b, cond)

    monkeypatch.setattr(lm_delete._Runner, "run", spy)
    table = Table(path, lm_delete.KEY, lm_delete.TEXT_COLUMNS)
    again = lm_delete.run(m, ids, kinds=["delete", "swap"], n_boot=50, progress=False,
                          table=table)
    assert calls == [("delete", 1)] and table.added == 1
    cols = ["condition", "n", "index", "nll", "accuracy", "kl", "mcnemar_p"]
    pd.testing.assert_frame_equal(first[cols], again[cols], check_dtype=False)
    # other tokens (another text, length or count) or another precision: other rows
    calls.clear()
    lm_delete.run(m, ids[:4], kinds=["delete"], n_boot=50, progress=False,
                  table=Table(path, lm_delete.KEY, lm_delete.TEXT_COLUMNS))
    assert len(calls) == 1 + 3  # the intact row too


def test_a_batch_cut_into_several_gives_the_same_rows():
    m = make("neox")
    ids = _ids(6, 9)
    a = lm_delete.run(m, ids, kinds=["delete"], n_boot=50, batch_size=6, progress=False)
    b = lm_delete.run(m, ids, kinds=["delete"], n_boot=50, batch_size=4, progress=False)
    np.testing.assert_allclose(a.nll, b.nll, atol=1e-5)
    assert a.accuracy.tolist() == b.accuracy.tolist()


def test_the_intact_pass_is_recomputed_when_it_does_not_fit(monkeypatch):
    m = make("llama")
    ids = _ids(6, 9)
    kept = lm_delete.run(m, ids, kinds=["delete", "swap"], n_boot=50, batch_size=2,
                         progress=False)
    monkeypatch.setattr(lm_delete, "CACHE_BYTES", 0)
    monkeypatch.setattr(lm_delete, "GROUP", 2)
    again = lm_delete.run(m, ids, kinds=["delete", "swap"], n_boot=50, batch_size=2,
                          progress=False)
    pd.testing.assert_frame_equal(kept.drop(columns="seconds"), again.drop(columns="seconds"))


def test_smallest_clustered_p():
    for k in (4, 8, 16):
        p, p_holm = lm_delete.min_clustered_p(k, 29)
        assert p == pytest.approx(stats.chi2.sf(k, 1)) and p_holm == pytest.approx(min(1, 29 * p))
        # reached when every sequence loses the same number of correct tokens
        a = np.ones(k * 10, bool)
        b = a.copy()
        b[::10] = False
        assert mcnemar_clustered(a, b, np.repeat(np.arange(k), 10)) == pytest.approx(p)
    assert lm_delete.min_clustered_p(8, 29)[1] > 0.05  # the case: 8 sequences, 29 swaps
    assert lm_delete._sequences_needed(29) == 10
    assert lm_delete.min_clustered_p(10, 29)[1] < 0.05


def test_chunk_and_kinds():
    assert lm_delete.chunk(list(range(10)), 4, None).shape == (2, 4)
    assert lm_delete.chunk(list(range(10)), 2, 3).tolist() == [[0, 1], [2, 3], [4, 5]]
    with pytest.raises(UsageError, match="fewer than one sequence"):
        lm_delete.chunk([1, 2], 4, None)
    with pytest.raises(UsageError, match="at least 2"):
        lm_delete.chunk([1, 2], 1, None)
    assert lm_delete._with_needs(["prune"]) == ["delete", "redundancy", "prune"]
    with pytest.raises(UsageError, match="unknown condition kind"):
        lm_delete._with_needs(["bogus"])
    with pytest.raises(UsageError, match="branch"):
        lm_delete.run(make("gpt2"), _ids(), kinds=["prune"], granularity="branch")


def _synthetic(L: int = 12, k: int = 16, seed: int = 0) -> pd.DataFrame:
    """A table shaped like the experiment's: U-shaped deletion damage, cheaper swaps, BI that
    ranks the layers, windows ranked by their angular distance, k-deletion and reorderings."""
    rng = np.random.default_rng(seed)
    base = {"model": "lm", "model_sha256": "s", "text_sha256": "t", "tokens_sha256": "x",
            "seq_len": 64, "n_sequences": k, "dtype": "bf16", "granularity": "block", "seed": 0,
            "n_boot": 100, "tokens": k * 63, "sequences": k, "nll_intact": 3.0,
            "accuracy_intact": 0.4}

    def row(cond, n, i, change, **kw):
        per = change + rng.normal(0, 0.02, k)
        return {**base, "condition": cond, "n": n, "index": i, "nll_change": per.mean(),
                "nll": 3.0 + per.mean(), "perplexity": math.exp(3.0 + per.mean()), "n_layers": L,
                "accuracy_change_lo": -0.1, "accuracy_change_hi": 0.0,
                "nll_change_lo": per.mean() - 0.02, "nll_change_hi": per.mean() + 0.02,
                "seq_nll_change": " ".join(f"{v:.6g}" for v in per),
                "accuracy": 0.4 - 0.1 * min(change, 3), "accuracy_change": -0.1 * min(change, 3),
                "relative_accuracy": (0.4 - 0.1 * min(change, 3)) / 0.4,
                "mcnemar_p": 0.001 if change > 0.5 else 0.5, "layers": str(i), **kw}

    dmg = [3.0] + [0.05 + 0.01 * i for i in range(1, L - 1)] + [1.5]
    rows = [row("intact", 0, 0, 0.0)]
    rows += [row("delete", 1, i, d) for i, d in enumerate(dmg)]
    rows += [row("swap", 2, i, 0.5 * (dmg[i] + dmg[i + 1]) / 2) for i in range(L - 1)]
    rows += [{**base, "condition": "block_influence", "n": 1, "index": i, "value": d / 10}
             for i, d in enumerate(dmg)]
    for n in (2, 4):
        for lo in range(L - n + 1):
            w = sum(dmg[lo:lo + n])
            rows.append(row("window", n, lo, w))
            rows.append({**base, "condition": "angular_distance_last", "n": n, "index": lo,
                         "value": w / 100})
    for m in (3,):
        rows.append(row("prune", m, 0, 0.3, rule="lowest"))
        rows.append(row("prune", m, 1, 0.3, rule="oracle"))
        rows += [row("prune", m, j, 1.0 + j, rule="random") for j in range(2, 22)]
    rows += [row("drop", kk, s, 0.2 * kk + 0.01 * s) for kk in range(1, 6) for s in range(3)]
    rows += [row("reorder", kk, s, 0.1 * kk + 0.01 * s, kendall_tau=1 - 0.1 * kk)
             for kk in range(1, 6) for s in range(3)]
    return pd.DataFrame(rows)


def _root(tmp_path, df: pd.DataFrame):
    d = tmp_path / "results" / "lm_delete"
    d.mkdir(parents=True)
    df.to_csv(d / "results.csv", index=False)
    return tmp_path


def test_verdicts_on_a_table_where_every_claim_holds(tmp_path):
    df = _synthetic()
    bf = df[df.condition.isin(["intact", "delete"])].assign(dtype="fp32")
    bf = bf.assign(nll_change=bf.nll_change * 1.01)
    root = _root(tmp_path, pd.concat([df, bf]))
    found = {f.section: f for f in lm_delete.verdicts(root)}
    assert found["Lad et al. 2024 (layers)"].verdict == "reproduces", found[
        "Lad et al. 2024 (layers)"].ours
    assert found["Lad et al. 2024 (swaps)"].verdict == "reproduces"
    assert found["Men et al. 2024 (ShortGPT)"].verdict == "reproduces", found[
        "Men et al. 2024 (ShortGPT)"].ours
    assert found["Gromov et al. 2024"].verdict == "reproduces", found["Gromov et al. 2024"].ours
    assert found["Veit Fig. 5a (LM)"].verdict == "extension: holds"
    assert found["Veit Fig. 5b (LM)"].verdict == "extension: holds"
    assert found["Do its layers behave like an ensemble? (LM)"].verdict == "new"  # no resnet56
    assert found["Precision: bf16 against fp32"].verdict == "new: holds"
    for f in found.values():
        assert f.criterion and "\n" not in f.ours
    lines = lm_delete.section(root)
    rows = [line for line in lines if line.startswith("| ")]
    assert rows[1].startswith("| 0 | +2.9") and rows[-1].startswith("| 11 | +1.")
    assert any("in bf16." in line for line in lines)
    md = lm_delete.write_section(root).read_text()
    assert "## Findings" in md and "**reproduces**" in md and "| 11 | +1." in md


def test_verdicts_can_fail_and_refuse(tmp_path):
    df = _synthetic()
    flat = df.copy()
    dl = flat.condition == "delete"
    flat.loc[dl, "nll_change"] = 0.05  # no fragile layer
    flat.loc[dl, "seq_nll_change"] = " ".join(["0.05"] * 16)
    sw = flat.condition == "swap"
    flat.loc[sw, "nll_change"] = 1.0  # swaps dearer
    bi = flat.condition == "block_influence"
    flat.loc[bi, "value"] = np.random.default_rng(1).permutation(flat.loc[bi, "value"])
    found = {f.section: f for f in lm_delete.verdicts(_root(tmp_path, flat))}
    assert found["Lad et al. 2024 (layers)"].verdict == "partly"  # middle robust only
    assert found["Lad et al. 2024 (swaps)"].verdict == "does not reproduce"
    few = df[~((df.condition == "delete") & (df["index"] > 2))]
    (tmp_path / "b").mkdir()
    found = {f.section: f for f in lm_delete.verdicts(_root(tmp_path / "b", few))}
    assert found["Lad et al. 2024 (layers)"].verdict == "not run"
    assert lm_delete.verdicts(tmp_path / "nothing")[0].verdict == "not run"


def test_ensemble_answer_beside_resnet56(tmp_path):
    root = _root(tmp_path, _synthetic())
    d = root / "results" / "delete_block"
    d.mkdir()
    pd.DataFrame({"model": ["resnet56"] * 3 + ["vit_cifar"] * 2, "granularity": "block",
                  "downsample": [False, False, True, False, False],
                  "error_change": [0.001, 0.003, 0.2, 0.01, 0.02],
                  "intact_error": [0.07] * 3 + [0.1] * 2}).to_csv(d / "results.csv", index=False)
    f = next(f for f in lm_delete.verdicts(root) if "ensemble" in f.section)
    assert f.verdict == "new: does not hold" and "resnet56" in f.ours and "vit_cifar" in f.ours


def test_figure_draws_every_panel(tmp_path):
    from figures import plot_for
    from figures.theme import save

    fig = plot_for("lm_delete")(_synthetic(), note="synthetic")
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 6  # layers (NLL, accuracy), windows, k deleted, reorder, BI
    assert visible[0].get_yscale() == "symlog"
    paths = save(fig, tmp_path / "lm_delete")
    assert all(p.stat().st_size > 0 for p in paths)


def test_verdicts_of_the_default_run_alone(tmp_path):
    """The default command's table (deletions and swaps): Lad et al. judged, the rest not run."""
    df = _synthetic()
    df = df[df.condition.isin(["intact", "delete", "swap"])].dropna(axis=1, how="all")
    assert "value" not in df
    found = {f.section: f for f in lm_delete.verdicts(_root(tmp_path, df))}
    assert found["Lad et al. 2024 (layers)"].verdict == "reproduces"
    assert found["Men et al. 2024 (ShortGPT)"].verdict == "not run"
    assert found["Gromov et al. 2024"].verdict == "not run"
    assert "Veit Fig. 5a (LM)" not in found
