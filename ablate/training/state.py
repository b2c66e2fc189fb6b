"""The resumable training state: ``last.pt`` (format ``ablate-train-state/1``) and the log.

Runs in progress resume across versions of the code: the dict below, and what ``load_state``
compares against the new run, are the format; change them only with a new ``STATE_FORMAT``.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import torch

from ablate._infra.errors import UsageError
from ablate._infra.io import atomic_write, write_text
from ablate.training.config import Recipe

__all__ = ["STATE_FORMAT", "load_state", "rng_state", "save_state", "set_rng_state", "write_log"]

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
    torch.set_rng_state(state["torch"])
    if moved:
        gen.manual_seed(reseed)
    else:
        gen.set_state(state["data"])
    if device.type == "cuda" and "cuda" in state and not moved:
        torch.cuda.set_rng_state(state["cuda"], device)
    return moved


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
