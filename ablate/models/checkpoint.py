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
import math
import os
import re
import shutil
import stat
import sys
import tempfile
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
# A name from a file is data: it becomes a folder name (runs/<command>/<name>), so only plain
# names, never a path ('/tmp/x', '../../x') or a hidden or parent folder ('.', '..', '.x').
NAME_PATTERN = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,99}")
NAME_RULE = "a plain name: letters, digits and . _ + - (at most 100, not starting with '.')"
MAX_CARD_BYTES = 1 << 20  # a card is a few kB; more is not a card
MAX_NUM_CLASSES = 100_000


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
    """A registry entry that is not bundled: download, verify, convert once into the cache.

    The conversion is atomic: weights and card are written into a temporary folder that is
    renamed into place (``<cache>/weights/<name>/``) only once both are complete, under a lock,
    so a crash or a concurrent first user never leaves weights without their card."""
    w = published.get(name)
    if w is None or w.bundled:
        return None
    folder = cache_dir() / "weights" / w.name
    converted = folder / f"{w.name}.safetensors"
    if _complete(converted):
        return converted
    with published.locked(folder.with_name(f".{w.name}.lock")):
        if _complete(converted):  # another process converted it while we waited
            return converted
        print(f"downloading {w.name} from {w.url}", file=sys.stderr)
        original = published.download(w, cache_dir())
        verified = published.verify(w, original)  # the full sha256 of what was checked
        if verified is None:
            raise UsageError(f"{original} changed after it was verified: delete it and retry")
        net = models.create(w.arch)
        _fit(net, published.original_state(w, original), w.arch, original)
        card = {**w.card(), "test_error": None if w.measured_error is None
                else w.measured_error / 100}
        card["weights"]["verified_sha256"] = verified
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{w.name}.", suffix=".part"))
        try:
            save(net, tmp / converted.name, card)
            if folder.exists():  # a half-finished or foreign folder (an older crash): replace it
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return converted


def _complete(converted: Path) -> bool:
    """A converted cache entry with both weights and card (a half-finished one is redone)."""
    return converted.is_file() and converted.with_suffix(".json").is_file()


def _load_file(path: Path, model: str | None) -> Loaded:
    if path.suffix == ".json":
        path = path.with_suffix(".safetensors")
    if path.is_dir():
        raise UsageError(f"--checkpoint {path} is a folder: pass the checkpoint file in it "
                         "(.safetensors, .th, .pt)")
    _regular_file(path, "checkpoint")
    digest = sha256_file(path)
    if path.suffix == ".safetensors":
        loaded = _load_safetensors(path, model, digest)
    else:
        loaded = _load_torch(path, model, digest)
    _check_family(loaded, _origin_family(loaded.card, digest), path)
    return loaded


def _regular_file(path: Path, what: str) -> os.stat_result:
    """``path``'s stat if it is a regular file (links followed); else a one-line UsageError:
    missing, a dangling or looping link, a device (``/dev/zero`` would be read forever), a pipe."""
    try:
        st = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise UsageError(f"{what} {path} is a link to nothing ({os.readlink(path)}): pass "
                             "the file itself") from None
        raise UsageError(f"{what} {path} does not exist: check the path") from None
    except OSError as e:  # a symlink loop, a name too long, no permission
        raise UsageError(f"{what} {path} cannot be read ({e.strerror or type(e).__name__}): "
                         "pass a regular file") from None
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{what} {path} is not a regular file (a device, pipe or socket): pass "
                         "a checkpoint file")
    return st


def _read_card(card_path: Path) -> dict:
    """The JSON card beside a .safetensors file ({} when there is none); a broken one, or one
    with a field that is not what ablate wrote there, is a one-line UsageError."""
    if not os.path.lexists(card_path):
        return {}
    if _regular_file(card_path, "card").st_size > MAX_CARD_BYTES:
        raise UsageError(f"card {card_path} is larger than {MAX_CARD_BYTES // 1024} KiB, the "
                         "limit for a card: not a checkpoint card; repair it or remove it")
    try:
        card = json.loads(card_path.read_text())  # NaN, Infinity: refused by field
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise UsageError(f"card {card_path} is not readable JSON ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:80]}): repair it or remove it") from None
    if not isinstance(card, dict):
        raise UsageError(f"card {card_path} holds a JSON {type(card).__name__}, not an object "
                         "with 'arch': repair it or remove it")
    check_card(card, str(card_path))
    return card


