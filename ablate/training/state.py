"""The resumable training state: ``last.pt`` (format ``ablate-train-state/1``) and the log.

Runs in progress resume across versions of the code: the dict below, and what ``load_state``
compares against the new run, are the format; change them only with a new ``STATE_FORMAT``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import numbers
from pathlib import Path

import torch

from ablate._infra.errors import UsageError
from ablate._infra.io import atomic_write, write_text
from ablate.training.config import Recipe

__all__ = ["STATE_FORMAT", "load_state", "restore_weights", "rng_state", "save_state",
           "set_rng_state", "write_log"]

STATE_FORMAT = "ablate-train-state/1"
# Recipe fields added after the format was fixed: a state without them ran with their defaults
LATER_RECIPE_FIELDS = ("optimizer", "label_smoothing", "warmup_linear", "randaug_ops",
                       "randaug_magnitude", "mixup_alpha", "cutmix_alpha", "mix_prob")


def rng_state(gen: torch.Generator, device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state(), "data": gen.get_state(), "data_device": device.type}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, gen: torch.Generator, device: torch.device,
                  reseed: int | None = None) -> bool:
    """Restore the generators; True when ``last.pt`` came from another kind of device.

    The data generator lives on the device, and a CUDA generator's state means nothing to a CPU
    one: a run moved between kinds (``reseed`` given, i.e. ``--change-device``) seeds it afresh
    with ``reseed``, so from there on its data order is another, equally random draw.
    """
    moved = state["data_device"] != device.type
    if moved and reseed is None:
        raise UsageError(
            f"last.pt was written on {state['data_device']}, not {device.type}: resume with "
            f"--device {state['data_device']} (the data order depends on the device), or add "
            "--change-device to continue here with a freshly seeded data order"
        )
    try:
        torch.set_rng_state(state["torch"])
        if moved:
            gen.manual_seed(reseed)
        else:
            gen.set_state(state["data"])
        if device.type == "cuda" and "cuda" in state and not moved:
            torch.cuda.set_rng_state(state["cuda"], device)
    except (RuntimeError, TypeError, ValueError) as e:
        raise UsageError(f"--resume: last.pt has an 'rng' state these generators do not take "
                         f"({' '.join(str(e).split())[:100]}): delete it or choose another --out"
                         ) from None
    return moved


def restore_weights(state: dict, net: torch.nn.Module, opt: torch.optim.Optimizer,
                    path: Path) -> None:
    """Load ``last.pt``'s ``model`` and ``optimizer`` into the run's; what does not fit (another
    architecture, a changed optimiser) is one line naming the field."""
    own = net.state_dict()
    model = state["model"]
    missing = [k for k in own if k not in model]
    unexpected = [k for k in model if k not in own]
    shape = [k for k in own if k in model and model[k].shape != own[k].shape]
    kind = [k for k in own if k in model and
            model[k].is_floating_point() != own[k].is_floating_point()]
    for label, keys in (("lacks", missing), ("has unexpected", unexpected),
                        ("has wrongly shaped", shape), ("has wrongly typed", kind)):
        if keys:
            raise UsageError(f"--resume: {path}'s 'model' {label} weights (e.g. {keys[0]}): not "
                             "a state of this model; delete it or choose another --out")
    try:
        net.load_state_dict(model)
        opt.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
        field = "model" if "state_dict" in str(e) and "Optimizer" not in str(e) else "optimizer"
        raise UsageError(f"--resume: {path}'s '{field}' does not fit this run "
                         f"({' '.join(str(e).split())[:100]}): delete it or choose another "
                         "--out") from None


def _whole(v: object) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 0


def _byte_state(v: object) -> bool:
    return isinstance(v, torch.Tensor) and v.dtype == torch.uint8 and v.dim() == 1 and v.numel()


def _scalar(v: object) -> bool:
    return v is None or isinstance(v, (str, bool)) or (
        isinstance(v, numbers.Real) and (isinstance(v, numbers.Integral) or math.isfinite(v)))


def _state_problem(state: dict) -> tuple[str, str] | None:
    """The first field of a ``last.pt`` that is not what ``save_state`` writes, and why."""
    if not isinstance(state.get("run"), dict):
        return "run", "is missing or not a dict"
    model = state.get("model")
    if not isinstance(model, dict) or not model or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model.items()):
        return "model", "is not a state dict of tensors"
    for k, v in model.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            return "model", f"holds NaN or infinite values in {k}"
    opt = state.get("optimizer")
    if not isinstance(opt, dict) or not isinstance(opt.get("state"), dict) or not isinstance(
            opt.get("param_groups"), list):
        return "optimizer", "is not an optimiser state (state, param_groups)"
    for field in ("epoch", "step"):
        if not _whole(state.get(field)):
            return field, f"is {state.get(field)!r}, not a whole number >= 0"
    epochs = (state["run"].get("recipe") or {}).get("epochs") if isinstance(
        state["run"].get("recipe"), dict) else None
    if _whole(epochs) and state["epoch"] > epochs:
        return "epoch", f"is {state['epoch']}, past the run's {epochs} epochs"
    rng = state.get("rng")
    if not isinstance(rng, dict):
        return "rng", "is missing or not a dict"
    for k in ("torch", "data"):
        if not _byte_state(rng.get(k)):
            return f"rng.{k}", "is not a generator state (a 1-D uint8 tensor)"
    if "cuda" in rng and not _byte_state(rng["cuda"]):
        return "rng.cuda", "is not a generator state (a 1-D uint8 tensor)"
    if rng.get("data_device") not in ("cpu", "cuda", "mps", "xpu"):
        return "rng.data_device", f"is {rng.get('data_device')!r}, not a device type"
    log = state.get("log")
    if not isinstance(log, list) or not all(
            isinstance(r, dict) and all(isinstance(k, str) and _scalar(v) for k, v in r.items())
            for r in log):
        return "log", "is not a list of rows of numbers and strings"
    if len(log) > state["epoch"]:
        return "log", f"has {len(log)} rows for {state['epoch']} epochs"
    secs = state.get("train_seconds")
    if isinstance(secs, bool) or not isinstance(secs, numbers.Real) or not math.isfinite(secs) \
            or secs < 0:
        return "train_seconds", f"is {secs!r}, not a number of seconds >= 0"
    return None


def load_state(path: Path, run: dict) -> dict:
    if not path.exists():
        raise UsageError(f"--resume: no {path.name} in {path.parent}; run without --resume to "
                         "start")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any unreadable state is one user-facing error
        raise UsageError(f"--resume: {path} is unreadable ({type(e).__name__}); delete it or "
                         "choose another --out") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise UsageError(f"--resume: {path} is not an ablate.train state; choose another --out")
    problem = _state_problem(state)
    if problem is not None:
        field, why = problem
        raise UsageError(f"--resume: {path}'s '{field}' {why}: not a state ablate.train wrote "
                         "(or a damaged one); delete it or choose another --out")
    old = state["run"]
    if isinstance(old.get("recipe"), dict):  # states saved before these Recipe fields existed
        for k in LATER_RECIPE_FIELDS:  # their defaults are what such a run did
            old["recipe"].setdefault(k, getattr(Recipe, k))
    if old.get("model") != run["model"]:
        raise UsageError(
            f"--resume: {path} is a run of {old.get('model')}, not {run['model']}: pass "
            f"--model {old.get('model')} or choose another --out"
        )
    diff = [k for k in run if _jsonable(old.get(k)) != _jsonable(run[k])]
    if diff:
        k = diff[0]
        raise UsageError(
            f"--resume: {path} was started with {k}={_jsonable(old.get(k))}, now "
            f"{_jsonable(run[k])}: resume with the original settings or choose another --out"
        )
    return state


def _jsonable(x: object) -> object:
    return json.loads(json.dumps(x, default=str))


def write_log(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    buf = io.StringIO()
    # Every column of any row (a run resumed from an older log gains columns): missing cells empty.
    fields = list(dict.fromkeys(k for r in rows for k in r))
    w = csv.DictWriter(buf, fieldnames=fields, restval="", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    write_text(path, buf.getvalue())


def save_state(path: Path, *, run: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               epoch: int, step: int, gen: torch.Generator, device: torch.device, log: list[dict],
               train_seconds: float) -> None:
    """Write ``last.pt`` atomically: everything ``load_state`` and a resume need."""
    state = {
        "format": STATE_FORMAT, "run": run, "model": model.state_dict(),
        "optimizer": optimizer.state_dict(), "epoch": epoch, "step": step,
        "rng": rng_state(gen, device), "log": log, "train_seconds": train_seconds,
    }
    atomic_write(path, lambda p, s=state: torch.save(s, p))
