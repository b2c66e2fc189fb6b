"""Convert the published zoos into bundled checkpoints: safetensors + card + LICENSE.

Reads each bundled entry of ``ablate.models.weights.WEIGHTS`` from a folder of the original files
(``akamaster/*.th``, ``a-martyn/*.pt``, each with its LICENSE), checks its sha256, converts the
keys, evaluates it on the bundled pristine CIFAR-10 test split and writes
``NAME.{safetensors,json}`` with the measured error in the card into ``--out`` (the package's
folder is ``ablate/checkpoints`` of this checkout). It stops if a measured error differs from the
one recorded in the registry. Usage:

    python scripts/convert_zoo.py ZOO_DIR --out OUT_DIR
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import ablate
from ablate import data
from ablate._infra.io import sha256_file
from ablate.models import checkpoint, weights

FOLDERS = {"akamaster": "akamaster", "a-martyn": "a-martyn"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("zoo", type=Path, help="folder of akamaster/ and a-martyn/ with the originals")
    ap.add_argument("--out", required=True, type=Path, help="folder to write the checkpoints into")
    args = ap.parse_args()
    zoo, out = args.zoo, args.out
    out.mkdir(parents=True, exist_ok=True)
    ds = data.load(None, "test", quiet=True)
    for w in weights.WEIGHTS.values():
        if not w.bundled:
            continue
        src = zoo / FOLDERS[w.layout] / w.file
        if sha256_file(src) != w.sha256:
            sys.exit(f"error: {src} does not have the published sha256 {w.sha256}")
        net = ablate.create(w.arch)
        net.load_state_dict(weights.original_state(w, src), strict=True)
        mean, std = w.normalization
        t = time.perf_counter()
        error = 100 * ablate.evaluate(net.eval(), ds.images, ds.labels, mean=mean, std=std).error
        print(f"{w.name}: {error:.2f}% test error on pristine cifar10 "
              f"({time.perf_counter() - t:.0f} s)", flush=True)
        if w.measured_error is not None and abs(error - w.measured_error) > 0.005:
            sys.exit(f"error: {w.name} measures {error:.2f}%, registry: {w.measured_error}%")
        card = {**w.card(), "test_error": round(error / 100, 6), "evaluated_on": "cifar10 test "
                "(10,000 images, bundled pristine split)", "trained_by": w.source}
        checkpoint.save(net, out / w.name, card)
        shutil.copyfile(zoo / FOLDERS[w.layout] / "LICENSE", out / w.license_file)


if __name__ == "__main__":
    main()
