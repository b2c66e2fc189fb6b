"""``python -m ablate EXPERIMENT [flags]`` (or the ``ablate`` command): one entry for everything.

    python -m ablate --list                      # the experiments, one line each
    python -m ablate delete_block --model resnet110
    python -m ablate train --model resnet110 ... # the trainer; reproduce: every experiment

Each experiment is found in the registry (``analyses.registry``); ``python -m ablate.NAME`` is the
same command.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ablate._infra.errors import UsageError, cli_main

__all__ = ["main"]

TOOLS = {"train": "train a CIFAR ResNet, plain net or ViT (He et al.; Huang et al.)",
         "reproduce": "every experiment of both papers on the bundled networks, and the report"}


def _list() -> str:
    from analyses import registry

    exps = registry.experiments()
    width = max(len(n) for n in [*TOOLS, *(e.name for e in exps)])
    lines = ["experiments:"] + [f"  {e.name:<{width}}  {e.line}" for e in exps]
    lines += ["tools:"] + [f"  {n:<{width}}  {d}" for n, d in TOOLS.items()]
    return "\n".join(lines)


@cli_main
def _usage(argv: Sequence[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m ablate EXPERIMENT [flags]   (or: ablate EXPERIMENT [flags])\n"
              "       python -m ablate EXPERIMENT --help   the experiment's flags\n")
        print(_list())
        return 0
    if argv[0] == "--list":
        print(_list())
        return 0
    from analyses import registry

    registry.get(argv[0])  # one line naming the experiments
    raise UsageError(f"cannot read {argv[0]!r}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in TOOLS:
        import importlib

        return importlib.import_module(f"ablate.{argv[0]}").main(argv[1:]) or 0
    if argv and not argv[0].startswith("-"):
        from analyses import registry

        if argv[0] in registry.names():
            from ablate._cli import command

            return command(argv[0])(argv[1:])
    return _usage(argv)


if __name__ == "__main__":
    sys.exit(main())
