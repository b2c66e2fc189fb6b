"""The trainer's precision choice by processor feature, and the per-epoch record of it."""

from __future__ import annotations

import torch

from ablate.training import precision


def test_cpu_choice_follows_native_bf16(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    p = precision.choose(cpu, None, None)
    assert (p.amp, p.channels_last) == (True, True) and "native bf16" in p.why
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    p = precision.choose(cpu, None, None)
    assert (p.amp, p.channels_last) == (False, True) and "no native bf16" in p.why


def test_transformers_default_to_nchw_convnets_to_channels_last(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    p = precision.choose(torch.device("cpu"), None, None, convolutional=False)
    assert (p.amp, p.channels_last) == (True, False) and "NCHW" in p.why
    assert precision.choose(torch.device("cuda"), None, None, convolutional=False).amp
    assert not precision.choose(torch.device("cuda"), None, None, convolutional=False).channels_last
    assert precision.choose(torch.device("cpu"), None, True, convolutional=False).channels_last


def test_flags_override_and_say_so(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    p = precision.choose(torch.device("cpu"), "bf16", False)
    assert (p.amp, p.channels_last) == (True, False) and "as asked" in p.why
    assert precision.choose(torch.device("cuda"), None, None).amp


def test_ranges_group_consecutive_epochs_and_mark_old_rows():
    log = [{"epoch": 1}, {"epoch": 2}]
    log += [{"epoch": e, "amp": "off", "channels_last": True, "device": "Xeon"} for e in (3, 4)]
    log += [{"epoch": 5, "amp": "bf16", "channels_last": True, "device": "EPYC"}]
    r = precision.ranges(log)
    assert [x["epochs"] for x in r] == ["1-2", "3-4", "5-5"]
    assert r[0]["amp"] == "not recorded" and r[1]["device"] == "Xeon" and r[2]["amp"] == "bf16"
    assert "attention" not in r[0]  # a log that never recorded the kernel
    log += [{"epoch": 6, "amp": "bf16", "channels_last": True, "device": "EPYC",
             "attention": "math"}]
    r = precision.ranges(log)
    assert [(x["epochs"], x["attention"]) for x in r][-2:] == [("5-5", "not recorded"),
                                                                 ("6-6", "math")]


def test_transformers_on_cpu_train_under_the_math_attention_kernel():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert precision.choose(cpu, None, None, convolutional=False).math_attention
    assert not precision.choose(cpu, None, None).math_attention
    assert not precision.choose(cuda, None, None, convolutional=False).math_attention
    q = torch.randn(2, 2, 5, 4, requires_grad=True)
    with precision.attention_kernel(True):
        out = torch.nn.functional.scaled_dot_product_attention(q, q, q)
    ref = torch.softmax(q @ q.transpose(-1, -2) / 2, -1) @ q
    torch.testing.assert_close(out, ref)
