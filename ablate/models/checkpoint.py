"""Checkpoints: load trained networks safely, save our own with a JSON card.

Formats read (a checkpoint is untrusted input: never unpickled beyond tensors):
- ours: ``NAME.safetensors`` weights with a ``NAME.json`` card beside them (architecture, data
  set, normalisation, recipe, results, provenance);
- the de-facto standard PyTorch CIFAR format (akamaster/pytorch_resnet_cifar10): a dict with
  ``state_dict`` (keys may carry DataParallel's ``module.`` prefix) and ``best_prec1``, trained
  with ImageNet mean/std normalisation; read with ``torch.load(weights_only=True)``;
- a bare state dict (``.pt``/``.pth``), assumed to use CIFAR-10 normalisation.
Bundled checkpoints live in ``ablate/checkpoints`` and are found by name.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ablate import models
from ablate._infra.errors import UsageError
from ablate._infra.io import atomic_write, sha256_file, write_json
from ablate.data import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD
from ablate.models import weights as published

__all__ = [
    "Loaded", "load", "save", "bundled", "bundled_dir", "bundled_names", "CARD_FORMAT",
]

CARD_FORMAT = "ablate-checkpoint/1"
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "checkpoints"


def bundled_dir() -> Path:
    """Where named checkpoints live: ``$ABLATE_CHECKPOINTS`` if set, else the shipped ones."""
    env = os.environ.get("ABLATE_CHECKPOINTS")
    return Path(env) if env else BUNDLED_DIR


@dataclass
class Loaded:
    """A network ready to evaluate, with what is known about where it came from."""

    model: nn.Module
    name: str  # display name: the checkpoint's name or the architecture
    arch: str  # registry name
    path: str | None  # checkpoint file, None for fresh or torchvision weights
    sha256: str | None
    format: str  # "ablate" | "standard" | "state_dict" | "torchvision" | "init"
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dataset: str | None  # what it was trained on, if known
    card: dict = field(default_factory=dict)

    @property
    def source(self) -> str:
        """Who made the weights: a published repository, ablate's trainer, torchvision, ..."""
        origin = self.card.get("weights")
        if isinstance(origin, dict) and origin.get("source"):
            return f"{origin['source']}@{origin.get('commit', '?')}"
        if self.format == "ablate":
            return str(self.card.get("trained_by", "ablate.train"))
        if self.format == "torchvision":
            return f"torchvision {self.card.get('weights')}"
        return "fresh initialisation" if self.format == "init" else f"unknown ({self.format} file)"

    def provenance(self) -> dict:
        return {
            "model": self.name, "arch": self.arch, "weights_source": self.source,
            "checkpoint": self.path,
            "checkpoint_sha256": self.sha256, "checkpoint_format": self.format,
            "trained_on": self.dataset, "normalization": {"mean": self.mean, "std": self.std},
        }


def bundled_names() -> list[str]:
    return sorted(p.stem for p in bundled_dir().glob("*.safetensors"))


def bundled(name: str) -> Path | None:
    """The bundled checkpoint called ``name`` (e.g. ``resnet110`` or ``resnet110-sd``), if any."""
    p = bundled_dir() / f"{name}.safetensors"
    return p if p.exists() else None


def save(model: nn.Module, path: str | Path, card: dict) -> Path:
    """Write ``PATH.safetensors`` and ``PATH.json`` atomically; the card gets the weights' hash.

    ``card`` needs at least ``arch``; ``arch_kwargs``, ``dataset`` and ``normalization`` are
    what ``load`` uses to rebuild the network.
    """
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    weights = stem.with_name(stem.name + ".safetensors")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(weights, lambda p: save_file(state, str(p)))
    digest = sha256_file(weights)
    card = {"format": CARD_FORMAT, "name": stem.name, **card, "weights_sha256": digest}
    write_json(stem.with_name(stem.name + ".json"), card)
    return weights


