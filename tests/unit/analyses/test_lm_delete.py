"""The LM deletion sweep (analyses.lm_delete) on a tiny random GPT-2: conditions, per-token
outcomes equal to the intervened model's, paired statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ablate._infra.errors import UsageError
from ablate.interventions import delete
from ablate.measures.stats import holm, mcnemar_clustered
from analyses import lm_delete
from tests.unit.models.test_transformers import inputs, make


def test_lm_sweep_rows_and_tokens():
    model = make("gpt2")
    ids = inputs("gpt2").repeat(2, 1)
    df, tok = lm_delete.lm_sweep(model, ids, batch_size=3, n_boot=100, device="cpu",
                                 conditions=lm_delete.conditions(model, swaps=True),
                                 return_tokens=True)
    assert list(df.condition) == ["intact"] + ["delete"] * 3 + ["swap"] * 2
    assert df.agreement.iloc[0] == 1.0 and df.kl.iloc[0] == 0.0
    assert tok["kl"].shape == (4 * 5, 6) and (df.kl.iloc[1:] > 0).all()
    assert df.p_holm.iloc[1:].between(0, 1).all()
    # Holm over the sequence-clustered McNemar p (tokens of a sequence are not independent)
    assert np.allclose(df.p_holm.iloc[1:], holm(df.mcnemar_p.iloc[1:].tolist()))
    assert np.allclose(df.mcnemar_p.iloc[1:], [mcnemar_clustered(
        tok["correct"][:, 0], tok["correct"][:, c], tok["sequence"]) for c in range(1, 6)])
    assert df.mcnemar_p_token.iloc[1:].between(0, 1).all()
    # the deletion equals the zeroed-layer model token by token
    with delete(model, [1]), torch.no_grad():
        want = model(ids, use_cache=False).logits[:, :-1].argmax(-1).flatten()
    assert np.array_equal(tok["correct"][:, 2], (want == ids[:, 1:].flatten()).numpy())
    # run() is the same sweep, and rows() recomputes the table from the tokens alone
    again = lm_delete.run(model, ids, swaps=True, batch_size=3, n_boot=100, device="cpu")
    assert again.equals(df)
    conds = lm_delete.conditions(model, swaps=True)
    assert lm_delete.rows(tok, conds, n_boot=100).equals(df)


def test_branch_conditions_and_chunk():
    model = make("gpt2")
    names = [c[2] for c in lm_delete.conditions(model, "branch")]
    assert names[:2] == ["transformer.h.0.attn", "transformer.h.0.mlp"] and len(names) == 6
    assert lm_delete.chunk(list(range(10)), 4, None).shape == (2, 4)
    assert lm_delete.chunk(list(range(10)), 2, 3).tolist() == [[0, 1], [2, 3], [4, 5]]
    with pytest.raises(UsageError, match="fewer than one sequence"):
        lm_delete.chunk([1, 2], 4, None)
