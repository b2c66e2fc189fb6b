"""Provenance strings that land in every meta.json and card."""

from __future__ import annotations

import torch

from ablate._infra.provenance import device_name


def test_cpu_device_names_the_chip_and_counts_threads_in_english():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = device_name("cpu")
        torch.set_num_threads(2)
        two = device_name("cpu")
    finally:
        torch.set_num_threads(before)
    assert one.startswith("cpu (") and one.endswith(", 1 thread)")
    assert two.endswith(", 2 threads)")
