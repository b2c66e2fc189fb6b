"""python -m ablate.lm_delete on a local tiny GPT-2 directory with a byte-level tokenizer."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import transformers

from ablate import lm_delete


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=256, n_positions=64)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(root / "tiny")
    (root / "t.txt").write_text("the quick brown fox jumps over the lazy dog. " * 8)
    return root


def test_command_writes_the_table(tiny_lm, tmp_path, capsys):
    out = tmp_path / "o" / "lad.csv"
    assert lm_delete.main(["--model", str(tiny_lm / "tiny"), "--tokenizer", "bytes",
                           "--text-file", str(tiny_lm / "t.txt"), "--seq-len", "32",
                           "--max-sequences", "4", "--swaps", "--n-boot", "50",
                           "--device", "cpu", "--out", str(out)]) == 0
    df = pd.read_csv(out)
    assert df.condition.tolist() == ["intact", "delete", "delete", "swap"]
    assert (df.sequences == 4).all() and (df.tokens == 4 * 31).all()
    assert "accuracy_change" in capsys.readouterr().out


@pytest.mark.parametrize("extra, needle", [
    (["--text-file", "{missing}"], "does not exist"),
    (["--seq-len", "1000"], "fewer than one sequence"),
])
def test_bad_input_exits_2(tiny_lm, tmp_path, extra, needle, capsys):
    args = ["--model", str(tiny_lm / "tiny"), "--tokenizer", "bytes", "--text-file",
            str(tiny_lm / "t.txt"), "--device", "cpu"]
    args += [str(tmp_path / "nope.txt") if a == "{missing}" else a for a in extra]
    with pytest.raises(SystemExit) as e:
        lm_delete.main(args)
    assert e.value.code == 2 and needle in capsys.readouterr().err
