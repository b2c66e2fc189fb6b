"""python -m ablate.lm_delete: delete (and swap) one layer at a time in a causal LM (Lad et al.).

Paired statistics against the intact model on the same tokens (see ``analyses.lm_delete``): top-1
agreement, next-token accuracy with a sequence-bootstrap interval of its change, McNemar adjusted
for tokens clustered in sequences with Holm's correction, KL(intact || lesioned). Needs the
``transformers`` extra.

    python -m ablate.lm_delete --model gpt2 --text-file pride.txt --seq-len 128 \\
        --max-sequences 64 --swaps --out results/gpt2_lad.csv
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ablate._infra.errors import ArgumentParser, UsageError, cli_main
from analyses import lm_delete

__all__ = ["main"]

COLUMNS = ["condition", "block", "name", "agreement", "accuracy", "accuracy_change",
           "accuracy_change_lo", "accuracy_change_hi", "kl", "p_holm"]


class _Bytes:
    """A byte-level tokenizer (UTF-8 bytes as ids 0..255), for models with a 256-token vocab."""

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m ablate.lm_delete", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="HF model name or local directory (gpt2, ...)")
    p.add_argument("--tokenizer", help="HF tokenizer (default: --model), or 'bytes'")
    p.add_argument("--text-file", required=True, type=Path, help="UTF-8 text to score")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per sequence")
    p.add_argument("--max-sequences", type=int, default=64, help="sequences scored at most")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--granularity", choices=("block", "branch"), default="block",
                   help="delete whole layers or their attention/MLP branches one at a time")
    p.add_argument("--swaps", action="store_true", help="also swap each adjacent pair of layers")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--out", type=Path, help="CSV to write (default: print only)")
    return p


def _load(args: argparse.Namespace):
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:  # pragma: no cover - the extra is installed in tests
        raise UsageError("ablate.lm_delete needs transformers: pip install 'ablate[hf]'") from None
    spec = args.tokenizer or args.model
    tok = _Bytes() if spec == "bytes" else AutoTokenizer.from_pretrained(spec)
    if not args.text_file.is_file():
        raise UsageError(f"--text-file {args.text_file} does not exist")
    ids = lm_delete.chunk(tok.encode(args.text_file.read_text(encoding="utf-8")), args.seq_len,
                          args.max_sequences)
    return AutoModelForCausalLM.from_pretrained(args.model), ids


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    model, ids = _load(args)
    df = lm_delete.run(model, ids, granularity=args.granularity, swaps=args.swaps,
                       batch_size=args.batch_size, device=args.device, n_boot=args.n_boot,
                       seed=args.seed)
    with pd.option_context("display.width", 160, "display.max_rows", 500):
        print(df[COLUMNS].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(args.out, index=False)
        print(f"results: {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
