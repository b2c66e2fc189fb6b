"""What ``python -m ablate.reproduce`` runs: which bundled networks play which part (``Plan``,
chosen by :func:`plan` from what is bundled) and how much work each step does (``Settings``, the
full run's values with their reasons beside them, and the quick run's).

Each experiment turns these into its own options (``Experiment.reproduce``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields

from ablate import models
from ablate._infra.errors import UsageError
from ablate.models import checkpoint

__all__ = ["Plan", "Settings", "plan"]


def _setting(full: int | None, quick: int | None, why: str):
    return field(default=full, metadata={"quick": quick, "why": why})


@dataclass(frozen=True)
class Settings:
    """How much work each step does. Defaults: the full run; :meth:`quick`: the reduced one."""

    limit: int | None = _setting(
        None, 500,
        "Fig. 3 and the degradation table use the whole 10,000-image split: at 10,000 "
        "images a paired 90% interval of a single deletion's change is a few tenths of a "
        "point wide, so a block can be shown equivalent to the intact net within 1 point, "
        "and the paper's error differences of 0.3-3 points between depths are resolvable")
    sweep_limit: int | None = _setting(
        1000, 500,
        "Figs. 5a and 5b draw random sets and orders: their spread between draws "
        "(several points) dominates the test-set noise of 1,000 images (Wilson "
        "half-width about 2.8 points at 25% error, 1.6 at 7%), so the budget goes "
        "to more draws rather than more images; the redundancy measures use the "
        "same 1,000 images, their rank correlations tested over blocks (exact permutation)")
    drop_samples: int = _setting(
        8, 4,
        "8 random sets per k = 1..20 (161 conditions per network): each mean "
        "error per k averages 8 draws, a standard error about a third of the "
        "between-set spread; more draws cost a ResNet-110 pass over 1,000 images each")
    reorder_samples: int = _setting(
        8, 4,
        "8 random orders per number of swaps 1..20 (161 orders per network): "
        "about 15 orders per 0.1-wide bin of Kendall's tau")
    max_swaps: int = _setting(
        20, 6,
        "1 to 20 random swaps: enough to take the order far from the original (the "
        "report gives the lowest Kendall's tau reached), as Veit's Fig. 5b does")
    path_samples: int = _setting(
        8, 8,
        "8 random block sets per image and path length; the interval is clustered "
        "by image (the 128 images are the independent units, the sets within one "
        "image are not)")
    path_images: int = _setting(
        128, 64,
        "128 images x 8 sets = 1,024 gradients per path length: the clustered 95% "
        "interval of the log-magnitude is narrow against its decay over 50 lengths")
    path_lengths: int = _setting(
        18, 8,
        "about 18 path lengths evenly spaced over 0..n (every 3rd for ResNet-110's "
        "54 blocks, every length for ResNet-56's 27): the slope and the effective "
        "window are interpolated in log space between measured lengths")
    grad_images: int = _setting(
        1000, 128,
        "1,000 images (eight batches of 128): the per-unit t intervals of the "
        "gradient norm are a few percent of the norm, far below the orders of "
        "magnitude between plain and residual nets")
    attribution_images: int = _setting(
        128, 64,
        "128 images: Spearman's rho is over the network's 27 or 54 blocks; "
        "each block's mean attribution over 128 images has a t interval in "
        "the table. Conductance costs blocks x steps x images backward passes, "
        "the most expensive step per image")
    attribution_steps: int = _setting(
        16, 8,
        "16 integration steps of conductance (captum's default is 50; the "
        "ranking of blocks, not the completeness error, is what is compared)")

    @classmethod
    def quick(cls) -> Settings:
        return cls(**{f.name: f.metadata["quick"] for f in fields(cls)})

    @classmethod
    def why(cls) -> dict[str, str]:
        return {f.name: f.metadata["why"] for f in fields(cls)}


@dataclass(frozen=True)
class Plan:
    """Which bundled networks play which part (see :func:`plan`)."""

    resnets: tuple[str, ...]  # Figs. 3, 5a, 5b and attribution (full: resnet56, resnet110)
    plain: str | None  # Fig. 3's plain comparator (plain56)
    paths: str  # Fig. 6 (resnet110, else the deepest of ``resnets``)
    gradnorm: tuple[str, ...]  # gradient per depth, init and trained (resnet56, plain56)
    stochastic: tuple[str, str] | None  # (constant, stochastic depth): Fig. 8 and Huang
    zoo: tuple[str, ...]  # degradation: plain-n and resnet-n at every depth with both
    notes: tuple[str, ...] = ()  # what fell back, said in run.json and the report
    vits: tuple[str, ...] = ()  # Figs. 3, 5a, 5b on vision transformers (vit_cifar, bundled)

    @classmethod
    def read(cls, d: dict) -> Plan | None:
        """The plan of a run.json (None: a run without one, or from before plans had roles)."""
        if not d.get("resnets"):
            return None
        known = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()
                      if k in known})

    def describe(self) -> str:
        """One line: which network plays which part."""
        sd = self.stochastic
        return "; ".join([
            f"Figs. 3, 5a, 5b and attribution: {', '.join(self.resnets)}",
            f"plain comparator: {self.plain}", f"Fig. 6: {self.paths}",
            f"gradients per depth: {', '.join(self.gradnorm)}",
            f"stochastic depth: {' vs '.join(sd) if sd else 'none bundled'}",
            f"degradation: {', '.join(self.zoo) or 'none'}"])

    @property
    def deletion(self) -> list[str]:
        """Fig. 3 (and Fig. 8, Huang's Table 1): the ResNets, the SD pair, the plain net, the
        ViTs."""
        names = [*self.resnets, *(self.stochastic or ()), *([self.plain] if self.plain else []),
                 *self.vits]
        return list(dict.fromkeys(names))

    @property
    def sweeps(self) -> list[str]:
        """Figs. 5a and 5b: the ResNets and the ViTs."""
        return [*self.resnets, *self.vits]


def _depth(name: str) -> int:
    m = re.search(r"(\d+)", name)
    return int(m.group(1)) if m else 0


def _card(name: str) -> dict:
    """The card of bundled checkpoint ``name`` ({} when it has none or it is unreadable)."""
    try:
        card = json.loads((checkpoint.bundled_dir() / f"{name}.json").read_text())
    except (OSError, ValueError):
        return {}
    return card if isinstance(card, dict) else {}


def _arch(name: str) -> str:
    """The architecture of a bundled network: its card's ``arch``, else the registry name its
    own name starts with (a checkpoint without a card)."""
    m = re.match(r"[a-z_]+\d+", name)
    return _card(name).get("arch") or (m.group() if m else name)


def _of(names: list[str], family: str) -> list[str]:
    """The bundled networks of one family (``models.family`` of each card), shallowest first."""
    return sorted((n for n in names if models.family(n, _card(n), default="") == family),
                  key=_depth)


def _resnets(names: list[str], quick: bool) -> tuple[str, ...]:
    """Quick: the shallowest ResNet (resnet20). Full: resnet56 and resnet110 where bundled, the
    deep ones of Veit et al.'s comparison; else the deepest there is."""
    found = _of(names, "resnet")
    if not found:
        raise UsageError(
            "no trained ResNet checkpoint is bundled: pass --resnet NAME with a bundled name, or "
            "train one with python -m ablate.train and copy it into ablate/checkpoints")
    if quick:
        return (found[0],)
    deep = [n for n in found if 56 <= _depth(n) <= 110]
    return tuple(deep or found[-1:])


def _twins(names: list[str], resnets: tuple[str, ...], stochastic: str | None
           ) -> tuple[str, str] | None:
    """(constant depth, stochastic depth): a bundled stochastic-depth net and the ResNet of the
    same architecture (``--stochastic`` names the first; else the deepest pair there is)."""
    arch = {n: _arch(n) for n in {*names, *resnets, *([stochastic] if stochastic else [])}}
    if stochastic is not None:
        same = [r for r in _of(names, "resnet") if arch[r] == arch[stochastic]]
        return (same[0] if same else resnets[-1], stochastic)
    sd = _of(names, "stochastic_depth")
    for r in reversed(resnets):
        for s in sd:
            if arch[s] == arch[r]:
                return (r, s)
    return None


def plan(resnet: Sequence[str] | None = None, plain: str | None = None,
         stochastic: str | None = None, quick: bool = False,
         vit: Sequence[str] | None = None) -> Plan:
    """The parts for the bundled networks: what ``--resnet/--plain/--stochastic/--vit`` name,
    else the defaults of :class:`Plan`; every fallback is written into ``notes``."""
    names = checkpoint.bundled_names()
    vits = tuple(vit) if vit is not None else (() if quick else tuple(_of(names, "vit")))
    resnets = tuple(resnet) if resnet else _resnets(names, quick)
    plains = _of(names, "plain")
    if plain is None and plains:
        plain = min(plains, key=lambda p: (abs(_depth(p) - _depth(resnets[0])), _depth(p)))
    paths = "resnet110" if "resnet110" in resnets else max(resnets, key=_depth)
    pair = _twins(names, resnets, stochastic)
    by_depth = {_depth(r): r for r in _of(names, "resnet")}
    zoo = [n for p in plains if _depth(p) in by_depth for n in (p, by_depth[_depth(p)])]
    notes = []
    if paths != "resnet110":
        notes.append(f"Fig. 6 (paths) runs on {paths}: resnet110 is not bundled or not chosen")
    if pair is None:
        notes.append("Fig. 8 and Huang et al.: no stochastic-depth twin (NAME-sd) of "
                     f"{', '.join(resnets)} is bundled: not run")
    p = Plan(resnets, plain, paths, (resnets[0], *([plain] if plain else [])), pair,
             tuple(zoo), tuple(notes), vits)
    for n in dict.fromkeys([*p.deletion, *p.zoo]):
        if checkpoint.bundled(n) is None:
            have = ", ".join(names) or "none"
            raise UsageError(f"{n} is not a bundled checkpoint (bundled: {have})")
    return p


def n_blocks(name: str) -> int:
    """The number of units of a bundled network."""
    from ablate.models.blocks import blocks

    return len(blocks(checkpoint.load(name).model))
