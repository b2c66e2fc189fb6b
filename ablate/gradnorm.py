"""python -m ablate.gradnorm: the same as ``python -m ablate gradnorm``.

The experiment is declared in ``analyses/gradnorm.py`` (what it measures, its flags, its
verdicts) and drawn by ``figures/gradnorm.py``.
"""

import sys

from ablate._cli import command

main = command("gradnorm")

if __name__ == "__main__":
    sys.exit(main())