def load(
    model: str | None = None,
    checkpoint: str | Path | None = None,
    *,
    device: str | torch.device = "cpu",
    weights: str | None = None,
    allow_init: bool = False,
) -> Loaded:
    """Load a trained network.

    ``model`` is a registry name or a bundled checkpoint name; ``checkpoint`` a file in any
    format above (its card names the architecture, so ``model`` may then be None). Without a
    checkpoint, the bundled one called ``model`` is used; ``weights`` selects torchvision's
    pretrained weights; ``allow_init`` permits a freshly initialised network.
    """
    if checkpoint is None and model is not None and weights is None:
        checkpoint = bundled(model) or _published(model)
    if checkpoint is not None:
        loaded = _load_file(Path(checkpoint), model)
    elif model is None:
        raise UsageError("name a model (--model NAME) or a checkpoint (--checkpoint PATH)")
    elif weights is not None:
        models.check_name(model)
        net = models.create(model, weights=weights)
        loaded = Loaded(net, model, model, None, None, "torchvision", IMAGENET_MEAN, IMAGENET_STD,
                        "imagenet", {"weights": weights})
    elif allow_init:
        net = models.create(model)
        mean, std = (CIFAR10_MEAN, CIFAR10_STD) if models.is_cifar(model) else (
            IMAGENET_MEAN, IMAGENET_STD)
        loaded = Loaded(net, model, model, None, None, "init", mean, std, None, {})
    else:
        models.check_name(model)
        if not models.is_cifar(model):
            raise UsageError(
                f"no trained checkpoint chosen for {model} (a torchvision ImageNet model): pass "
                "--weights IMAGENET1K_V1 (torchvision's pretrained weights) or --checkpoint PATH"
            )
        have = ", ".join(bundled_names()) or "none yet"
        raise UsageError(
            f"no trained checkpoint is bundled for {model} (bundled: {have}): pass --checkpoint "
            f"PATH (ablate .safetensors or a standard pytorch_resnet_cifar10 .th file), or train "
            f"one with python -m ablate.train --model {model}"
        )
    loaded.model.to(device).eval()
    return loaded


def cache_dir() -> Path:
    return Path(os.environ.get("ABLATE_CACHE") or Path.home() / ".cache" / "ablate")


def _published(name: str) -> Path | None:
    """A registry entry that is not bundled: download, verify, convert once into the cache."""
    w = published.get(name)
    if w is None or w.bundled:
        return None
    converted = cache_dir() / "weights" / f"{w.name}.safetensors"
    if converted.is_file():
        return converted
    print(f"downloading {w.name} from {w.url}", file=sys.stderr)
    original = published.download(w, cache_dir())
    net = models.create(w.arch)
    _fit(net, published.original_state(w, original), w.arch, original)
    return save(net, converted, {**w.card(), "test_error": None if w.measured_error is None
                                 else w.measured_error / 100})


def _load_file(path: Path, model: str | None) -> Loaded:
    if path.suffix == ".json":
        path = path.with_suffix(".safetensors")
    if path.is_dir():
        raise UsageError(f"--checkpoint {path} is a folder: pass the checkpoint file in it "
                         "(.safetensors, .th, .pt)")
    if not path.exists():
        raise UsageError(f"checkpoint {path} does not exist: check the path")
    digest = sha256_file(path)
    if path.suffix == ".safetensors":
        loaded = _load_safetensors(path, model, digest)
    else:
        loaded = _load_torch(path, model, digest)
    _check_family(loaded, _origin_family(loaded.card, digest), path)
    return loaded


