"""python -m ablate.attribution: the same as ``python -m ablate attribution``.

The experiment is declared in ``analyses/attribution.py`` (what it measures, its flags, its
verdicts) and drawn by ``figures/attribution.py``.
"""

import sys

from ablate._cli import command

main = command("attribution")

if __name__ == "__main__":
    sys.exit(main())
