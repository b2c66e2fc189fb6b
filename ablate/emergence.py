"""python -m ablate.emergence: the same as ``python -m ablate emergence``; the experiment is
declared in ``analyses/emergence.py`` and drawn by ``figures/emergence.py``."""

import sys

from ablate._cli import command

main = command("emergence")

if __name__ == "__main__":
    sys.exit(main())
