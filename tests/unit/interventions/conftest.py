"""Fixtures shared by the intervention tests."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import small_vgg


@pytest.fixture(scope="module")
def vggs():
    torch.manual_seed(0)
    return {n: small_vgg(n) for n in ("vgg11", "vgg11_bn")}

