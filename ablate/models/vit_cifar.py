"""A small Vision Transformer for CIFAR (32x32): torchvision's ``VisionTransformer``.

Architecture: ViT-Lite-7/4 of Hassani et al. 2021, *Escaping the Big Data Paradigm with Compact
Transformers* (arXiv:2104.05704, Table 2 / their ``vit_lite_7`` config): patch 4 (64 tokens plus
the class token), 7 pre-norm encoder layers, width 256, 4 heads, MLP 512 (ratio 2). They report
91.4% on CIFAR-10 with 300 epochs of AdamW (lr 5.5e-4, weight decay 3e-2, batch 128, cosine with
warm-up) and strong augmentation (AutoAugment, Mixup/CutMix). ``python -m ablate.train`` trains
it with Lee et al. 2021's shorter recipe (100 epochs, RandAugment, Mixup/CutMix:
``training.config.vit_recipe``). ``blocks()`` sees its 7 layers (and 14 branches).
"""

from __future__ import annotations

import torchvision
from torch import nn

__all__ = ["vit_cifar"]


def vit_cifar(
    num_classes: int = 10, num_layers: int = 7, hidden_dim: int = 256, num_heads: int = 4,
    mlp_dim: int = 512, patch_size: int = 4, dropout: float = 0.0,
) -> nn.Module:
    """ViT-Lite-7/4 for 32x32 images (see the module docstring for the recipe's source)."""
    return torchvision.models.VisionTransformer(
        image_size=32, patch_size=patch_size, num_layers=num_layers, num_heads=num_heads,
        hidden_dim=hidden_dim, mlp_dim=mlp_dim, dropout=dropout, num_classes=num_classes,
    )
