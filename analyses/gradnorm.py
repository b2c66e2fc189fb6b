"""Gradient norms through depth (He et al. 2015, Sec. 4.1; Huang et al. 2016): at every unit's
input (activation gradient) and of every unit's parameters, for a network at initialisation and
trained, plain nets beside their residual twins: whether a deep plain net's gradient vanishes
towards the input (He et al. say that with BN it does not).

BN: by default a network at initialisation is measured with batch statistics, the network SGD
steps on at its first iteration (its running statistics are still mean 0, variance 1, so in eval
mode BN is an identity and a ResNet's residual sums grow without bound through depth), and a
trained one with its running statistics, the network that is tested (``bn="auto"``).

Per batch the loss is the cross-entropy, summed over images for the activation gradient (with
running statistics each image's gradient at a unit's input is its own; batch statistics couple
the images of a batch), reported as the mean over images of its L2 norm, and averaged over the
batch for the parameter gradient (what SGD sees), reported as the mean over batches of the
per-unit L2 norm. Intervals are t intervals over images and over batches respectively.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from tqdm.auto import tqdm

from ablate import models
from ablate._infra.errors import UsageError
from ablate.data import Dataset, normalize
from ablate.measures import mean_interval
from ablate.models.blocks import Block, blocks, chain, get_module, restore_flags, train_flags
from ablate.models.checkpoint import Loaded
from analyses import command
from analyses.context import condition
from analyses.options import Images, flag
from analyses.plan import Plan, Settings
from analyses.registry import Experiment, Result
from analyses.sweep import resume
from analyses.table import Table
from analyses.verdicts import (
    HEALTHY_GRADIENT_RATIO,
    Finding,
    fig,
    judged,
    read,
    scope,
)

__all__ = ["EXPERIMENT", "BN_MODES", "KEY", "STATES", "bn_for", "depths", "gradients", "init_twin",
           "run",
           "unit_parameters"]

KEY = ("model", "checkpoint_sha256", "state", "dataset", "split", "n_images", "data_sha256",
       "bn", "seed")
STATES = ("init", "trained")
BN_MODES = ("auto", "eval", "train")


def bn_for(bn: str, state: str) -> str:
    """The BN mode a state is measured in: ``auto`` is batch statistics (``train``) at init and
    running statistics (``eval``) once trained; ``eval`` or ``train`` apply to both."""
    if bn not in BN_MODES:
        raise UsageError(f"--bn must be one of {', '.join(BN_MODES)}, not {bn!r}")
    if bn != "auto":
        return bn
    return "train" if state == "init" else "eval"


def unit_parameters(model: nn.Module, unit: Block) -> list[nn.Parameter]:
    """A unit's parameters: the whole residual block, or a plain unit's convolution and BN."""
    mods = [unit.module]
    if unit.kind == "plain" and unit.bn:
        mods.append(get_module(model, unit.bn))
    return [p for m in mods for p in m.parameters()]


def depths(model: nn.Module) -> list[int]:
    """Weight layers between the input and each unit's input, counting the stem's convolution:
    residual units count the convolutions of their branch (shortcut projections excluded)."""
    out, d = [], 1
    for u in blocks(model):
        out.append(d)
        if u.kind == "plain":
            d += 1
        else:
            short = getattr(u.module, "shortcut", None) or getattr(u.module, "downsample", None)
            skip = {id(m) for m in short.modules()} if isinstance(short, nn.Module) else set()
            d += sum(isinstance(m, nn.Conv2d) and id(m) not in skip for m in u.module.modules())
    return out


@contextmanager
def _bn_mode(model: nn.Module, bn: str) -> Iterator[None]:
    """Eval mode throughout; with ``bn="train"`` BN layers use batch statistics, and their
    running statistics are restored afterwards."""
    flags = train_flags(model)
    model.eval()
    saved = {}
    if bn == "train":
        for name, m in model.named_modules():
            if isinstance(m, _BatchNorm):
                saved[name] = {k: v.clone() for k, v in m.named_buffers(recurse=False)}
                m.train()
    try:
        yield
    finally:
        for name, bufs in saved.items():
            m = model.get_submodule(name)
            for k, v in bufs.items():
                getattr(m, k).copy_(v)
        restore_flags(flags)


def gradients(model: nn.Module, x: Tensor, y: Tensor, *, bn: str = "eval") -> tuple[Tensor, Tensor]:
    """Per-image activation-gradient norms at each unit's input [units, B] (of the summed loss)
    and per-unit parameter-gradient norms [units] (of the batch-mean loss)."""
    if bn not in ("eval", "train"):
        raise UsageError(f"--bn must be eval or train, not {bn!r}")
    units = blocks(model)
    params = [unit_parameters(model, u) for u in units]
    flat = [p for ps in params for p in ps]
    with _bn_mode(model, bn):
        h, acts = x, []
        for step in chain(model):
            if isinstance(step, Block):
                acts.append(h)
                h = step.unit(h)
            else:
                h = step(h)
        loss = F.cross_entropy(h, y, reduction="sum")
        grads = torch.autograd.grad(loss, acts + flat, allow_unused=True)
    g_act = torch.stack([g.flatten(1).norm(dim=1) for g in grads[:len(acts)]])
    g_par, i = [], len(acts)
    for ps in params:
        sq = sum(float(g.double().square().sum()) for g in grads[i:i + len(ps)] if g is not None)
        g_par.append(np.sqrt(sq) / x.shape[0])
        i += len(ps)
    return g_act.detach(), torch.tensor(g_par, dtype=torch.float64)


def init_twin(loaded: Loaded, seed: int) -> nn.Module:
    """The same architecture with fresh registry initialisation, seeded (global RNG untouched)."""
    param = next(loaded.model.parameters())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = models.create(loaded.arch, **(loaded.card.get("arch_kwargs") or {}))
    return net.to(param.device, param.dtype).eval()


def run(
    loaded: Loaded,
    ds: Dataset,
    *,
    states: tuple[str, ...] = ("trained",),
    bn: str = "auto",
    seed: int = 0,
    table: Table | None = None,
    batch_size: int = 128,
    progress: bool = True,
) -> pd.DataFrame:
    """Rows (model, state, bn, unit, kind, grad_norm, low, high, ...) for each state of
    ``loaded`` (``bn``: see :func:`bn_for`); states already in ``table`` are reused."""
    table = Table(None, KEY) if table is None else table
    for s in states:
        if s not in STATES:
            raise UsageError(f"unknown state {s!r}: use init and/or trained")
        if s == "trained" and loaded.format == "init":
            raise UsageError(f"{loaded.name} has no trained weights: pass --checkpoint, or ask "
                             "for --states init")
    base = {**condition(loaded, ds), "seed": seed}

    def measure(part: list[dict]) -> list[dict]:
        state = part[0]["state"]
        net = loaded.model if state == "trained" else init_twin(loaded, seed)
        return _measure(net, loaded, ds, part[0], part[0]["bn"], batch_size, progress)

    return resume(table, [{**base, "state": s, "bn": bn_for(bn, s)} for s in states], measure,
                  what=loaded.name)


def _measure(net: nn.Module, loaded: Loaded, ds: Dataset, base: dict, bn: str, batch_size: int,
             progress: bool) -> list[dict]:
    param = next(net.parameters())
    acts, pars = [], []
    starts = range(0, len(ds), batch_size)
    for i in tqdm(starts, desc=f"{loaded.name} {base['state']}", disable=not progress,
                  leave=False):
        x = normalize(ds.images[i:i + batch_size].to(param.device), loaded.mean, loaded.std)
        a, p = gradients(net, x.to(param.dtype), ds.labels[i:i + batch_size].to(param.device),
                         bn=bn)
        acts.append(a.double().cpu())
        pars.append(p)
    act, par = torch.cat(acts, 1).numpy(), torch.stack(pars, 1).numpy()
    rows = []
    for u, d in zip(blocks(net), depths(net)):
        info = {**base, "unit": u.index, "unit_name": u.name, "stage": u.stage, "depth": d,
                "downsample": u.changes_shape, "unit_kind": u.kind}
        for kind, v in (("activation", act[u.index]), ("parameters", par[u.index])):
            mean, lo, hi = mean_interval(v)
            rows.append({**info, "kind": kind, "grad_norm": mean, "low": lo, "high": hi,
                         "n_values": v.size})
    return rows


# --- Verdicts (the report's findings, read from results/<name>/) ---


def verdicts(root: Path) -> list[Finding]:
    """He et al. 2015, Sec. 4.1: the plain nets' degradation is "unlikely to be caused by
    vanishing gradients ... the backward propagated gradients exhibit healthy norms with BN"."""
    df, meta = read(root, "gradnorm")
    if df is None:
        return [Finding("He et al. 2015 Sec. 4.1", "gradnorm", "-", "not run", "-")]
    act = df[df["kind"] == "activation"]
    by_state = meta.get("bn_by_state") or {}
    if "bn" in act and by_state:  # the rows of the BN mode this run asked for, per state
        act = act[act.apply(lambda r: r["bn"] == by_state.get(r["state"], r["bn"]), axis=1)]
    unit_col = "unit" if "unit" in act else "block"
    rows = []
    for (model, state), d in act.groupby(["model", "state"], sort=False):
        d = d.sort_values(unit_col)
        rows.append((model, d.family.iloc[0], state,
                     float(d.grad_norm.iloc[0] / d.grad_norm.iloc[-1])))
    r = pd.DataFrame(rows, columns=["model", "family", "state", "ratio"])
    plain = r[r.family == "plain"]
    lo, hi = HEALTHY_GRADIENT_RATIO, 1 / HEALTHY_GRADIENT_RATIO
    healthy = [bool(((s.ratio >= lo) & (s.ratio <= hi)).all()) for _, s in plain.groupby("state")]
    bn = {"train": "batch", "eval": "running"}

    def state(x) -> str:
        return ("" if x.family != "plain" else " (outside the band: fades)" if x.ratio < lo else
                " (outside the band: grows)" if x.ratio > hi else " (inside the band)")

    where = "extension" if plain.empty else (
        "paper" if all(scope(m, "he_imagenet") == "paper" for m in plain.model) else "extension")
    verdict = ("not run" if not healthy else judged(
        "holds" if all(healthy) else "partly" if any(healthy) else "does not hold", where))
    return [Finding(
        "He et al. 2015 Sec. 4.1",
        "With BN a deep plain net's gradients neither vanish nor explode (\"the backward "
        "propagated gradients exhibit healthy norms\"; ImageNet plain-18/34): its degradation is "
        "an optimisation difficulty, not vanishing gradients.",
        "; ".join(f"{x.model} ({x.state}"
                  + (f", BN {bn[by_state[x.state]]} statistics" if x.state in by_state else "")
                  + f"): first/last unit {x.ratio:.3g}{state(x)}" for x in r.itertuples())
        + " (loss gradient norm at a unit's input, first unit over last: below 1 it fades "
        "towards the input, above 1 it grows; the ResNets for comparison)",
        verdict,
        f"every plain net's gradient at its first unit's input within {lo:g}-{hi:g}x its last "
        "unit's (neither vanishing nor exploding by an order of magnitude), in every state "
        "measured (init, trained); all states: holds, some: partly", fig(root, "gradnorm"))]



