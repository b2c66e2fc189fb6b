"""python -m ablate.degradation: the same as ``python -m ablate degradation``.

The experiment is declared in ``analyses/degradation.py`` (what it measures, its flags, its
verdicts) and drawn by ``figures/degradation.py``.
"""

import sys

from ablate._cli import command

main = command("degradation")

if __name__ == "__main__":
    sys.exit(main())
