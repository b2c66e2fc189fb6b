"""The checkpoint card of a finished run: recipe, every deviation from the paper, provenance."""

from __future__ import annotations

import platform
from dataclasses import asdict

import torch

from ablate import models
from ablate.data import Dataset
from ablate.training.config import Recipe, TrainConfig, paper_recipe
from ablate.training.precision import cpu_name
from ablate.training.precision import ranges as precision_ranges

__all__ = ["card", "deviations", "device_name", "recipe_notes", "train_step_seconds"]


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def card(
    config: TrainConfig, recipe: Recipe, paper: Recipe, run: dict, log: list[dict],
    train_ds: Dataset, amp: bool, world: int, device: torch.device, sd: float | None,
    train_seconds: float, name: str, norm: tuple,
) -> dict:
    import torchvision

    # a CIFAR ResNet is one side of Huang et al.'s comparison either way
    huang = sd is not None or models.arch_family(config.model) == "resnet"
    card = {
        "arch": config.model,
        "arch_kwargs": run["arch_kwargs"],
        "dataset": train_ds.name,
        "normalization": {"mean": list(norm[0]), "std": list(norm[1]),
                          "source": "CIFAR-10 train-set constants"},
        "recipe": asdict(recipe),
        "deviations": _precision_note(
            deviations(config, recipe, paper, train_ds.name, amp, world, len(train_ds),
                       stochastic=huang), log)
        + _device_note(log),
        "epochs": recipe.epochs,
        "seed": config.seed,
        "stochastic_depth": None if sd is None else {"rule": "linear", "p_L": sd,
                                                      "mode": config.sd_mode},
        "final_test_error": log[-1]["test_error"] if log else None,
        "train_images": len(train_ds),
        "train_seconds": round(train_seconds, 3),  # whole epochs: training, test and val passes
        "train_step_seconds": train_step_seconds(log),
        "device": device_name(device),
        "world_size": world,
        "amp": "bf16" if amp else "off",
        "precision_by_epochs": precision_ranges(log),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": torchvision.__version__},
        "log": f"{name}.log.csv",
    }
    if notes := recipe_notes(config.model, recipe, sd):
        card["notes"] = notes
    if config.val_split and log:
        best = min(log, key=lambda r: r["val_error"])
        card |= {"val_split": config.val_split, "best_val_epoch": best["epoch"],
                 "test_error_at_best_val": best["test_error"]}
    return card


def recipe_notes(model: str, recipe: Recipe, sd: float | None) -> list[str]:
    """How this run's recipe stands to the networks the papers took apart: a CIFAR ResNet on He
    et al.'s schedule is Veit et al.'s constant-depth net; a stochastic-depth one on it is not
    Huang et al.'s 500-epoch run, but its equal-budget twin."""
    if models.arch_family(model) != "resnet" or recipe.schedule != "he":
        return []
    if sd is None:
        return ["He et al. 2015's CIFAR recipe (lr /10 at 50% and 75% of training): the "
                "recipe of the constant-depth ResNet-110 that Veit et al. 2016 took apart"]
    return ["Huang et al. 2016 trained stochastic depth for 500 epochs with Nesterov momentum "
            "(lr /10 at epochs 250 and 375); this run follows He et al. 2015's schedule instead, "
            "the one of its constant-depth twin, so that the two compare at equal budget"]


def train_step_seconds(log: list[dict]) -> float | None:
    """Seconds spent in training steps alone (no evaluation), summed over epochs; None when an
    epoch's log predates the column (a run resumed from an older log)."""
    if not log or any(r.get("train_step_seconds") in (None, "") for r in log):
        return None
    return round(sum(float(r["train_step_seconds"]) for r in log), 3)


def _precision_note(devs: list[str], log: list[dict]) -> list[str]:
    """Say which epochs ran their training steps in bf16 (a resumed run may have changed)."""
    bf16 = [r["epochs"] for r in precision_ranges(log) if r["amp"] == "bf16"]
    if not bf16:
        return devs
    note = f"bf16 autocast instead of fp32 for training steps (epochs {', '.join(bf16)}); " \
           "evaluation in fp32"
    return [note if d == "bf16 autocast instead of fp32" else d for d in devs]