# ---------------------------------------------------------------------------------------------
# Card fields: each is untrusted input. A check returns None when the value is fine, else what
# is wrong with it (and, for an object, which of its fields).


def _number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _integer(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _show(v: object) -> str:
    text = json.dumps(v, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_str(v):
    return None if isinstance(v, str) and len(v) <= 10_000 else "must be a JSON string"


def _opt_str(v):
    return None if v is None else _is_str(v)


def _plain_name(v):
    if isinstance(v, str) and NAME_PATTERN.fullmatch(v) and v not in (".", ".."):
        return None
    return f"is {_show(v)}, not {NAME_RULE}"


def _opt_plain_name(v):
    return None if v is None else _plain_name(v)


def _fraction(v):
    return None if v is None or (_number(v) and 0 <= v <= 1) else (
        f"is {_show(v)}, not a fraction in [0, 1] or null")


def _count(v):
    return None if _integer(v) and 0 <= v <= 10**12 else f"is {_show(v)}, not a whole number >= 0"


def _seconds(v):
    return None if v is None or (_number(v) and v >= 0) else (
        f"is {_show(v)}, not a number of seconds >= 0 or null")


def _arch(v):
    if not isinstance(v, str):
        return "must be a JSON string naming a model"
    return None if v in models.names() else f"is {_show(v)}, not a known model (see --list-models)"


def _family(v):
    return None if v in models.FAMILIES else (
        f"is {_show(v)}, not one of {', '.join(models.FAMILIES)}")


def _format(v):
    return None if v == CARD_FORMAT else f"is {_show(v)}, not {CARD_FORMAT!r}"


def _sha256(v):
    ok = isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v)
    return None if ok else f"is {_show(v)}, not a sha256 (64 lowercase hex digits)"


def _survival(v):
    if v is None or (_number(v) and 0 < v <= 1):
        return None
    if isinstance(v, list) and v and len(v) <= 10_000 and all(_number(p) and 0 < p <= 1
                                                               for p in v):
        return None
    return f"is {_show(v)}, not a survival probability in (0, 1] (or a list of them)"


def _positive_int(limit: int):
    def check(v):
        return None if _integer(v) and 1 <= v <= limit else (
            f"is {_show(v)}, not a whole number from 1 to {limit:,}")
    return check


# What ``models.create`` takes from a card: nothing else (e.g. torchvision's ``weights``, which
# would download) is passed on.
_ARCH_KWARGS = {
    "num_classes": _positive_int(MAX_NUM_CLASSES),
    "option": lambda v: None if v in ("A", "B") else f"is {_show(v)}, not 'A' or 'B'",
    "stochastic_depth": _survival,
    "sd_mode": lambda v: None if v in ("batch", "row") else f"is {_show(v)}, not 'batch' or 'row'",
    "num_layers": _positive_int(1000), "hidden_dim": _positive_int(65536),
    "num_heads": _positive_int(1024), "mlp_dim": _positive_int(262144),
    "patch_size": _positive_int(32),
    "dropout": lambda v: None if _number(v) and 0 <= v < 1 else (
        f"is {_show(v)}, not a probability in [0, 1)"),
}


def _arch_kwargs(v):
    if not isinstance(v, dict):
        return "must be a JSON object"
    for k, x in v.items():
        if k not in _ARCH_KWARGS:
            return (f".{k}", f"is not an argument a model takes from a card (it takes "
                             f"{', '.join(_ARCH_KWARGS)}): the card has arguments it does not take")
        problem = _ARCH_KWARGS[k](x)
        if problem:
            return f".{k}", problem
    return None


def _normalization(v):
    if not isinstance(v, dict):
        return "must be a JSON object with 'mean' and 'std'"
    for k in v:
        if k not in ("mean", "std", "source"):
            return f".{k}", "is not a normalisation field (mean, std, source)"
    for k in ("mean", "std"):
        x = v.get(k)
        if not (isinstance(x, list) and len(x) == 3 and all(_number(c) for c in x)):
            return f".{k}", f"is {_show(x)}, not a list of 3 finite numbers (one per RGB channel)"
        if k == "std" and not all(c > 0 for c in x):
            return ".std", f"is {_show(x)}: every standard deviation must be positive"
        if k == "mean" and not all(-1e3 <= c <= 1e3 for c in x):
            return ".mean", f"is {_show(x)}, not the mean of images scaled to [0, 1]"
    return None if "source" not in v or isinstance(v["source"], str) else (
        ".source", "must be a JSON string")


def _weights_origin(v):
    if not isinstance(v, dict):
        return "must be a JSON object"
    for k, x in v.items():
        if not (x is None or isinstance(x, (str, bool)) or _number(x)):
            return f".{k}", f"is {_show(x)}, not a string, number, true/false or null"
    for k in ("source", "commit"):
        if k in v and not isinstance(v[k], str):
            return f".{k}", "must be a JSON string"
    return None


def _sd_record(v):
    if v is None or (_number(v) and 0 < v <= 1) or isinstance(v, dict):
        return None
    return f"is {_show(v)}, not a stochastic-depth record (an object), p_L in (0, 1] or null"


def _is(kind: type, what: str):
    return lambda v: None if isinstance(v, kind) else f"must be a JSON {what}"


def _str_list(v):
    return None if isinstance(v, list) and all(isinstance(x, str) for x in v) else (
        "must be a JSON list of strings")


def _dict_list(v):
    return None if isinstance(v, list) and all(isinstance(x, dict) for x in v) else (
        "must be a JSON list of objects")


CARD_FIELDS = {
    "format": _format, "name": _plain_name, "arch": _arch, "arch_kwargs": _arch_kwargs,
    "family": _family, "dataset": _opt_plain_name, "normalization": _normalization,
    "weights": _weights_origin, "weights_sha256": _sha256, "test_error": _fraction,
    "final_test_error": _fraction, "log": _opt_plain_name, "stochastic_depth": _sd_record,
    "trained_by": _is_str, "evaluated_on": _opt_str, "device": _opt_str, "amp": _opt_str,
    "final_test_error_eval": _opt_str, "epochs": _count, "seed": _count,
    "train_images": _count, "world_size": _count, "train_seconds": _seconds,
    "train_step_seconds": _seconds, "recipe": _is(dict, "object"),
    "versions": _is(dict, "object"), "deviations": _str_list, "notes": _str_list,
    "precision_by_epochs": _dict_list,
}
"""The card fields ablate reads or writes and the check of each; other fields are kept as
information and never used."""


def check_card(card: dict, where: str) -> None:
    """Refuse a card with a field that is not what ablate writes there, naming the field."""
    for key, check in CARD_FIELDS.items():
        if key not in card:
            continue
        problem = check(card[key])
        if problem is None:
            continue
        sub, problem = problem if isinstance(problem, tuple) else ("", problem)
        raise UsageError(f"card {where}: '{key}{sub}' {problem}: repair the card (or remove it "
                         "and pass --model)")


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
    stated = card.get("weights_sha256")
    if stated is not None and stated != digest:
        raise UsageError(
            f"checkpoint {path.name} is not the file its card {card_path.name} describes (card "
            f"sha256 {stated[:12]}..., file {digest[:12]}...): the weights were changed or the "
            "card belongs to other weights; restore the pair (delete a converted cache entry to "
            "convert it again)"
        )
    norm = card.get("normalization", {})
    mean = tuple(norm.get("mean", CIFAR10_MEAN))
    std = tuple(norm.get("std", CIFAR10_STD))
    net = _build(arch, card.get("arch_kwargs", {}), path)
    _fit(net, state, arch, path)
    name = card.get("name", _safe_stem(path))
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
        card = _extras(obj, path)
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
    _check_tensors(state, path)
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


def _safe_stem(path: Path) -> str:
    """A file's stem as a display and folder name: only NAME_PATTERN's characters."""
    stem = re.sub(r"[^A-Za-z0-9._+-]", "_", path.stem).lstrip(".")[:100]
    return stem if NAME_PATTERN.fullmatch(stem) else "checkpoint"


def _extras(obj: dict, path: Path) -> dict:
    """The non-weight entries of a standard checkpoint as its card: numbers and short strings
    (an optimiser state or other objects are left out); ``best_prec1`` must be a percentage."""
    card = {}
    for k, v in obj.items():
        if k == "state_dict" or not isinstance(k, str):
            continue
        v = _plain(v)
        if isinstance(v, bool) or v is None or (isinstance(v, str) and len(v) <= 200):
            card[k] = v
        elif isinstance(v, (int, float)):
            if not math.isfinite(v):
                raise UsageError(f"checkpoint {path.name}: '{k}' is {v}, not a finite number: "
                                 "not a trained checkpoint")
            card[k] = v
    best = card.get("best_prec1", 50.0)
    if not (isinstance(best, (int, float)) and not isinstance(best, bool) and 0 <= best <= 100):
        raise UsageError(f"checkpoint {path.name}: 'best_prec1' is {_show(best)}, not an accuracy "
                         "in percent (0-100): not a pytorch_resnet_cifar10 checkpoint")
    return card


_SHARED_KEYS = ("resnet", "plain")  # option-A ResNets and plain nets have identical state keys


def _origin_family(card: dict, digest: str) -> str | None:
    """What the weights were trained as, where something says so: the card's ``family``, the
    published weights registry matching the file's sha256, or a bundled checkpoint whose card
    records this sha256 for its weights."""
    if card.get("family"):
        return str(card["family"])
    return _known_family(digest)


def _known_family(digest: str | None) -> str | None:
    """The family of known weights: a published file or a bundled checkpoint with this sha256."""
    if digest is None:
        return None
    for w in published.WEIGHTS.values():
        if digest.startswith(w.sha256) and len(w.sha256) == 64:
            return w.family
    found = set()
    for p in sorted(bundled_dir().glob("*.json")):
        try:
            other = json.loads(p.read_text()) if p.stat().st_size <= MAX_CARD_BYTES else {}
        except (OSError, UnicodeDecodeError, ValueError):
            continue
        if isinstance(other, dict) and other.get("weights_sha256") == digest and \
                isinstance(other.get("arch"), str) and other["arch"] in models.names():
            found.add(models.family(other["arch"], other, default="resnet"))
    return found.pop() if len(found) == 1 else None  # cards that disagree say nothing


def _check_family(loaded: Loaded, origin: str | None, path: Path) -> None:
    """Refuse ResNet weights in a plain net (or the reverse): same keys, chance-level error.
    Where nothing says the family, warn loudly."""
    if not models.is_cifar(loaded.arch):
        return
    family = models.family(loaded.arch, None, default="resnet")
    if family not in _SHARED_KEYS:
        return
    if _known_family(loaded.sha256) is None:  # known weights are checked by their sha256
        _check_structure(loaded, family, path)
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


# BatchNorm statistics of the architecture the weights were trained in fit their activations;
# in the twin (ResNet <-> plain net, same keys) they do not. Measured on the bundled nets, probe
# below: right architecture 0.6-0.85, wrong one 2.2-7.8. Warned: the stated architecture fits
# badly, the twin well and at least twice better.
_STATS_BAD, _STATS_GOOD, _STATS_RATIO = 1.5, 1.0, 2.0


def _stats_mismatch(net: nn.Module) -> float | None:
    """Mean |log(batch variance / running variance)| over the BatchNorm layers of ``net`` on a
    fixed probe of smooth noise (no data needed); None without BatchNorm layers."""
    errs: list[float] = []

    def pre(m: nn.Module, inp: tuple) -> None:
        v = inp[0].transpose(0, 1).flatten(1).var(1)
        errs.append(((v + m.eps) / (m.running_var + m.eps)).log().abs().mean().item())

    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d) and
           m.running_var is not None]
    if not bns or all(bool((m.running_var == 1).all() and (m.running_mean == 0).all())
                      for m in bns):
        return None  # no statistics were ever gathered (a fresh initialisation)
    g = torch.Generator().manual_seed(0)
    x = nn.functional.avg_pool2d(torch.randn(4, 3, 40, 40, generator=g), 9, 1)
    x = (x - x.mean()) / x.std()
    handles = [m.register_forward_pre_hook(pre) for m in bns]
    flags = {m: m.training for m in net.modules()}
    try:
        with torch.no_grad():
            net.eval()(x)
    except RuntimeError:
        return None
    finally:
        for h in handles:
            h.remove()
        for m, f in flags.items():
            m.training = f
    return sum(errs) / len(errs) if errs else None


