"""One training run from a ``TrainConfig``: data and model on the device, resume, the epochs, the
final checkpoint and its card. Every epoch ends with an atomic ``last.pt`` (``training.state``);
on the CPU a resumed run ends bitwise where an uninterrupted one does. Under ``torchrun`` every
rank takes its shard of each global batch (DDP; gloo on CPU, nccl on CUDA); only rank 0 writes.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm

from ablate import data as data_mod
from ablate import models
from ablate._infra import distributed
from ablate._infra.errors import UsageError
from ablate.models import checkpoint
from ablate.training import card as card_mod
from ablate.training import lesion as lesion_mod
from ablate.training.config import Recipe, TrainConfig, lr_at, paper_recipe
from ablate.training.loop import Shard, evaluate, grad_columns, grad_probe, train_epoch, zero_grads
from ablate.training.precision import attention_kernel
from ablate.training.precision import choose as choose_precision
from ablate.training.state import (
    load_state,
    restore_weights,
    save_state,
    set_rng_state,
    write_log,
)

__all__ = ["train"]

Dataset = data_mod.Dataset


@dataclass
class _Run:
    """Everything the epochs need, set up once (and restored from ``last.pt`` on --resume)."""

    config: TrainConfig
    name: str
    recipe: Recipe
    device: torch.device
    shard: Shard
    amp: bool
    channels_last: bool
    out: Path
    splits: dict[str, tuple[Tensor, Tensor]]  # train, test and maybe val, on the device
    train_ds: Dataset
    net: nn.Module
    opt: torch.optim.Optimizer
    gen: torch.Generator
    run: dict  # what a resume must match (training.state.load_state)
    precision_why: str = ""
    math_attention: bool = False
    log: list[dict] = field(default_factory=list)
    start_epoch: int = 0
    step: int = 0
    train_seconds: float = 0.0
    reseeded: int | None = None  # the data generator's new seed after --change-device moved it
    lesion_epochs: tuple[int, ...] = ()  # epochs whose single-block deletions are measured
    lesion_data: tuple[Tensor, Tensor] | None = None  # the fixed evaluation set (training.lesion)
    lesions: list[dict] = field(default_factory=list)  # the rows of lesions.csv

    @property
    def state_path(self) -> Path:
        return self.out / "last.pt"

    @property
    def lesion_path(self) -> Path:
        return self.out / lesion_mod.TABLE

    @property
    def main(self) -> bool:
        return self.shard.rank == 0


def train(config: TrainConfig, *, train_data: Dataset | None = None,
          test_data: Dataset | None = None) -> Path:
    """Train ``config.model`` and return the path of the final ``NAME.safetensors``.

    ``train_data``/``test_data`` (ablate.data Datasets) replace ``config.data``. Launched by
    torchrun (WORLD_SIZE > 1), the process group is joined here and left at the end.
    """
    config.validate()
    device = distributed.device(config.device)
    own_group = distributed.init(cuda=device.type == "cuda")
    try:
        r = _setup(config, device, train_data, test_data)
        fwd, eval_net = _wrap(r)
        _announce(r)
        _lesion_catch_up(r)
        for epoch in range(r.start_epoch, r.recipe.epochs):
            _epoch(r, fwd, eval_net, epoch)
            if config.stop_after is not None and epoch + 1 >= config.stop_after:
                if r.shard.world > 1:
                    dist.barrier()
                return r.state_path
        return _finish(r)
    finally:
        if own_group:
            distributed.leave()


def _setup(config: TrainConfig, device: torch.device, train_data: Dataset | None,
           test_data: Dataset | None) -> _Run:
    recipe = config.recipe()
    rank, world = distributed.rank_world()
    if recipe.batch_size % world:
        raise UsageError(f"--batch-size {recipe.batch_size} does not split over {world} "
                         "processes: use a multiple of the process count")
    if config.survival() is not None and config.sd_mode == "row" and world > 1:
        raise UsageError("row-mode stochastic depth is not supported with several processes: "
                         "use --sd-mode batch")
    precision = choose_precision(device, config.amp, config.channels_last,
                                 convolutional=not models.is_transformer_arch(config.model))
    amp, channels_last = precision.amp, precision.channels_last
    name = config.run_name()
    out = Path(config.out or Path("runs") / name)
    if not config.resume and (out / "last.pt").exists():
        raise UsageError(f"{out} already holds a run (last.pt): pass --resume to continue it or "
                         "choose another --out")
    train_ds, splits = _data(config, recipe, device, train_data, test_data)
    net, opt, gen, arch_kwargs = _model(config, recipe, device, rank, train_ds, channels_last)
    run = {
        "model": config.model, "arch_kwargs": arch_kwargs, "recipe": asdict(recipe),
        "seed": config.seed, "dataset": train_ds.name, "n_train": len(train_ds),
        "val_split": config.val_split, "world_size": world,
    }
    r = _Run(config, name, recipe, device, Shard(rank, world), amp, channels_last, out, splits,
             train_ds, net, opt, gen, run, precision.why, precision.math_attention)
    if config.resume:
        _resume(r)
    _lesion_setup(r)
    return r


def _data(config: TrainConfig, recipe: Recipe, device: torch.device, train_data: Dataset | None,
          test_data: Dataset | None) -> tuple[Dataset, dict[str, tuple[Tensor, Tensor]]]:
    if train_data is None or test_data is None:
        tr, te = _load_data(config)
        train_data = tr if train_data is None else train_data
        test_data = te if test_data is None else test_data
    if tuple(train_data.classes) != tuple(test_data.classes):
        raise UsageError("train and test splits have different classes: check --data")
    if len(train_data.classes) < 2:
        raise UsageError(f"the data has {len(train_data.classes)} class(es) "
                         f"({', '.join(train_data.classes)}): a classifier needs at least two; "
                         "check --data")
    train_ds = train_data.subset(config.limit_train)
    sets = {"test": test_data.subset(config.limit_test)}
    if config.val_split:
        train_ds, sets["val"] = _split_val(train_ds, config.val_split)
    if len(train_ds) < recipe.batch_size:
        raise UsageError(f"{len(train_ds)} train images is fewer than one batch of "
                         f"{recipe.batch_size}: lower --batch-size or raise --limit-train")
    splits = {k: (d.images.to(device), d.labels.to(device))
              for k, d in {"train": train_ds, **sets}.items()}
    return train_ds, splits


def _load_data(config: TrainConfig) -> tuple[Dataset, Dataset]:
    if config.data is None or str(config.data) == "bundled":
        raise UsageError(
            "training needs a train split: pass --data PATH to a full data set (e.g. "
            "cifar10-jpeg.tar.gz) or --data cifar10 --download; the bundled set is test-only"
        )
    kw = {"cache_dir": config.cache_dir, "download": config.download,
          "quiet": not distributed.is_main()}
    return (data_mod.load(config.data, "train", **kw), data_mod.load(config.data, "test", **kw))


def _split_val(ds: Dataset, n_val: int) -> tuple[Dataset, Dataset]:
    """Hold out ``n_val`` random images (a fixed draw, the same for every seed) as validation."""
    if not 0 < n_val < len(ds):
        raise UsageError(f"--val-split must be between 0 and {len(ds)} images, got {n_val}")
    perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))
    keep, val = perm[n_val:].sort().values, perm[:n_val].sort().values

    def take(idx: Tensor, split: str) -> Dataset:
        return replace(ds, images=ds.images[idx].contiguous(), labels=ds.labels[idx], split=split)

    return take(keep, "train"), take(val, "val")


def _model(config: TrainConfig, recipe: Recipe, device: torch.device, rank: int,
           train_ds: Dataset, channels_last: bool) -> tuple:
    """The network, its optimiser and the data generator, seeded in a fixed order."""
    torch.manual_seed(config.seed)  # the same on every rank: batch-mode gates agree across ranks
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.cuda.manual_seed(config.seed + rank)  # row-mode gates and dropout differ per rank
    arch_kwargs: dict = {"num_classes": len(train_ds.classes)}
    sd = config.survival()
    if sd is not None:
        arch_kwargs.update(stochastic_depth=sd, sd_mode=config.sd_mode)
    net = models.create(config.model, **arch_kwargs).to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    zero_grads(net)
    if recipe.optimizer == "adamw":
        opt = torch.optim.AdamW(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    else:
        opt = torch.optim.SGD(net.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                              nesterov=recipe.nesterov, weight_decay=recipe.weight_decay)
    gen = torch.Generator(device=device).manual_seed(config.seed)
    return net, opt, gen, arch_kwargs


def _resume(r: _Run) -> None:
    st = load_state(r.state_path, r.run)
    restore_weights(st, r.net, r.opt, r.state_path)
    reseed = (r.config.seed + 1_000_003 * st["epoch"]) if r.config.change_device else None
    moved = set_rng_state(st["rng"], r.gen, r.device, reseed)
    r.start_epoch, r.step, r.log = st["epoch"], st["step"], list(st["log"])
    r.train_seconds = float(st["train_seconds"])
    r.reseeded = reseed if moved else None
    if r.main:
        print(f"resuming {r.name} from {r.state_path} after epoch {r.start_epoch}"
              + (f", moved from {st['rng']['data_device']} to {r.device.type} (data generator "
                 f"reseeded with {reseed})" if moved else ""), flush=True)


def _wrap(r: _Run) -> tuple[nn.Module, nn.Module]:
    """(the module trained, the module evaluated): DDP and torch.compile as configured."""
    fwd: nn.Module = r.net
    if r.shard.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        fwd = DDP(r.net, device_ids=[r.device.index] if r.device.type == "cuda" else None,
                  find_unused_parameters=r.config.survival() is not None)
    if r.config.compile:
        return torch.compile(fwd), torch.compile(r.net)
    return fwd, r.net


def _announce(r: _Run) -> None:
    if r.main:
        n_test = len(r.splits["test"][1])
        print(f"training {r.name}: {r.config.model} on {r.train_ds.name} ({len(r.train_ds)} "
              f"train, {n_test} test images), {r.recipe.epochs} epochs of {_steps(r)} steps, "
              f"batch {r.recipe.batch_size} on {r.shard.world}x "
              f"{card_mod.device_name(r.device)}, out {r.out}", flush=True)
        print(f"precision: {r.precision_why}; evaluation in fp32", flush=True)


def _steps(r: _Run) -> int:
    return len(r.train_ds) // r.recipe.batch_size


def _epoch(r: _Run, fwd: nn.Module, eval_net: nn.Module, epoch: int) -> None:
    """Train one epoch, evaluate, log; on rank 0 write ``last.pt`` and ``log.csv``."""
    r.net.train()
    t0 = time.perf_counter()
    bar = tqdm(total=_steps(r), desc=f"epoch {epoch + 1}/{r.recipe.epochs}", leave=False,
               disable=True if not (r.main and r.config.progress) else None, unit="step")
    mean, std = data_mod.CIFAR10_MEAN, data_mod.CIFAR10_STD
    probe = grad_probe(r.net)
    with attention_kernel(r.math_attention):
        sums, gmean, r.step = train_epoch(
            fwd, r.opt, *r.splits["train"], r.recipe, r.gen, r.step, mean=mean, std=std,
            amp=r.amp, channels_last=r.channels_last, shard=r.shard, probe=probe, bar=bar,
        )
    if r.shard.world > 1:
        dist.all_reduce(sums)
    loss_sum, correct, count = sums.tolist()  # the one sync of the epoch's training
    if not math.isfinite(loss_sum):  # stop before a NaN checkpoint replaces the last good one
        raise UsageError(
            f"training diverged in epoch {epoch + 1}: the loss is {loss_sum / count} at lr "
            f"{lr_at(r.recipe, r.step - 1, _steps(r)):g}; lower --lr (or use --warmup on); "
            f"{r.state_path} keeps the last finite epoch"
        )
    t_train = time.perf_counter() - t0
    bar.close()
    ev = {"mean": mean, "std": std, "amp": False, "channels_last": r.channels_last,
          "batch_size": r.config.eval_batch_size, "shard": r.shard}
    row = {"epoch": epoch + 1, "lr": lr_at(r.recipe, r.step - 1, _steps(r)),
           "train_loss": loss_sum / count, "train_error": 1.0 - correct / count}
    row["test_loss"], row["test_error"] = evaluate(eval_net, *r.splits["test"], **ev)
    if "val" in r.splits:
        row["val_loss"], row["val_error"] = evaluate(eval_net, *r.splits["val"], **ev)
    seconds = time.perf_counter() - t0
    r.train_seconds += seconds
    row |= {"images_per_s": _steps(r) * r.recipe.batch_size / t_train, "epoch_seconds": seconds,
            "amp": "bf16" if r.amp else "off", "channels_last": r.channels_last,
            "attention": "math" if r.math_attention else "default",
            "device": card_mod.device_name(r.device),
            "train_step_seconds": t_train}  # training steps alone: no test or val pass
    if r.reseeded is not None and epoch == r.start_epoch:  # the first epoch after a move
        row["data_reseeded"] = f"seed {r.reseeded}"  # text: not a metric for training_curves
    row |= dict(zip(grad_columns(probe.n_blocks), gmean.tolist(), strict=True))
    if r.lesion_epochs:  # written before last.pt: a crash between them re-measures this epoch
        row["lesion_seconds"] = _lesion(r, epoch + 1)
    r.log.append(row)
    if r.main:
        _print_epoch(r, row)
        save_state(r.state_path, run=r.run, model=r.net, optimizer=r.opt, epoch=epoch + 1,
                   step=r.step, gen=r.gen, device=r.device, log=r.log,
                   train_seconds=r.train_seconds)
        write_log(r.out / "log.csv", r.log)


def _lesion_setup(r: _Run) -> None:
    """The lesion schedule and evaluation set; the table's rows up to the resumed epoch."""
    r.lesion_epochs = lesion_mod.parse_lesion_at(r.config.lesion_at, r.recipe)
    if not r.lesion_epochs:
        return
    images, labels = r.splits["test"]
    idx = lesion_mod.lesion_set(labels, r.config.lesion_images).to(labels.device)
    r.lesion_data = (images[idx], labels[idx])
    rows = lesion_mod.read_table(r.lesion_path) if r.main else []
    sizes = {row["n_images"] for row in rows}
    if sizes - {len(idx)}:
        raise UsageError(f"{r.lesion_path} holds lesions on {sorted(sizes)} images, this run's "
                         f"set has {len(idx)}: pass the run's --lesion-images or move the table "
                         "aside")
    r.lesions = [row for row in rows if row["epoch"] <= r.start_epoch]  # a future not kept: out


