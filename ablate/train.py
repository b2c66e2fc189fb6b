"""python -m ablate.train: train CIFAR ResNets and plain nets (He et al. 2015; Huang et al. 2016).

    python -m ablate.train --model resnet110 --data cifar10-jpeg.tar.gz --out runs/resnet110
    python -m ablate.train --model resnet110 --schedule huang --stochastic-depth linear:0.5 ...
    torchrun --nproc-per-node 8 -m ablate.train --model resnet110 --data ...

The whole uint8 train split lives on the device and is augmented there in batches (see
:mod:`ablate.training`). Every epoch ends with an atomic ``last.pt`` in ``--out``: ``--resume``
continues from it. Under ``torchrun`` every rank takes its shard of each global batch (DDP).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ablate import models
from ablate._infra.errors import ArgumentParser, UsageError, check_out, cli_main, non_negative
from ablate.training import TrainConfig, train
from ablate.training.config import SCHEDULES
from ablate.training.lesion import AUTO

__all__ = ["main"]


class _ListModels(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        print("\n".join(n for n in models.names() if models.is_cifar(n)))
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m ablate.train",
        description="Train a CIFAR ResNet or plain net (He et al. 2015; Huang et al. 2016).",
    )
    p.add_argument("--model", help="registry name: resnet20..1202, plain20..110, "
                   "preact_resnet20..110")
    p.add_argument("--list-models", action=_ListModels, nargs=0, default=argparse.SUPPRESS,
                   help="list trainable models and exit")
    p.add_argument("--data", help="data set: a cifar10-jpeg.tar.gz, an ImageFolder or python-"
                   "batches folder, or cifar10/cifar100 (torchvision)")
    p.add_argument("--download", action="store_true", help="let torchvision download cifar10/100")
    p.add_argument("--cache-dir", help="where decoded data sets are cached")
    p.add_argument("--epochs", type=int, help="default: 164 (he, cosine), 500 (huang)")
    p.add_argument("--batch-size", type=int, default=128, help="global batch (default 128)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: the recipe's, 0.1 "
                   "for SGD; 1e-3 for vit_cifar's AdamW)")
    p.add_argument("--schedule", default="he", choices=SCHEDULES,
                   help="he: /10 at 50%% and 75%%; huang: 500 epochs, Nesterov, /10 at 250, 375")
    p.add_argument("--warmup", default="auto", choices=("auto", "on", "off"),
                   help="lr 0.01 for 400 iterations (auto: ResNet-110+ and plain nets, he/cosine)")
    p.add_argument("--stochastic-depth", metavar="linear:P",
                   help="Huang et al.'s linear survival rule ending at p_L = P (e.g. linear:0.5)")
    p.add_argument("--sd-mode", default="batch", choices=("batch", "row"),
                   help="one gate per block per mini-batch (Huang et al.) or per image")
    p.add_argument("--seed", type=non_negative, default=0,
                   help="seed of the initial weights and of the data order")
    p.add_argument("--out", help="run folder (default runs/NAME)")
    p.add_argument("--name", help="checkpoint name (default MODEL or MODEL-sd)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--change-device", action="store_true",
                   help="with --resume: continue a last.pt written on another kind of device "
                   "(GPU <-> CPU); the data order from there on is freshly seeded, and the "
                   "card says which epochs ran where")
    p.add_argument("--device", default="auto",
                   help="auto | cpu | cuda | cuda:N; auto is a GPU if there is one")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="default: on for convolutional nets, off for vit_cifar")
    p.add_argument("--amp", choices=("bf16", "off"),
                   help="bf16 autocast for training steps; default: bf16 on a GPU and on a CPU "
                        "with native bf16 (AVX512-BF16/AMX), else off (fp32)")
    p.add_argument("--val-split", type=int, default=0,
                   help="hold out N train images for validation (the papers: 5000; default 0)")
    p.add_argument("--limit-train", type=int, help="use the first N train images (smoke runs)")
    p.add_argument("--limit-test", type=int, help="use the first N test images (smoke runs)")
    p.add_argument("--lesion-at", metavar="EPOCHS",
                   help="measure every single-block deletion at these epochs (0: at init) on "
                   "a class-balanced test subset, into OUT/lesions.csv: epochs and every:N, "
                   "drops, last, or auto (" + AUTO + "); default: none")
    p.add_argument("--lesion-images", type=int, default=1000,
                   help="size of that subset: the first N/classes test images of each class "
                   "(default 1000)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return p


@cli_main
def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if not args.model:
        raise UsageError("name a model: --model resnet110 (see --list-models)")
    if args.out is not None:
        check_out(args.out)
    train(TrainConfig(**vars(args)).validate())


if __name__ == "__main__":
    sys.exit(main())
