"""Recover a reproduction step's wall time from runs/reproduce_cpu.log, for invocations whose
stop went uncounted in run.json (before stops were timed), into run.json's
``wall_seconds_untimed``; REPRODUCTION.md adds it to the timed sum and says so.

Each invocation of a step is a ``== STEP:`` section of the log; its time is the sum over its
progress bars ("MODEL blocks A-B") of each bar's last elapsed time, so model loading and the
intact pass are left out: a lower bound.

    python scripts/wall_from_log.py delete_block --invocations 3 [--log L] [--run R] [--write]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ablate._infra.io import write_json


def _seconds(clock: str) -> int:
    return sum(int(v) * 60 ** i for i, v in enumerate(reversed(clock.split(":"))))


def invocation_seconds(log: str, step: str) -> list[float]:
    """Per invocation of ``step`` in the log, in order: the summed elapsed time of its bars."""
    parts = re.split(r"\n== (\w+): ", log.replace("\r", "\n"))
    out = []
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name == step:
            last = {m.group(1): _seconds(m.group(2)) for m in re.finditer(
                r"^(.*?blocks [\d-]+):.*?\[([\d:]+)<", body, re.M)}
            out.append(float(sum(last.values())))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step")
    ap.add_argument("--invocations", type=int, required=True,
                    help="how many of the step's first invocations went untimed")
    ap.add_argument("--log", type=Path, default=Path("runs/reproduce_cpu.log"))
    ap.add_argument("--run", type=Path, default=Path("reproduction/run.json"))
    ap.add_argument("--write", action="store_true", help="write it into run.json")
    args = ap.parse_args()
    per = invocation_seconds(args.log.read_text(errors="replace"), args.step)
    untimed = sum(per[:args.invocations])
    print(f"{args.step}: invocations (min) {[round(s / 60, 1) for s in per]}; the first "
          f"{args.invocations} untimed: {untimed / 60:.1f} min")
    if args.write:
        run = json.loads(args.run.read_text())
        run.setdefault("wall_seconds_untimed", {})[args.step] = untimed
        write_json(args.run, run)
        print(f"wrote {args.run}")


if __name__ == "__main__":
    main()
