"""analyses.options: a dataclass's fields are the command's flags, typed and documented once."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from ablate._infra.errors import UsageError
from analyses.options import Base, Images, flag, parse


@dataclass
class Toy(Images):
    windows: list[int] = flag([2, 4], "window lengths", metavar="N")
    scale: float = flag(0.5, "a gain")
    name: str | None = flag(None, "a name")
    fast: bool = flag(False, "go fast")


@dataclass
class Logs(Base):
    logs: list[str] = flag([], "log files", positional=True)


def _parse(cls, argv):
    return parse(cls, argv, prog="toy", description="a toy")


def test_defaults_equal_the_dataclass_defaults():
    assert _parse(Toy, []) == Toy()
    assert Toy().windows == [2, 4] and Toy().windows is not Toy().windows  # copied per instance


def test_flags_are_typed_from_the_annotations():
    o = _parse(Toy, ["--windows", "3", "5", "--scale", "2", "--fast", "--model", "a", "b",
                     "--limit", "10", "--seed", "7", "--no-figure", "--batch-size", "4"])
    assert o.windows == [3, 5] and o.scale == 2.0 and o.fast and o.model == ["a", "b"]
    assert (o.limit, o.seed, o.no_figure, o.batch_size) == (10, 7, True, 4)
    assert replace(o, scale=1.0).scale == 1.0  # reproduce's way: typed, checked by name
    with pytest.raises(TypeError):
        Toy(scal=1.0)  # a misspelt setting is an error, not an ignored argument


@pytest.mark.parametrize("argv", [["--scale", "x"], ["--seed", "-1"], ["--windows"],
                                  ["--split", "nope"], ["--unknown"]])
def test_bad_flags_are_one_line_usage_errors(argv):
    with pytest.raises(UsageError, match=r"\(see toy --help\)"):
        _parse(Toy, argv)


def test_positional_lists():
    assert _parse(Logs, ["a.csv", "b.csv", "--out", "o"]) == Logs(logs=["a.csv", "b.csv"],
                                                                   out="o")
    with pytest.raises(UsageError):
        _parse(Logs, [])  # at least one


def test_every_experiment_shares_device_seed_and_out():
    from analyses import registry

    for e in registry.experiments():
        o = e.options()
        assert isinstance(o, Base), e.name
        assert (o.device, o.seed, o.out, o.no_figure) == ("auto", 0, None, False), e.name
