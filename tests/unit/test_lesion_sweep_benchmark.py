"""benchmarks/lesion_sweep.py in one run on a tiny net: engine vs naive, and the bf16 check."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "lesion_sweep.py"


def test_one_run_reports_ratio_agreement_and_bf16(tmp_path, cifar_batches, tiny_checkpoints):
    spec = importlib.util.spec_from_file_location("lesion_sweep", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "r.json"
    assert bench.main(["--model", "resnet20", "--checkpoint", str(tiny_checkpoints["resnet20"]),
                       "--data", str(cifar_batches), "--n-images", "12", "--batch-size", "6",
                       "--device", "cpu", "--amp", "bf16", "--profile", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["deletions"] == 9 and r["n_images"] == 12 and r["errors_agree"] is True
    assert r["speedup"] > 0 and r["engine_s"] > 0 and r["naive_s"] > 0
    # the opt-in bf16 engine beside the fp32 one: how many error counts it changes
    assert {"bf16_native", "bf16_deletions_with_changed_count", "bf16_error_count_max_diff",
            "bf16_bitwise", "engine_bf16_s"} <= set(r)
    assert r["bf16_deletions_with_changed_count"] <= r["deletions"]
    # where the time goes: op kinds (shares of one batch's CPU time), oneDNN kernels and reorders
    prof = r["profile"]
    assert abs(sum(prof["op_share_of_cpu_time_one_worker"].values()) - 1) < 0.01
    assert prof["op_share_of_cpu_time_one_worker"]["convolution"] > 0
    assert prof["onednn_seconds"]["convolution"] > 0
    assert 0 <= prof["reorder_share_of_convolution_calls"] < 1
    assert prof["convolution_kernel_gflops_per_thread"] > 0
    assert r["nominal_peak"]["vector_bits"] in (128, 256, 512)