def _check_structure(loaded: Loaded, family: str, path: Path) -> None:
    """Warn (one line) when the weights' BatchNorm statistics fit the twin architecture (a
    ResNet's weights in a plain net or the reverse) far better than the stated one."""
    other = "plain" if family == "resnet" else "resnet"
    twin = loaded.arch.replace(family, other, 1)
    if twin not in models.names():
        return
    kwargs = {k: v for k, v in (loaded.card.get("arch_kwargs") or {}).items()
              if k in ("num_classes", "option")}
    try:
        twin_net = models.create(twin, **kwargs)
        twin_net.load_state_dict(loaded.model.state_dict(), strict=True)
    except (RuntimeError, TypeError, ValueError, UsageError):
        return
    stated, alt = _stats_mismatch(loaded.model), _stats_mismatch(twin_net)
    if stated is None or alt is None:
        return
    if stated > _STATS_BAD and alt < _STATS_GOOD and alt * _STATS_RATIO < stated:
        print(f"WARNING: the weights in {path.name} look like a {other} net ({twin}), not the "
              f"{family} net {loaded.arch} it is loaded as (BatchNorm statistics fit {twin}: "
              f"{alt:.2f} vs {stated:.2f}): correct 'arch' in its card, or pass --model {twin}",
              file=sys.stderr)


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