def _lesion_catch_up(r: _Run) -> None:
    """Measure the starting epoch's lesions if scheduled and missing (epoch 0 of a new run, or
    a run stopped between writing last.pt and the table); rewrite a table that held more."""
    if not r.lesion_epochs or not r.main:
        return
    if r.start_epoch in r.lesion_epochs and not any(
            row["epoch"] == r.start_epoch for row in r.lesions):
        _lesion(r, r.start_epoch)
    elif r.lesion_path.exists() or r.lesions:
        lesion_mod.write_table(r.lesion_path, r.lesions)


def _lesion(r: _Run, epoch: int) -> float:
    """Run the lesion pass of ``epoch`` if scheduled (rank 0; the others wait); its seconds."""
    if epoch not in r.lesion_epochs:
        return 0.0
    seconds = 0.0
    if r.main:
        images, labels = r.lesion_data
        rows = lesion_mod.lesion_rows(r.net, images, labels, epoch=epoch,
                                      mean=data_mod.CIFAR10_MEAN, std=data_mod.CIFAR10_STD)
        r.lesions = [row for row in r.lesions if row["epoch"] != epoch] + rows
        lesion_mod.write_table(r.lesion_path, r.lesions)
        seconds = rows[0]["seconds"] if rows else 0.0
        changes = sorted(row["error_change"] for row in rows)
        if changes:
            print(f"lesions at epoch {epoch}: intact {rows[0]['intact_error']:.2%}, median change "
                  f"{changes[len(changes) // 2]:+.2%} over {len(rows)} units, {seconds:.1f}s",
                  flush=True)
    if r.shard.world > 1:
        dist.barrier()
    return seconds


