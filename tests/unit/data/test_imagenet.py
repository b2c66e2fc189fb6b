"""The ImageNet path (torchvision ResNets/VGGs on a one-split folder), offline and on the CPU.

Neither ImageNet nor torchvision's weights can be downloaded here, so a tiny synthetic
ImageNet-style ``val/`` folder (class folders of JPEGs and PNGs of different sizes, one grey, one
CMYK) stands in for the data, and randomly initialised torchvision models saved with
``torch.save`` for the weights.
"""

from __future__ import annotations

import json
import urllib.error
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from PIL import Image

from ablate import data
from ablate._infra.errors import UsageError
from ablate.delete_block import main
from ablate.models.blocks import blocks

CLASSES = ("n01440764", "n01443537", "n01484850", "n01491361")  # ImageNet wnids, sorted
# per class: (file name, (height, width), PIL mode); sizes differ within and across classes
IMAGES = (("a.JPEG", (40, 50), "RGB"), ("b.png", (64, 48), "RGB"), ("c.jpg", (45, 45), "L"))


@pytest.fixture(scope="module")
def val(tmp_path_factory) -> Path:
    """A one-split folder ``val/<wnid>/*`` of 4 classes x 3 images; one of them CMYK."""
    root = tmp_path_factory.mktemp("imagenet") / "val"
    rng = np.random.default_rng(0)
    for c in CLASSES:
        (root / c).mkdir(parents=True)
        for name, (h, w), mode in IMAGES:
            img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)
            if c == CLASSES[1] and name.endswith(".JPEG"):
                img = img.convert("CMYK")
            img.save(root / c / name, quality=90)
    (root / "LOC_val_solution.csv").write_text("not an image: ignored\n")
    return root


def _save(name: str, path: Path, num_classes: int = len(CLASSES)) -> Path:
    torch.manual_seed(0)
    net = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
    for m in net.modules():  # non-trivial BN so that deletions change the output
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def resnet18(tmp_path_factory) -> Path:
    return _save("resnet18", tmp_path_factory.mktemp("ckpt") / "resnet18.pth")


