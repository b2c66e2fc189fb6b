"""Single-layer deletions and adjacent swaps of a decoder LM: the batched LM engine against one
forward per condition, and against a hooks loop written the way TransformerLens users write it.

    OMP_NUM_THREADS=2 python benchmarks/lm_sweep.py --kinds delete --rounds 2 \\
        --out benchmarks/lm_sweep_smollm2_delete_cpu.json
    OMP_NUM_THREADS=2 python benchmarks/lm_sweep.py --kinds swap --methods naive engine \\
        engine_stacked --out benchmarks/lm_sweep_smollm2_swap_cpu.json
    python benchmarks/lm_sweep.py --model random ...   # a random Llama of SmolLM2-135M's shape

The model is ``smollm2-135m`` (30 Llama layers, loaded offline by ``ablate.load_lm``, fp32) or,
``--model random``, a random ``LlamaForCausalLM`` of its shape. The tokens are the first
``--n-seq`` sequences of ``--seq-len`` tokens of the bundled default text (random ids for the
random model), one batch. Every method produces the intact model's and every condition's
per-token outcome (NLL of the next token and the top-1 prediction, from full-vocabulary logits):

- ``naive``: one forward of the model per condition through the interventions (``delete``,
  ``reorder``), ``evaluate_lm_naive``;
- ``hooks`` (deletions only): ``run_with_hooks`` per condition as TransformerLens users write a
  zero-ablation: forward hooks on the layer's attention and MLP outputs return zeros, the model
  runs whole, the hooks are removed;
- ``engine``: ``ablate.interventions.lm_variants.evaluate_lm_variants``, one call per batch
  (its default: worker threads with one intra-op thread each; bitwise ``naive`` when
  ``engine_bitwise`` says so); ``engine_1worker``: the same on the caller's thread;
- ``engine_stacked``: the same with ``max_rows = --stack`` x the batch (streams that run the
  same layer at a position in one call: within float rounding, argmax compared).

Methods run one after another in ``--rounds`` rounds, the order alternating, in one process;
the report gives each method's total, the ratios of totals, the per-round ratios (spread), the
load average before and after, and the agreement of each method's outcomes with ``naive``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ablate._infra.io import write_json
from ablate._infra.provenance import device_name, versions
from ablate.interventions.lm_variants import evaluate_lm_naive, evaluate_lm_variants
from ablate.interventions.variants import Variant

SMOLLM2 = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
           "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
           "max_position_embeddings": 2048, "tie_word_embeddings": True, "rms_norm_eps": 1e-5,
           "rope_theta": 100000.0}


def _model(name: str, n_seq: int, seq_len: int) -> tuple[torch.nn.Module, torch.Tensor, str]:
    if name == "random":
        import transformers

        torch.manual_seed(0)
        m = transformers.LlamaForCausalLM(transformers.LlamaConfig(**SMOLLM2)).eval()
        ids = torch.randint(0, SMOLLM2["vocab_size"], (n_seq, seq_len),
                            generator=torch.Generator().manual_seed(0))
        return m, ids, "random LlamaForCausalLM of SmolLM2-135M's shape"
    from ablate.data.text import default_text
    from ablate.models.language import load_lm

    lm = load_lm(name, dtype="fp32")
    ids = lm.tokenizer.encode(default_text().text)
    ids = torch.tensor(ids[:n_seq * seq_len], dtype=torch.long).view(n_seq, seq_len)
    return lm.model.eval(), ids, f"{lm.name} ({lm.path})"


def reduce(logits: torch.Tensor, _intact: torch.Tensor, rows: slice, ids: torch.Tensor) -> dict:
    """Per-token NLL of the next token and the top-1 prediction (positions 0..T-2)."""
    lg = logits[:, :-1].float()
    return {"nll": -F.log_softmax(lg, -1).gather(-1, ids[rows, 1:, None])[..., 0],
            "top1": lg.argmax(-1)}


def run_with_hooks(model, ids: torch.Tensor, fwd_hooks) -> torch.Tensor:
    """TransformerLens's ``run_with_hooks``: add the hooks, run the model, remove the hooks."""
    handles = [module.register_forward_hook(fn) for module, fn in fwd_hooks]
    try:
        return model(input_ids=ids, use_cache=False).logits
    finally:
        for h in handles:
            h.remove()


def hooks_loop(model, ids, variants, red) -> tuple[dict, list[dict]]:
    """Zero-ablate each deleted layer's attention and MLP outputs by hooks, one run each."""
    def zero_attn(_m, _a, out):
        return (torch.zeros_like(out[0]), *out[1:])

    def zero_mlp(_m, _a, out):
        return torch.zeros_like(out)

    rows = slice(0, ids.shape[0])
    layers = model.model.layers
    with torch.inference_mode():
        intact = model(input_ids=ids, use_cache=False).logits
        outs = []
        for v in variants:
            hooks = [h for i, _ in v.gains for h in ((layers[i].self_attn, zero_attn),
                                                     (layers[i].mlp, zero_mlp))]
            outs.append(red(run_with_hooks(model, ids, hooks), intact, rows))
    return red(intact, intact, rows), outs


