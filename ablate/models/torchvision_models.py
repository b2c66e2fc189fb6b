"""torchvision's ImageNet ResNets and VGGs, by name, through the same registry.

Pretrained weights need the internet (or torch's hub cache); offline, a missing download ends
with a message naming the fix instead of a traceback.
"""

from __future__ import annotations

import torchvision
from torch import nn

from ablate._infra.errors import UsageError

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
VGGS = tuple(f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn"))


def create(name: str, weights: str | None = None, num_classes: int | None = None) -> nn.Module:
    """Build torchvision model ``name``; ``weights`` names a torchvision enum like IMAGENET1K_V1."""
    builder = getattr(torchvision.models, name)
    kwargs = {}
    if num_classes is not None and weights is None:
        kwargs["num_classes"] = num_classes
    if weights is None:
        return builder(weights=None, **kwargs)
    try:
        enum = torchvision.models.get_model_weights(name)[weights]
    except KeyError:
        options = ", ".join(w.name for w in torchvision.models.get_model_weights(name))
        raise UsageError(f"{name} has no weights {weights!r}; choose one of: {options}") from None
    try:
        return builder(weights=enum)
    except (OSError, RuntimeError) as e:  # URLError is an OSError
        raise UsageError(
            f"could not get {name} weights {weights} ({type(e).__name__}): download them once "
            "with internet access (they are cached under ~/.cache/torch/hub), or pass "
            "--checkpoint PATH to a local copy"
        ) from None
