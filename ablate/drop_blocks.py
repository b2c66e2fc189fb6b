"""python -m ablate.drop_blocks: the same as ``python -m ablate drop_blocks``.

The experiment is declared in ``analyses/drop_blocks.py`` (what it measures, its flags, its
verdicts) and drawn by ``figures/drop_blocks.py``.
"""

import sys

from ablate._cli import command

main = command("drop_blocks")

if __name__ == "__main__":
    sys.exit(main())