def _device_note(log: list[dict]) -> list[str]:
    """A run resumed on other devices says where each span of epochs ran, and where a move
    between a GPU and a CPU (``--change-device``) reseeded its data order."""
    spans: list[list] = []
    for row in log:
        dev = row.get("device", "not recorded")
        if spans and spans[-1][0] == dev:
            spans[-1][2] = row["epoch"]
        else:
            spans.append([dev, row["epoch"], row["epoch"]])
    if len(spans) < 2:
        return []
    where = ", ".join(f"epochs {a}-{b} on {d}" for d, a, b in spans)
    reseeded = [str(row["epoch"]) for row in log if row.get("data_reseeded") not in (None, "")]
    return [f"trained on more than one device ({where})" + (
        f"; the data order was reseeded from epoch {', '.join(reseeded)} (--change-device): "
        "from there on a fresh draw, not the one an unmoved run would take" if reseeded else "")]


def _recipe_deviations(recipe: Recipe, paper: Recipe, source: str) -> list[str]:
    return [f"{key} {value} instead of {getattr(paper, key)} ({source})"
            for key, value in asdict(recipe).items() if value != getattr(paper, key)]


def deviations(
    config: TrainConfig, recipe: Recipe, paper: Recipe, dataset: str, amp: bool, world: int,
    n_train: int, stochastic: bool = False,
) -> list[str]:
    """Every way this run differs from the paper's recipe, in words, for the card. A
    stochastic-depth run under another schedule also lists its departures from Huang et al.'s."""
    source = "Huang et al. 2016" if recipe.schedule == "huang" else "He et al. 2015"
    if paper.optimizer == "adamw":
        source = "Lee et al. 2021"
    out = _recipe_deviations(recipe, paper, source)
    if stochastic and recipe.schedule != "huang":
        out += _recipe_deviations(recipe, paper_recipe(config.model, "huang"), "Huang et al. 2016")
        if config.val_split == 0:
            out.append("final-epoch test error instead of the best validation epoch of a 45k/5k "
                       "split (Huang et al. 2016)")
    if recipe.schedule == "cosine" and paper.optimizer != "adamw":
        out.append("cosine learning-rate decay instead of steps at 50% and 75%")
    if paper.optimizer == "adamw":
        out.append("RandAugment (N=2, M=9) instead of AutoAugment; no repeated augmentation, "
                   "random erasing or stochastic depth; ViT-Lite-7/4 (7 layers, width 256, "
                   "Hassani et al. 2021) instead of their 9-layer width-192 ViT "
                   "(Lee et al. 2021)")
    if dataset != "cifar10":
        what = " (a JPEG q75 copy of CIFAR-10)" if dataset == "cifar10-jpeg" else ""
        out.append(f"data set {dataset}{what} instead of CIFAR-10")
    if config.val_split == 0:
        out.append(
            "no 45k/5k validation split: trained on all train images, final-epoch test error "
            + ("reported (Huang et al. took the best validation epoch)"
               if recipe.schedule == "huang" else "reported")
        )
    elif config.val_split != 5000:
        out.append(f"validation split of {config.val_split} images instead of 5000")
    if config.limit_train is not None:
        out.append(f"train set limited to {n_train} images")
    if config.limit_test is not None:
        out.append(f"test set limited to {config.limit_test} images")
    if amp:
        out.append("bf16 autocast instead of fp32")
    if config.stochastic_depth is not None and config.sd_mode != "batch":
        out.append("stochastic depth with one gate per image (row) instead of per mini-batch")
    if world > 1:
        out.append(f"{world} processes: batch norm statistics over {recipe.batch_size // world} "
                   f"images per process instead of {recipe.batch_size}")
    out.append("last partial batch of each epoch dropped")
    return out
