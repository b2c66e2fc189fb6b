"""He et al.'s degradation verdict on synthetic tables: one that passes, ones that fail."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ablate.measures.stats import pack_correct
from analyses.degradation import verdicts as degradation

N = 10_000


def _table(errors: dict[str, int]) -> pd.DataFrame:
    """Nested wrong sets (a deeper net's wrong images include the shallower one's or vice
    versa), so every paired difference is the whole difference."""
    rows = []
    for name, wrong in errors.items():
        c = np.ones(N, bool)
        c[:wrong] = False
        fam = name.rstrip("0123456789")
        rows.append({"model": name, "family": fam, "depth": int(name[len(fam):]),
                     "n_images": N, "data_sha256": "x", "error": 1 - c.mean(),
                     "error_low": 0.0, "error_high": 1.0, "correct": pack_correct(c)})
    return pd.DataFrame(rows)


def _verdict(tmp_path, errors):
    d = tmp_path / "results" / "degradation"
    d.mkdir(parents=True)
    _table(errors).to_csv(d / "results.csv", index=False)
    (f,) = degradation(tmp_path)
    return f


def test_plain_up_resnet_down_reproduces(tmp_path):
    f = _verdict(tmp_path, {"plain20": 969, "plain56": 1307, "resnet20": 827, "resnet56": 661})
    assert f.verdict == "reproduces"
    assert "plain56 - plain20 +3.38 points" in f.ours and "resnet56 - resnet20 -1.66" in f.ours
    assert "56: +6.46 points" in f.ours  # plain56 against resnet56


@pytest.mark.parametrize("errors, verdict", [
    ({"plain20": 969, "plain56": 900, "resnet20": 827, "resnet56": 661}, "partly"),
    ({"plain20": 969, "plain56": 1307, "resnet20": 827, "resnet56": 830}, "partly"),
    ({"plain20": 969, "plain56": 960, "resnet20": 827, "resnet56": 900}, "does not reproduce"),
])
def test_fails_when_either_trend_is_missing_or_within_noise(tmp_path, errors, verdict):
    assert _verdict(tmp_path, errors).verdict == verdict


def test_one_depth_is_not_run(tmp_path):
    assert _verdict(tmp_path, {"plain20": 969, "resnet20": 827}).verdict == "not run"
    assert degradation(tmp_path / "empty")[0].verdict == "not run"
