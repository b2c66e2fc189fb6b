"""Shared fixtures: tiny data and tiny checkpoints, made fresh for each test session."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from ablate import models
from ablate.models import checkpoint

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """One intra-op thread: on a shared 2-core machine OpenMP's spinning threads otherwise
    contend with other processes and run many times slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    """Keep every decoded-data cache inside the test's temporary folder, and let no test see
    the checkpoints the package ships: tests make their own."""
    monkeypatch.setenv("ABLATE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    empty = tmp_path_factory.getbasetemp() / "no-checkpoints"
    empty.mkdir(exist_ok=True)
    monkeypatch.setenv("ABLATE_CHECKPOINTS", str(empty))


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Tests never touch the network: only file:// URLs open."""
    import urllib.request

    real = urllib.request.urlopen

    def local_only(url, *args, **kwargs):
        if not str(getattr(url, "full_url", url)).startswith("file:"):
            raise OSError(f"tests do not use the network ({url})")
        return real(url, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", local_only)


@pytest.fixture(autouse=True)
def _fp32_training(monkeypatch):
    """Train in fp32 whatever this CPU offers, so results do not depend on the machine; the
    precision choice itself is tested with this patched both ways."""
    from ablate.training import precision

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)


def _images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, n)


@pytest.fixture(scope="session")
def cifar_batches(tmp_path_factory) -> Path:
    """A directory in the CIFAR-10 python-batches format with 5 x 8 train and 30 test images."""
    root = tmp_path_factory.mktemp("batches")
    for name, seed, n in [*((f"data_batch_{i}", i, 8) for i in range(1, 6)), ("test_batch", 9, 30)]:
        x, y = _images(n, seed)
        with open(root / name, "wb") as f:
            pickle.dump({b"data": x.reshape(n, -1), b"labels": y.tolist()}, f)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in CLASSES]}, f)
    return root


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """An ImageFolder tree of PNGs: train/<class>/*.png and test/<class>/*.png, 3 per class."""
    from torchvision.io import write_png

    root = tmp_path_factory.mktemp("folder")
    x, _ = _images(60, 3)
    for split, off in (("train", 0), ("test", 30)):
        for c, cls in enumerate(CLASSES):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(3):
                write_png(torch.from_numpy(x[off + 3 * c + i]), str(d / f"{i:04d}.png"))
    return root


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Randomly initialised resnet20 and plain20 saved as ablate checkpoints with cards."""
    root = tmp_path_factory.mktemp("ckpt")
    out = {}
    for name in ("resnet20", "plain20"):
        torch.manual_seed(0)
        net = models.create(name)
        for m in net.modules():  # non-trivial BN so deletions change the output
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
        out[name] = checkpoint.save(net, root / name, {
            "arch": name, "arch_kwargs": {}, "dataset": "synthetic",
            "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3},
        })
    return out
