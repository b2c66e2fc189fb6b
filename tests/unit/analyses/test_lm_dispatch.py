"""The LM sweep on a model dispatched by accelerate with layers offloaded to disk (how a model
too large for one device runs): the same rows as the model in memory, and weights unchanged."""

from __future__ import annotations

import copy
import hashlib

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from ablate.models.language import load_lm  # noqa: E402
from analyses import lm_delete  # noqa: E402

DEVICE_MAP = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
              "model.layers.2": "disk", "model.layers.3": "cpu", "model.norm": "cpu",
              "model.rotary_emb": "cpu", "lm_head": "cpu"}


def _files(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_dispatched_with_disk_offload_gives_the_same_rows(tmp_path):
    cfg = transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2,
        num_key_value_heads=1, vocab_size=64, max_position_embeddings=64, bos_token_id=None,
        eos_token_id=None)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(tmp_path / "model")
    ids = torch.randint(0, 64, (6, 12), generator=torch.Generator().manual_seed(1))

    plain = load_lm(tmp_path / "model", tokenizer=False)
    off = tmp_path / "offload"
    spread = load_lm(tmp_path / "model", tokenizer=False, device_map=DEVICE_MAP,
                     offload_folder=off)
    assert spread.model.hf_device_map == DEVICE_MAP and spread.tokenizer is None
    assert spread.model.model.layers[1].self_attn.q_proj.weight.device.type == "meta"
    before = copy.deepcopy(plain.model.state_dict())
    in_memory = {k: v.clone() for k, v in spread.model.state_dict().items()
                 if v.device.type != "meta"}
    # the disk-offloaded layers are read from the model's safetensors (or the offload folder)
    on_disk = {**_files(tmp_path / "model"), **_files(off)}
    assert "model.safetensors" in on_disk

    kw = {"kinds": ["delete", "swap", "window", "redundancy", "drop"], "windows": [2, 3],
          "max_k": 2, "samples": 2, "n_boot": 50, "batch_size": 4, "progress": False}
    a = lm_delete.run(plain, ids, **kw)
    b = lm_delete.run(spread, ids, **kw)
    # intact, 4 deletions, 3 swaps, 3 + 2 windows, 2 x (4 + 4 + 3 + 2) measures, 4 sets
    assert a.condition.tolist() == b.condition.tolist() and len(a) == 1 + 4 + 3 + 5 + 26 + 4
    np.testing.assert_allclose(a.nll, b.nll, atol=1e-5)  # NaN on the measure rows of both
    np.testing.assert_allclose(a.kl, b.kl, atol=1e-5)
    np.testing.assert_array_equal(a.accuracy, b.accuracy)
    np.testing.assert_array_equal(a.agreement, b.agreement)
    m = a.value.notna()
    np.testing.assert_allclose(a.value[m], b.value[m], atol=1e-6)

    # every weight as it was: in memory, on the execution device, and on disk
    after = plain.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    now = spread.model.state_dict()
    assert all(torch.equal(v, now[k]) for k, v in in_memory.items())
    assert {**_files(tmp_path / "model"), **_files(off)} == on_disk
    assert not any(isinstance(x, lm_delete._Replay) or getattr(x, "is_intervention", False)
                   for x in spread.model.modules())