def _check_tensors(state: dict, path: Path) -> None:
    """Every entry of a state dict is a tensor under a string key."""
    for k, v in state.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise UsageError(f"checkpoint {path.name}: entry {_show(str(k))} of its state dict is "
                             f"a {type(v).__name__}, not a tensor: not a model checkpoint")


def _check_values(own: dict, state: dict, arch: str, path: Path) -> None:
    """Floating weights where the model has floating ones (int8, uint8 or bool weights would be
    cast silently), integer counters where it has integers, and only finite values."""
    for k, want in own.items():
        got = state[k]
        if want.is_floating_point() != got.is_floating_point() or got.is_complex() or (
                got.dtype == torch.bool and want.dtype != torch.bool):
            kind = "floating-point" if want.is_floating_point() else "integer"
            raise UsageError(f"checkpoint {path.name}: tensor '{k}' is {got.dtype} where {arch} "
                             f"has a {kind} tensor: not weights of this model (a quantised or "
                             "corrupted file?); use the original checkpoint")
        if got.is_floating_point() and not bool(torch.isfinite(got).all()):
            raise UsageError(f"checkpoint {path.name}: tensor '{k}' holds NaN or infinite values: "
                             "the weights are broken (a diverged run?); use another checkpoint")


def _fit(net: nn.Module, state: dict, arch: str, path: Path) -> None:
    _check_tensors(state, path)
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or shape:
        guess = _guess_arch({re.sub(r"^module\.", "", k): v for k, v in state.items()})
        hint = f"it looks like a {guess}: pass --model {guess}" if guess and guess != arch else (
            "pass the --model it was trained as")
        detail = "; ".join(
            f"{label} {len(ks)} keys (e.g. {ks[0]})"
            for label, ks in (("missing", missing), ("unexpected", unexpected),
                              ("wrong shape for", shape)) if ks
        )
        raise UsageError(f"checkpoint {path.name} does not fit {arch} ({detail}); {hint}")
    _check_values(own, state, arch, path)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise UsageError(f"checkpoint {path.name} does not fit {arch} "
                         f"({str(e).splitlines()[0][:120]}): pass the --model it was trained "
                         "as") from None
