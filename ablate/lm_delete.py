"""Single-layer deletion (and adjacent swap) sweep of a causal LM, with paired statistics.

Lad et al. 2024 (*The Remarkable Robustness of LLMs*) delete or swap one layer at a time and
report top-1 next-token accuracy. Here each scored token is an example with three outcomes
against the intact model on the same token: top-1 agreement with the intact prediction, accuracy
on the true next token, and KL(intact || lesioned). Per condition: the Wilson interval of the
agreement, the change in accuracy with a paired bootstrap interval that resamples whole sequences
(tokens of one sequence are not independent), McNemar's exact test of intact vs lesioned accuracy
(over tokens) with Holm's correction across conditions, and the mean KL with a sequence bootstrap.

    python -m ablate.lm_delete --model gpt2 --text-file book.txt --seq-len 128 \\
        --max-sequences 64 --swaps --out gpt2_lad.csv
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._infra.distributed import device as resolve_device
from ._infra.errors import UsageError
from .interventions import delete, reorder
from .measures.paired import holm, paired_bootstrap
from .measures.stats import mcnemar_exact, wilson_interval
from .models.blocks import blocks

__all__ = ["Condition", "deletion_conditions", "swap_conditions", "lm_sweep", "token_outcomes",
           "main"]

Condition = tuple[str, int | None, str, Callable[[nn.Module], contextlib.AbstractContextManager]]


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
    conditions = list(conditions) if conditions is not None else deletion_conditions(model)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    acc: dict[str, list[list[Tensor]]] = {k: [[] for _ in range(len(conditions) + 1)]
                                          for k in ("agree", "correct", "kl")}
    seqs: list[Tensor] = []
    for start in range(0, input_ids.shape[0], batch_size):
        ids = input_ids[start:start + batch_size].to(dev)
        mask = attention_mask[start:start + batch_size].to(dev)
        keep = (mask[:, :-1] * mask[:, 1:]).bool()
        labels = ids[:, 1:][keep]
        seqs.append((torch.arange(ids.shape[0], device=dev)[:, None] + start)
                    .expand_as(keep)[keep].cpu())
        intact = _logits(model, ids, mask)[:, :-1][keep]
        for c, ctx in enumerate([None, *(cond[3] for cond in conditions)]):
            if ctx is None:
                lg = intact
            else:
                with ctx(model):
                    lg = _logits(model, ids, mask)[:, :-1][keep]
            for k, v in token_outcomes(lg, intact, labels).items():
                acc[k][c].append(v.cpu())
    seq = torch.cat(seqs).numpy()
    cat = {k: [torch.cat(parts) for parts in v] for k, v in acc.items()}
    base = cat["correct"][0]
    rows = []
    labels = [("intact", None, ""), *((c[0], c[1], c[2]) for c in conditions)]
    for c, (kind, idx, name) in enumerate(labels):
        agree, correct, kl = cat["agree"][c], cat["correct"][c], cat["kl"][c].double().numpy()
        n = int(agree.numel())
        alo, ahi = wilson_interval(int(agree.sum()), n)
        d, dlo, dhi = paired_bootstrap(base.double().numpy(), correct.double().numpy(),
                                       n_boot, seed=seed, clusters=seq)
        k, klo, khi = paired_bootstrap(np.zeros_like(kl), kl, n_boot, seed=seed, clusters=seq)
        rows.append({
            "condition": kind, "block": idx, "name": name, "tokens": n,
            "sequences": int(np.unique(seq).size),
            "agreement": float(agree.double().mean()), "agreement_lo": alo, "agreement_hi": ahi,
            "accuracy": float(correct.double().mean()),
            "accuracy_intact": float(base.double().mean()),
            "accuracy_change": d, "accuracy_change_lo": dlo, "accuracy_change_hi": dhi,
            "relative_accuracy": float(correct.double().mean() / max(base.double().mean(), 1e-12)),
            "mcnemar_p": mcnemar_exact(base, correct), "kl": k, "kl_lo": klo, "kl_hi": khi,
        })
    df = pd.DataFrame(rows)
    df["p_holm"] = [np.nan, *holm(df["mcnemar_p"].iloc[1:].tolist())]
    if not return_tokens:
        return df
    tokens = {k: torch.stack(v, 1).numpy() for k, v in cat.items()}
    tokens["sequence"] = seq
    return df, tokens


# ---------------------------------------------------------------------------------------------
# Command line.


class _Bytes:
    """A byte-level tokenizer (UTF-8 bytes as ids 0..255), for models with a 256-token vocab."""

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))


def _tokenizer(spec: str):
    if spec == "bytes":
        return _Bytes()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(spec)


def chunk(ids: Sequence[int], seq_len: int, max_sequences: int | None) -> Tensor:
    """Non-overlapping sequences of ``seq_len`` tokens (the tail that does not fill one dropped)."""
    n = len(ids) // seq_len
    if max_sequences is not None:
        n = min(n, max_sequences)
    if n == 0:
        raise UsageError(f"the text has {len(ids)} tokens: fewer than one sequence of {seq_len}")
    return torch.tensor(list(ids[:n * seq_len]), dtype=torch.long).view(n, seq_len)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ablate.lm_delete",
        description="Delete (and swap) one layer at a time in a causal LM; paired statistics "
                    "against the intact model on the same tokens (Lad et al. 2024).")
    p.add_argument("--model", required=True, help="HF model name or local directory (gpt2, ...)")
    p.add_argument("--tokenizer", help="HF tokenizer (default: --model), or 'bytes'")
    p.add_argument("--text-file", required=True, type=Path, help="UTF-8 text to score")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--max-sequences", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--granularity", choices=("block", "branch"), default="block")
    p.add_argument("--swaps", action="store_true", help="also swap each adjacent pair of layers")
    p.add_argument("--device", default="auto")
    p.add_argument("--n-boot", type=int, default=2000)
    p.add_argument("--out", type=Path, help="CSV to write (default: print only)")
    return p


def main(argv: Sequence[str] | None = None) -> pd.DataFrame:
    args = _parser().parse_args(argv)
    try:
        from transformers import AutoModelForCausalLM
    except ImportError as e:  # pragma: no cover - the extra is installed in tests
        raise SystemExit("ablate.lm_delete needs transformers: pip install 'ablate[hf]'") from e
    try:
        tok = _tokenizer(args.tokenizer or args.model)
        ids = chunk(tok.encode(args.text_file.read_text(encoding="utf-8")), args.seq_len,
                    args.max_sequences)
        model = AutoModelForCausalLM.from_pretrained(args.model)
        conds = deletion_conditions(model, args.granularity)
        if args.swaps:
            conds += swap_conditions(model)
        df = lm_sweep(model, ids, conditions=conds, batch_size=args.batch_size,
                      device=args.device, n_boot=args.n_boot)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from e
    cols = ["condition", "block", "name", "agreement", "accuracy", "accuracy_change",
            "accuracy_change_lo", "accuracy_change_hi", "kl", "p_holm"]
    with pd.option_context("display.width", 160, "display.max_rows", 500):
        print(df[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(args.out, index=False)
    return df


if __name__ == "__main__":
    main()