# --- The command -----------------------------------------------------------------------------
#   python -m ablate gradnorm --model resnet110 plain110 --states init trained \
#       --checkpoint resnet110.safetensors plain110.safetensors
# For every unit: the norm of the loss gradient at its input (per image) and of its parameters
# (per batch of --batch-size, default 128 as in training), averaged over --limit images (default
# 1024 on a GPU, 256 on the CPU). ``init`` re-creates each architecture with fresh, seeded
# initialisation; ``trained`` uses the checkpoint.


@dataclass
class Options(Images):
    states: list[str] | None = flag(None, "init and/or trained (default: trained where a "
                                    "checkpoint is given, else init)", metavar="STATE")
    init: bool = flag(False, "shorthand for --states init")
    bn: str = flag("auto", "BN with running statistics (eval), batch statistics (train), or "
                   "auto: batch statistics at init (running ones are still 0 and 1 there), "
                   "running ones trained", choices=BN_MODES)


def measure(o: Options) -> Result:
    if o.init and o.states:
        raise UsageError("give either --init or --states, not both")
    states = ["init"] if o.init else o.states
    for s in states or []:
        if s not in STATES:
            raise UsageError(f"unknown state {s!r}: use --states init and/or trained")
    loaded = command.load_models(o, EXPERIMENT.default_models, allow_init=True)
    if o.limit is None:
        o.limit = 1024 if next(loaded[0].model.parameters()).is_cuda else 256
    ds = command.load_data(o, loaded, EXPERIMENT.demo_limit)
    out, table = command.results_table(o, loaded, "gradnorm", KEY)
    bs = 128 if o.batch_size is None else o.batch_size
    if bs < 1:
        raise UsageError(f"--batch-size must be at least 1, not {bs}")
    frames = []
    for m in loaded:
        own = tuple(states) if states else (("init",) if m.format == "init" else ("trained",))
        frames.append(run(m, ds, states=tuple(dict.fromkeys(own)), bn=o.bn, seed=o.seed,
                          table=table, batch_size=bs))
    df = pd.concat(frames, ignore_index=True)
    meta = {
        "method": (
            "activation: mean over images of the L2 norm of d(summed cross-entropy)/d(unit "
            "input); parameters: mean over batches of the L2 norm of the batch-mean loss's "
            "gradient over the unit's parameters"
        ),
        "bn": o.bn, "bn_by_state": {s: bn_for(o.bn, s) for s in STATES}, "batch_size": bs,
        "init_seed": o.seed,
    }
    stat = {"train": "batch", "eval": "running"}
    note = f"{ds.name}, {len(ds)} images, BN: " + ", ".join(
        f"{s} {stat[bn_for(o.bn, s)]} statistics" for s in df.state.unique())
    return Result(out, df, meta, loaded, ds, table, note, summary=lambda: _summary(df))


def _summary(df: pd.DataFrame) -> None:
    act = df[df["kind"] == "activation"]
    for (model, state), d in act.groupby(["model", "state"], sort=False):
        d = d.sort_values("unit")
        first, last = d["grad_norm"].iloc[0], d["grad_norm"].iloc[-1]
        ratio = first / last if last > 0 else float("inf")
        print(f"{model} {state}: activation gradient {first:.3g} at the first unit, "
              f"{last:.3g} at the last ({ratio:.3g}x)")


def reproduce(p: Plan, s: Settings) -> Options:
    """The first ResNet and its plain twin, at init and trained."""
    return Options(model=list(p.gradnorm), states=["init", "trained"], limit=s.grad_images)


EXPERIMENT = Experiment(
    name="gradnorm", paper="He et al. 2015, Sec. 4.1 (no vanishing gradients with BN)", run=run,
    key=KEY, options=Options, measure=measure, verdicts=verdicts, reproduce=reproduce, order=50,
    summary="gradient norms through depth, ResNet vs plain, init vs trained (He et al. 2015)",
    default_models=("resnet20", "plain20"),
)
