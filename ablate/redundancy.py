"""python -m ablate.redundancy: the same as ``python -m ablate redundancy``.

The experiment is declared in ``analyses/redundancy.py`` (what it measures, its flags, its
verdicts) and drawn by ``figures/redundancy.py``.
"""

import sys

from ablate._cli import command

main = command("redundancy")

if __name__ == "__main__":
    sys.exit(main())