def _lesion_card(r: _Run) -> dict:
    """What the card says of the lesion table: set, schedule, cost against training."""
    per_epoch = {row["epoch"]: row["seconds"] for row in r.lesions}
    seconds = sum(per_epoch.values())
    n = r.lesions[0]["n_images"]
    return {
        "table": f"{r.name}.lesions.csv",
        "images": f"{n} test images of {r.train_ds.name}, class-balanced: the first "
                  f"{n // len(r.train_ds.classes)} of each class in the test split's order",
        "epochs": sorted(per_epoch),
        "engine": "every single-unit deletion by the batched engine, fp32, eval mode",
        "seconds": round(seconds, 1),
        "share_of_training": round(seconds / r.train_seconds, 4) if r.train_seconds else None,
    }


def _print_epoch(r: _Run, row: dict) -> None:
    val = f" val err {row['val_error']:.2%}" if "val_error" in row else ""
    print(f"epoch {row['epoch']}/{r.recipe.epochs} lr {row['lr']:.4g} | train loss "
          f"{row['train_loss']:.4f} err {row['train_error']:.2%} | test loss "
          f"{row['test_loss']:.4f} err {row['test_error']:.2%}{val} | "
          f"{row['images_per_s']:,.0f} img/s {row['epoch_seconds']:.1f}s", flush=True)


