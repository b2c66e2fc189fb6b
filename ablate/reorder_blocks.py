"""python -m ablate.reorder_blocks: the same as ``python -m ablate reorder_blocks``.

The experiment is declared in ``analyses/reorder_blocks.py`` (what it measures, its flags, its
verdicts) and drawn by ``figures/reorder_blocks.py``.
"""

import sys

from ablate._cli import command

main = command("reorder_blocks")

if __name__ == "__main__":
    sys.exit(main())
