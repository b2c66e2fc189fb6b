"""python -m ablate.paths: the same as ``python -m ablate paths``.

The experiment is declared in ``analyses/paths.py`` (what it measures, its flags, its
verdicts) and drawn by ``figures/paths.py``.
"""

import sys

from ablate._cli import command

main = command("paths")

if __name__ == "__main__":
    sys.exit(main())