def _read_card(card_path: Path) -> dict:
    """The JSON card beside a .safetensors file ({} when there is none); a broken one is a
    UsageError."""
    if not card_path.exists():
        return {}
    try:
        card = json.loads(card_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UsageError(f"card {card_path} is not readable JSON ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:80]}): repair it or remove it") from None
    if not isinstance(card, dict):
        raise UsageError(f"card {card_path} holds a JSON {type(card).__name__}, not an object "
                         "with 'arch': repair it or remove it")
    for field_name, kind in (("arch_kwargs", dict), ("normalization", dict), ("arch", str),
                             ("name", str)):
        if field_name in card and not isinstance(card[field_name], kind):
            raise UsageError(f"card {card_path}: '{field_name}' must be a JSON "
                             f"{'object' if kind is dict else 'string'}: repair the card")
    return card


def _load_safetensors(path: Path, model: str | None, digest: str) -> Loaded:
    card_path = path.with_suffix(".json")
    card = _read_card(card_path)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        msg = f"checkpoint {path} is not a readable safetensors file ({e})"
        raise UsageError(msg) from None
    arch = card.get("arch") or model
    if arch is None:
        raise UsageError(f"{path} has no card ({card_path.name}): name its model with --model")
    if model is not None and models.check_name(arch) and model not in (arch, card.get("name"),
                                                                         path.stem):
        models.check_name(model)
        raise UsageError(
            f"checkpoint {path.name} is a {arch}, not a {model}: pass --model {arch} or "
            "leave --model out"
        )
    norm = card.get("normalization", {})
    mean = tuple(norm.get("mean", CIFAR10_MEAN))
    std = tuple(norm.get("std", CIFAR10_STD))
    net = _build(arch, card.get("arch_kwargs", {}), path)
    _fit(net, state, arch, path)
    name = card.get("name", path.stem)
    return Loaded(net, name, arch, str(path), digest, "ablate", mean, std, card.get("dataset"),
                  card)


def _load_torch(path: Path, model: str | None, digest: str) -> Loaded:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        msg = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise UsageError(
            f"checkpoint {path} could not be read safely ({msg}); only tensor checkpoints "
            "(torch.save of a state dict) and .safetensors files are accepted"
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        fmt, state, mean, std = "standard", obj["state_dict"], IMAGENET_MEAN, IMAGENET_STD
        card = {k: _plain(v) for k, v in obj.items() if k != "state_dict"}
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        fmt, state, mean, std, card = "state_dict", obj, CIFAR10_MEAN, CIFAR10_STD, {}
        assumed = "CIFAR-10" if model is None or models.is_cifar(model) else "ImageNet"
        print(f"note: {path.name} is a bare state dict; assuming {assumed} normalisation",
              file=sys.stderr)
    else:
        raise UsageError(
            f"checkpoint {path} holds neither a state dict nor a dict with 'state_dict': "
            "not a model checkpoint"
        )
    state = {re.sub(r"^module\.", "", k): v for k, v in state.items()}
    arch = model or _guess_arch(state)
    if arch is None:
        raise UsageError(f"cannot tell which model {path.name} is: name it with --model")
    kwargs = {}
    if models.check_name(arch) and not models.is_cifar(arch):  # torchvision: size the head
        head = state.get("fc.weight", state.get("classifier.6.weight"))
        kwargs = {"num_classes": int(head.shape[0])} if head is not None else {}
        if fmt == "state_dict":
            mean, std = IMAGENET_MEAN, IMAGENET_STD
    net = _build(arch, kwargs, path)
    _fit(net, state, arch, path)
    return Loaded(net, arch, arch, str(path), digest, fmt, mean, std, None, card)


_SHARED_KEYS = ("resnet", "plain")  # option-A ResNets and plain nets have identical state keys


def _origin_family(card: dict, digest: str) -> str | None:
    """What the weights were trained as, where something says so: the card's ``family``, or
    the published weights registry matching the file's sha256."""
    if card.get("family"):
        return str(card["family"])
    for w in published.WEIGHTS.values():
        if digest.startswith(w.sha256) and len(w.sha256) == 64:
            return w.family
    return None


def _check_family(loaded: Loaded, origin: str | None, path: Path) -> None:
    """Refuse ResNet weights in a plain net (or the reverse): same keys, chance-level error.
    Where nothing says the family, warn loudly."""
    if not models.is_cifar(loaded.arch):
        return
    family = models.family(loaded.arch, None, default="resnet")
    if family not in _SHARED_KEYS:
        return
    if origin is None:
        if loaded.format != "ablate" or not loaded.card.get("arch"):
            print(f"WARNING: nothing says whether {path.name} holds ResNet or plain-net weights "
                  f"(no card with 'family'); loading it as {loaded.arch} ({family}). ResNet and "
                  "plain nets share every key: the wrong one gives near-chance error",
                  file=sys.stderr)
        return
    origin = "resnet" if origin == "stochastic_depth" else origin
    if origin in _SHARED_KEYS and origin != family:
        other = loaded.arch.replace(family, origin, 1)
        raise UsageError(f"checkpoint {path.name} holds {origin} weights but --model "
                         f"{loaded.arch} is a {family} net: pass --model {other}")


def _plain(v: object) -> object:
    return v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v


def _build(arch: str, kwargs: dict, path: Path) -> nn.Module:
    models.check_name(arch)
    try:
        return models.create(arch, **kwargs)
    except (TypeError, ValueError) as e:
        msg = f"the card of {path.name} has arguments {arch} does not take: {e}"
        raise UsageError(msg) from None


def _guess_arch(state: dict) -> str | None:
    """A CIFAR architecture from state-dict keys: depth 6n + 2 from the blocks of layer1."""
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"layer1\.(\d+)\.", k))}
    if not blocks or "layer4.0.conv1.weight" in state:
        return None
    n = max(blocks) + 1
    if "bn.weight" in state and "bn1.weight" not in state:
        return f"preact_resnet{6 * n + 2}"
    # Option-A ResNets and plain nets have the same keys: the guess is the ResNet, and
    # --model plainN says otherwise.
    return f"resnet{6 * n + 2}"


def _fit(net: nn.Module, state: dict, arch: str, path: Path) -> None:
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError:
        own = net.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        shape = [k for k in own if k in state and own[k].shape != state[k].shape]
        guess = _guess_arch({re.sub(r"^module\.", "", k): v for k, v in state.items()})
        hint = f"it looks like a {guess}: pass --model {guess}" if guess and guess != arch else (
            "pass the --model it was trained as")
        detail = "; ".join(
            f"{label} {len(ks)} keys (e.g. {ks[0]})"
            for label, ks in (("missing", missing), ("unexpected", unexpected),
                              ("wrong shape for", shape)) if ks
        )
        raise UsageError(f"checkpoint {path.name} does not fit {arch} ({detail}); {hint}") from None
