"""Path-gradient norms are accumulated in float64: a float32 norm of ~1e-24 elements (paths of
36 or more of ResNet-110's 54 blocks) squares them below float32's range and reads exactly 0."""

from __future__ import annotations

import numpy as np
import torch

from ablate.data import Dataset
from ablate.measures import paths as ps
from ablate.models import checkpoint
from analyses import paths
from tests.helpers import randomise_bn


def _tiny_gradients() -> checkpoint.Loaded:
    """resnet20 whose classifier is scaled by 1e-22: every input gradient is ~1e-24 per element,
    representable in float32, but its square is not."""
    loaded = checkpoint.load("resnet20", allow_init=True)
    randomise_bn(loaded.model)
    with torch.no_grad():
        loaded.model.linear.weight.mul_(1e-22)
    return loaded


def test_path_gradient_norms_do_not_underflow():
    loaded = _tiny_gradients()
    x, y = torch.randn(4, 3, 32, 32), torch.arange(4)
    g = ps.masked_gradients(loaded.model, x, y, ps.random_subsets(9, 3, 4,
                                                                  torch.Generator()))["input"]
    assert g.dtype == torch.float32 and (g.flatten(1).norm(dim=1) == 0).all()  # the old reading
    norms = ps.path_gradient(loaded.model, x, y, 3, 2, torch.Generator().manual_seed(0))
    assert norms["input"].dtype == torch.float64 and (norms["input"] > 0).all()
    ref = g.flatten(1).double().norm(dim=1)
    assert torch.allclose(ref, g.double().flatten(1).pow(2).sum(1).sqrt())


def test_the_analysis_reads_positive_magnitudes_with_log_scale_intervals():
    loaded = _tiny_gradients()
    g = torch.Generator().manual_seed(0)
    ds = Dataset(torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=g),
                 torch.arange(6) % 10, tuple(map(str, range(10))), "cifar10", "test", "x")
    df = paths.run(loaded, ds, ks=[0, 4, 9], samples=2, batch_size=4, progress=False)
    assert (df.value > 0).all() and (df.value < 1e-18).all()
    assert (df.low > 0).all() and (df.low < df.value).all() and (df.value < df.high).all()
    ratio = np.log(df.value / df.low) - np.log(df.high / df.value)
    assert np.allclose(ratio, 0)  # symmetric on a log scale
