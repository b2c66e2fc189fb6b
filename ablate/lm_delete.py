"""python -m ablate.lm_delete: the same as ``python -m ablate lm_delete``; the experiment is
declared in ``analyses/lm_delete.py`` (what it measures, its flags, its verdicts) and drawn by
``figures/lm_delete.py``."""

import sys

from ablate._cli import command

main = command("lm_delete")

if __name__ == "__main__":
    sys.exit(main())
