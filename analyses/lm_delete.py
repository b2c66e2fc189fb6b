"""Lad et al. 2024 (*The Remarkable Robustness of LLMs*): delete or swap one layer of a causal LM.

Each scored token is an example with three outcomes against the intact model on the same token:
top-1 agreement with the intact prediction, accuracy on the true next token, and
KL(intact || lesioned). Per condition: the Wilson interval of the agreement, the change in
accuracy with a paired bootstrap interval that resamples whole sequences (tokens of one sequence
are not independent), McNemar's test of intact vs lesioned accuracy adjusted for that clustering
(Durkalski et al. 2003, by sequence) with Holm's correction across conditions, and the mean KL
with a sequence bootstrap. The exact per-token McNemar p is kept beside it (``mcnemar_p_token``):
it treats tokens as independent and so overstates significance.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ablate._infra.distributed import device as resolve_device
from ablate._infra.errors import UsageError
from ablate.interventions import delete, reorder
from ablate.measures.stats import (
    holm,
    mcnemar_clustered,
    mcnemar_exact,
    paired_bootstrap,
    wilson_interval,
)
from ablate.models.blocks import blocks

__all__ = ["Condition", "OUTCOMES", "chunk", "conditions", "deletion_conditions", "lm_sweep",
           "rows", "run", "swap_conditions", "token_outcomes"]

Condition = tuple[str, int | None, str, Callable[[nn.Module], contextlib.AbstractContextManager]]
OUTCOMES = ("agree", "correct", "kl")


def deletion_conditions(model: nn.Module, granularity: str = "block") -> list[Condition]:
    """One condition per block (or branch): that block deleted."""
    return [("delete", b.index, b.name,
             lambda m, i=b.index: delete(m, [i], granularity=granularity))
            for b in blocks(model, granularity)]


def swap_conditions(model: nn.Module) -> list[Condition]:
    """One condition per adjacent pair: layers i and i + 1 swapped (Lad et al.)."""
    bl = blocks(model)
    out = []
    for i in range(len(bl) - 1):
        perm = list(range(len(bl)))
        perm[i], perm[i + 1] = i + 1, i
        out.append(("swap", i, f"{bl[i].name}<->{bl[i + 1].name}",
                    lambda m, p=perm: reorder(m, p)))
    return out


def conditions(model: nn.Module, granularity: str = "block", swaps: bool = False
               ) -> list[Condition]:
    """Every single-block deletion, then (``swaps``) every adjacent swap."""
    return deletion_conditions(model, granularity) + (swap_conditions(model) if swaps else [])


def chunk(ids: Sequence[int], seq_len: int, max_sequences: int | None) -> Tensor:
    """Non-overlapping sequences of ``seq_len`` tokens (the tail that does not fill one dropped)."""
    if seq_len < 2:
        raise UsageError(f"--seq-len must be at least 2 (one scored token), not {seq_len}")
    n = len(ids) // seq_len
    if max_sequences is not None:
        n = min(n, max_sequences)
    if n == 0:
        raise UsageError(f"the text has {len(ids)} tokens: fewer than one sequence of {seq_len}")
    return torch.tensor(list(ids[:n * seq_len]), dtype=torch.long).view(n, seq_len)


def token_outcomes(logits: Tensor, intact: Tensor, labels: Tensor) -> dict[str, Tensor]:
    """Per-token agreement, correctness and KL(intact || lesioned) of [tokens, vocab] logits."""
    lp, lq = F.log_softmax(intact.float(), -1), F.log_softmax(logits.float(), -1)
    pred = logits.argmax(-1)
    return {
        "agree": pred == intact.argmax(-1),
        "correct": pred == labels,
        "kl": (lp.exp() * (lp - lq)).sum(-1).clamp_min(0.0),
    }


def _logits(model: nn.Module, ids: Tensor, mask: Tensor) -> Tensor:
    return model(input_ids=ids, attention_mask=mask, use_cache=False).logits


@torch.inference_mode()
def _per_token(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, conds: Sequence[Condition],
    batch_size: int, dev: torch.device,
) -> dict[str, np.ndarray]:
    """Outcome arrays [tokens, 1 + conditions] (column 0 intact), and ``sequence`` [tokens]."""
    acc: dict[str, list[list[Tensor]]] = {k: [[] for _ in range(len(conds) + 1)]
                                          for k in OUTCOMES}
    seqs: list[Tensor] = []
    for start in range(0, input_ids.shape[0], batch_size):
        ids = input_ids[start:start + batch_size].to(dev)
        mask = attention_mask[start:start + batch_size].to(dev)
        keep = (mask[:, :-1] * mask[:, 1:]).bool()
        labels = ids[:, 1:][keep]
        seqs.append((torch.arange(ids.shape[0], device=dev)[:, None] + start)
                    .expand_as(keep)[keep].cpu())
        intact = _logits(model, ids, mask)[:, :-1][keep]
        for c, ctx in enumerate([None, *(cond[3] for cond in conds)]):
            if ctx is None:
                lg = intact
            else:
                with ctx(model):
                    lg = _logits(model, ids, mask)[:, :-1][keep]
            for k, v in token_outcomes(lg, intact, labels).items():
                acc[k][c].append(v.cpu())
    out = {k: torch.stack([torch.cat(parts) for parts in v], 1).numpy() for k, v in acc.items()}
    out["sequence"] = torch.cat(seqs).numpy()
    return out


def rows(tokens: dict[str, np.ndarray], conds: Sequence[Condition], n_boot: int = 2000,
         seed: int = 0) -> pd.DataFrame:
    """Tidy rows, one per condition (the first is ``intact``), from ``_per_token``'s arrays."""
    seq = tokens["sequence"]
    base = tokens["correct"][:, 0]
    out = []
    labels = [("intact", None, ""), *((c[0], c[1], c[2]) for c in conds)]
    for c, (kind, idx, name) in enumerate(labels):
        agree, correct = tokens["agree"][:, c], tokens["correct"][:, c]
        kl = tokens["kl"][:, c].astype(np.float64)
        alo, ahi = wilson_interval(int(agree.sum()), int(agree.size))
        d, dlo, dhi = paired_bootstrap(base.astype(np.float64), correct.astype(np.float64),
                                       n_boot, seed=seed, clusters=seq)
        k, klo, khi = paired_bootstrap(np.zeros_like(kl), kl, n_boot, seed=seed, clusters=seq)
        out.append({
            "condition": kind, "block": idx, "name": name, "tokens": int(agree.size),
            "sequences": int(np.unique(seq).size),
            "agreement": float(agree.mean()), "agreement_lo": alo, "agreement_hi": ahi,
            "accuracy": float(correct.mean()), "accuracy_intact": float(base.mean()),
            "accuracy_change": d, "accuracy_change_lo": dlo, "accuracy_change_hi": dhi,
            "relative_accuracy": float(correct.mean() / max(base.mean(), 1e-12)),
            "mcnemar_p": mcnemar_clustered(base, correct, seq),
            "mcnemar_p_token": mcnemar_exact(torch.from_numpy(base), torch.from_numpy(correct)),
            "kl": k, "kl_lo": klo, "kl_hi": khi,
        })
    df = pd.DataFrame(out)
    df["p_holm"] = [np.nan, *holm(df["mcnemar_p"].iloc[1:].tolist())]
    return df


