"""python -m ablate.training_curves: the same as ``python -m ablate training_curves``.

The experiment is declared in ``analyses/training_curves.py`` (what it measures, its flags, its
verdicts) and drawn by ``figures/training_curves.py``.
"""

import sys

from ablate._cli import command

main = command("training_curves")

if __name__ == "__main__":
    sys.exit(main())
