"""python -m ablate.delete_block: the same as ``python -m ablate delete_block``.

The experiment is declared in ``analyses/delete_block.py`` (what it measures, its flags, its
verdicts) and drawn by ``figures/delete_block.py``.
"""

import sys

from ablate._cli import command

main = command("delete_block")

if __name__ == "__main__":
    sys.exit(main())