def lm_sweep(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    conditions: Sequence[Condition] | None = None,
    batch_size: int = 8,
    device: str | torch.device = "auto",
    n_boot: int = 2000,
    seed: int = 0,
    return_tokens: bool = False,
) -> pd.DataFrame | tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Tidy rows, one per condition (the first is ``intact``), over next-token predictions.

    ``input_ids`` [sequences, tokens]; position t is scored on token t + 1 where both are in the
    attention mask. ``conditions`` defaults to every single-layer deletion. ``return_tokens``
    also returns the per-token outcomes, arrays [tokens, 1 + conditions] (column 0 intact) named
    ``agree``, ``correct``, ``kl``, and ``sequence`` [tokens] (each token's sequence index).
    """
    dev = resolve_device(device)
    model = model.to(dev).eval()
    conds = list(conditions) if conditions is not None else deletion_conditions(model)
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    tokens = _per_token(model, input_ids, mask, conds, batch_size, dev)
    df = rows(tokens, conds, n_boot, seed)
    return (df, tokens) if return_tokens else df


def run(
    model: nn.Module, input_ids: Tensor, *, granularity: str = "block", swaps: bool = False,
    batch_size: int = 8, device: str | torch.device = "auto", n_boot: int = 2000, seed: int = 0,
) -> pd.DataFrame:
    """The Lad et al. sweep: every single-block deletion (and adjacent swap) of ``model``."""
    return lm_sweep(model, input_ids, conditions=conditions(model, granularity, swaps),
                    batch_size=batch_size, device=device, n_boot=n_boot, seed=seed)