def _exit_2(args: list[str], capsys) -> str:
    """Run delete_block expecting exit status 2; the one ``error:`` line it printed."""
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """torchvision's weight download, replaced: ``fake_hub(None)`` fails like no internet,
    ``fake_hub(state_dict)`` serves that state dict. Nothing can reach the network or the cache."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    calls = []

    def install(state: dict | None) -> list:
        def fetch(url, *args, **kwargs):
            calls.append(url)
            if state is None:
                raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
            return state

        monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fetch)
        monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", fetch,
                            raising=False)
        return calls

    return install


# --- data --------------------------------------------------------------------------------------


def test_one_split_folder_mixed_sizes_resize_crop_and_cache(val, tmp_path, monkeypatch):
    from torchvision.io import ImageReadMode, decode_image, read_file
    from torchvision.transforms.v2 import functional as F

    cache = tmp_path / "cache"
    ds = data.load(val, resize=36, crop=32, cache_dir=cache)
    n = len(CLASSES) * len(IMAGES)
    assert ds.images.shape == (n, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.images.is_contiguous() and ds.classes == CLASSES
    assert ds.labels.tolist() == [0, 1, 2, 3] * 3  # interleaved across classes
    assert (ds.name, ds.split) == ("imagefolder", "test")
    # image 4 is b.png of class 0: exactly the decode, shorter side to 36, centre 32 x 32
    png = decode_image(read_file(str(val / CLASSES[0] / "b.png")), ImageReadMode.RGB)
    assert torch.equal(ds.images[4], F.center_crop(F.resize(png, [36], antialias=True), [32]))
    grey = ds.images[8]  # c.jpg of class 0 was saved grey: three equal channels
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])

    other = data.load(val, "train", resize=36, crop=32, cache_dir=cache)  # --split: not looked up
    assert other.split == "train" and torch.equal(other.images, ds.images)

    def boom(*args):
        raise AssertionError("decoded again, cache unused")

    monkeypatch.setattr(data.cache, "decode", boom)
    again = data.load(val, resize=36, crop=32, cache_dir=cache)
    assert torch.equal(again.images, ds.images) and torch.equal(again.labels, ds.labels)
    with pytest.raises(AssertionError, match="cache unused"):  # resize/crop are in the key
        data.load(val, resize=40, crop=32, cache_dir=cache)


def test_mixed_sizes_without_crop_name_the_fix(val, tmp_path):
    for kw in ({}, {"resize": 36}):
        with pytest.raises(UsageError) as e:
            data.load(val, cache_dir=tmp_path, **kw)
        msg = str(e.value)
        assert "\n" not in msg and "mixed sizes" in msg and "--resize 256 --crop 224" in msg
    with pytest.raises(UsageError, match="--crop must be a positive"):
        data.load(val, crop=0, cache_dir=tmp_path)


def test_thousand_classes_is_imagenet(tmp_path):
    rng = np.random.default_rng(1)
    for i in range(1000):
        (tmp_path / "val" / f"n{i:08d}").mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
            tmp_path / "val" / f"n{i:08d}" / "x.png")
    ds = data.load(tmp_path / "val", cache_dir=tmp_path / "cache")
    assert (ds.name, len(ds.classes), tuple(ds.images.shape)) == ("imagenet", 1000, (1000, 3, 8, 8))


# --- delete_block on torchvision models ------------------------------------------------------


def test_delete_block_resnet18(val, resnet18, tmp_path):
    out = tmp_path / "out"
    assert main(["--model", "resnet18", "--checkpoint", str(resnet18), "--data", str(val),
                 "--resize", "36", "--crop", "32", "--device", "cpu", "--out", str(out)]) == 0
    df = pd.read_csv(out / "results.csv")
    assert df.block.tolist() == list(range(8))  # torchvision resnet18: 8 basic blocks
    assert (df.n_images == 12).all() and (df.dataset == "imagefolder").all()
    assert df.downsample.sum() == 3 and df.error.between(0, 1).all()
    for f in ("delete_block.png", "delete_block.pdf", "meta.json"):
        assert (out / f).stat().st_size > 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["models"][0]["normalization"]["mean"] == list(data.IMAGENET_MEAN)


def test_delete_block_vgg11_bn_shape_preserving_units(val, tmp_path):
    ckpt = _save("vgg11_bn", tmp_path / "vgg11_bn.pth")
    out = tmp_path / "out"
    assert main(["--model", "vgg11_bn", "--checkpoint", str(ckpt), "--data", str(val),
                 "--resize", "36", "--crop", "32", "--device", "cpu", "--out", str(out),
                 "--no-figure"]) == 0
    df = pd.read_csv(out / "results.csv")
    with torch.device("meta"):  # the architecture only, without initialising 128M weights
        net = torchvision.models.vgg11_bn(num_classes=len(CLASSES))
    keep = [b.index for b in blocks(net) if not b.changes_shape]
    assert keep == [3, 5, 6, 7] and df.block.tolist() == keep and not df.downsample.any()


def test_weights_default_to_imagenet_preprocessing(val, tmp_path, fake_hub, capsys):
    calls = fake_hub(torchvision.models.resnet18().state_dict())
    err = _exit_2(["--model", "resnet18", "--weights", "IMAGENET1K_V1", "--data", str(val),
                   "--device", "cpu", "--out", str(tmp_path)], capsys)
    assert len(calls) == 1  # the pretrained weights were asked for, and served by the fake
    # 256/224 was applied by default, then the 1000-way head was refused on 4 classes
    assert "outputs 1000 classes" in err and "224x224" in err and "has 4 classes" in err


def test_imagenet_model_on_cifar_refused_before_decoding(tmp_path, fake_hub, capsys, monkeypatch):
    fake_hub(torchvision.models.resnet18().state_dict())
    monkeypatch.setattr(data, "load", lambda *a, **k: pytest.fail("decoded data that cannot fit"))
    err = _exit_2(["--model", "resnet18", "--weights", "IMAGENET1K_V1", "--device", "cpu",
                   "--out", str(tmp_path)], capsys)
    assert "outputs 1000 classes" in err and "cifar10, 32x32" in err and "10 classes" in err


# --- what a user sees when weights or data are missing ---------------------------------------


def test_weights_not_downloadable(tmp_path, fake_hub, capsys):
    calls = fake_hub(None)
    err = _exit_2(["--model", "resnet50", "--weights", "IMAGENET1K_V1", "--device", "cpu",
                   "--out", str(tmp_path)], capsys)
    assert calls and "resnet50" in err and "IMAGENET1K_V1" in err
    assert "internet" in err and "--checkpoint PATH" in err


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--model", "resnet50", "--weights", "NOPE"], ["NOPE", "IMAGENET1K_V1", "IMAGENET1K_V2"]),
        (["--model", "resnet50"], ["--weights IMAGENET1K_V1", "--checkpoint"]),
        (["--model", "resnet20", "--weights", "IMAGENET1K_V1"], ["CIFAR model"]),
        (["--model", "resnet18", "--checkpoint", "{ckpt}", "--data", "/nonexistent/val"],
         ["'/nonexistent/val' does not exist", "--data PATH"]),
        (["--model", "resnet18", "--checkpoint", "{ckpt}", "--data", "{three}", "--resize",
          "36", "--crop", "32"], ["outputs 4 classes", "has 3 classes"]),
    ],
)
def test_missing_or_mismatched_exit_2_with_one_line(tmp_path, resnet18, val, fake_hub, capsys,
                                                    args, needles):
    fake_hub(None)
    three = tmp_path / "three"
    for c in CLASSES[:3]:
        (three / c).mkdir(parents=True)
        (three / c / "b.png").write_bytes((val / c / "b.png").read_bytes())
    subs = {"{ckpt}": str(resnet18), "{three}": str(three)}
    args = [subs.get(a, a) for a in args]
    err = _exit_2([*args, "--device", "cpu", "--out", str(tmp_path / "o")], capsys)
    for needle in needles:
        assert needle in err, err