def profile(model, ids, red, reps: int = 5) -> dict:
    """Median seconds of one forward, one layer call, the tail (final norm and head) and the
    reduction on this batch, and what they bound: prefix sharing alone saves the layers before
    each condition's first change, never the tail (which every condition runs)."""
    from ablate.interventions.lm_variants import lm_intact_pass

    with torch.inference_mode():
        it = lm_intact_pass(model, ids)
        mid = len(it.inputs) // 2
        layer = model.model.layers[mid]
        h, (a, kw, _) = it.inputs[mid], it.calls[mid]
        parts = {"forward": lambda: model(input_ids=ids, use_cache=False),
                 "layer": lambda: layer(h, *a, **kw),
                 "tail": lambda: model.lm_head(model.model.norm(it.final)),
                 "reduce": lambda: red(it.logits, it.logits, slice(0, ids.shape[0]))}
        t: dict[str, list[float]] = {k: [] for k in parts}
        for _ in range(reps):
            for k, f in parts.items():
                t0 = time.perf_counter()
                f()
                t[k].append(time.perf_counter() - t0)
    med = {k: sorted(v)[len(v) // 2] for k, v in t.items()}
    return {f"{k}_s": round(v, 4) for k, v in med.items()} | {
        "tail_share_of_forward": round(med["tail"] / med["forward"], 3)}


def conditions(kind: str, n: int) -> list[Variant]:
    if kind == "delete":
        return [Variant.deleting(i) for i in range(n)]
    return [Variant.swapping(i, i + 1, n) for i in range(n - 1)]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="a load_lm name, or 'random'")
    p.add_argument("--kinds", nargs="+", choices=("delete", "swap"), default=["delete"])
    p.add_argument("--n-seq", type=int, default=4, help="sequences (one batch)")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--stack", type=int, default=4, help="engine_stacked: streams per call")
    p.add_argument("--methods", nargs="+", default=["naive", "engine", "hooks"],
                   choices=("naive", "engine", "engine_1worker", "engine_stacked", "hooks"))
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    model, ids, what = _model(args.model, args.n_seq, args.seq_len)
    n_layers = len(model.model.layers)
    variants = [v for k in args.kinds for v in conditions(k, n_layers)]
    b = ids.shape[0]

    def red(lg, it, rows):
        return reduce(lg, it, rows, ids)

    kw = {"reduce": red, "batch_size": b}
    methods = {
        "naive": lambda: evaluate_lm_naive(model, ids, variants, **kw),
        "engine": lambda: evaluate_lm_variants(model, ids, variants, **kw),
        "engine_1worker": lambda: evaluate_lm_variants(model, ids, variants, workers=1, **kw),
        "engine_stacked": lambda: evaluate_lm_variants(model, ids, variants,
                                                       max_rows=args.stack * b, **kw),
        "hooks": lambda: hooks_loop(model, ids, variants, red),
    }
    names = [m for m in args.methods if m != "hooks" or args.kinds == ["delete"]]
    with torch.inference_mode():  # warm-up: one forward at the timed size, and the engine
        model(input_ids=ids, use_cache=False)
        evaluate_lm_variants(model, ids, variants[-2:], **kw)
    load_before = os.getloadavg()
    times: dict[str, list[float]] = {k: [] for k in names}
    outs: dict[str, tuple] = {}
    for r in range(args.rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            outs[name] = methods[name]()
            times[name].append(time.perf_counter() - t0)
            print(f"round {r} {name} {times[name][-1]:.1f} s", file=sys.stderr, flush=True)
    load_after = os.getloadavg()
    prof = profile(model, ids, red)
    n = n_layers
    # one forward (+ reduce) per condition and the intact model, against the intact pass, the
    # layers after each condition's first change, and a tail + reduce per condition
    layers_run = sum(n - 1 - i for i in range(n)) if args.kinds == ["delete"] else None
    if layers_run is not None:
        f, lay, tl, rd = (prof[k] for k in ("forward_s", "layer_s", "tail_s", "reduce_s"))
        prof["prefix_bound"] = round((n + 1) * (f + rd) / (
            f + rd + layers_run * lay + n * (tl + rd)), 2)
    report: dict = {
        "model": what, "layers": n_layers, "kinds": args.kinds, "conditions": len(variants),
        "sequences": b, "seq_len": args.seq_len, "tokens_per_forward": b * args.seq_len,
        "dtype": str(next(model.parameters()).dtype), "device": device_name(torch.device("cpu")),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "torch": torch.__version__,
        "versions": versions(), "rounds": args.rounds, "stack": args.stack,
        "timing": "each method produces the intact model's and every condition's per-token "
                  "outcomes; methods in turn, order alternating per round; same process",
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in load_after],
        "profile": prof,
    }
    for k in names:  # (not "engine_s": figures.readme reads that as an image sweep's)
        report[f"{k}_seconds"] = round(sum(times[k]) / args.rounds, 3)
    if "naive" in names:
        ref_base, ref = outs["naive"]
        for k in names:
            if k == "naive":
                continue
            r = [a / c for a, c in zip(times["naive"], times[k])]
            report[f"{k}_speedup"] = round(sum(times["naive"]) / sum(times[k]), 2)
            report[f"{k}_speedup_per_round"] = [round(x, 2) for x in r]
            base, got = outs[k]
            report[f"{k}_bitwise"] = all(torch.equal(g["nll"], w["nll"]) for g, w in zip(
                got, ref)) and torch.equal(base["nll"], ref_base["nll"])
            report[f"{k}_max_nll_diff"] = max(float((g["nll"] - w["nll"]).abs().max())
                                              for g, w in zip(got, ref))
            report[f"{k}_top1_equal"] = all(torch.equal(g["top1"], w["top1"])
                                            for g, w in zip(got, ref))
        if "hooks" in names and "engine" in names:
            r = [a / c for a, c in zip(times["hooks"], times["engine"])]
            report["engine_vs_hooks"] = round(sum(times["hooks"]) / sum(times["engine"]), 2)
            report["engine_vs_hooks_per_round"] = [round(x, 2) for x in r]
    print(json.dumps(report, indent=2))
    if args.out:
        write_json(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