def _finish(r: _Run) -> Path:
    """The final checkpoint, its card and log (rank 0); every rank waits for it."""
    weights = r.out / f"{r.name}.safetensors"
    _, fp32_error = evaluate(r.net, *r.splits["test"], mean=data_mod.CIFAR10_MEAN,
                             std=data_mod.CIFAR10_STD, amp=False, channels_last=r.channels_last,
                             batch_size=r.config.eval_batch_size, shard=r.shard)
    if r.main:
        paper = paper_recipe(r.config.model, r.config.schedule)
        card = card_mod.card(r.config, r.recipe, paper, r.run, r.log, r.train_ds, r.amp,
                             r.shard.world, r.device, r.config.survival(), r.train_seconds,
                             r.name, (data_mod.CIFAR10_MEAN, data_mod.CIFAR10_STD))
        card["final_test_error"] = fp32_error  # the reported number: always an fp32 evaluation
        if r.lesions:
            card["lesions"] = _lesion_card(r)
        card["final_test_error_eval"] = ("fp32, final weights; log.csv test errors of runs "
                                         "before this rule may be under bf16 autocast")
        weights = checkpoint.save(r.net, r.out / r.name, card)
        write_log(r.out / f"{r.name}.log.csv", r.log)
        if r.lesions:
            lesion_mod.write_table(r.out / f"{r.name}.lesions.csv", r.lesions)
        print(f"wrote {weights} (final test error {card['final_test_error']:.2%})", flush=True)
    if r.shard.world > 1:
        dist.barrier()
    return weights
