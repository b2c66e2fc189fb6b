"""The emergence experiment: lesion tables of training runs per epoch, its figure, its verdict
(described, never judged) and the command."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from ablate.__main__ import main
from ablate.training import TrainConfig, train
from ablate.training import lesion as L
from analyses import emergence
from figures.emergence import plot
from tests.commands.test_train import synthetic

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")
DATA = {"train_data": synthetic(96, "train"), "test_data": synthetic(64, "test", seed=1)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    for name, sd in (("const", None), ("sd", "linear:0.5")):
        d = tmp_path_factory.mktemp(name)
        train(TrainConfig(model="resnet20", epochs=4, batch_size=32, lr=0.05, device="cpu",
                          out=str(d), progress=False, lesion_at="0,1,2,4", lesion_images=40,
                          stochastic_depth=sd, name=name, schedule="he"), **DATA)
        out[name] = d
    return out


def test_reads_a_run_folder_and_a_shipped_table_alike(runs):
    a = emergence.read_run(runs["const"])
    b = emergence.read_run(runs["const"] / "const.lesions.csv")
    assert a.drop(columns="model").equals(b.drop(columns="model"))
    assert a["model"].iloc[0] == "const" and set(a["epoch"]) == {0, 1, 2, 4}
    assert a["lr"].isna().sum() == 9 and a.loc[a.epoch == 4, "lr"].iloc[0] < 0.05  # drops
    sd = emergence.read_run(runs["sd"])
    assert sd["family"].iloc[0] == "stochastic_depth" and a["family"].iloc[0] == "resnet"


def test_per_epoch_counts_equivalent_shape_keeping_blocks(runs):
    df = emergence.read_runs([runs["const"]])
    s = emergence.per_epoch(df)
    assert list(s["epoch"]) == [0, 1, 2, 4] and (s["n_blocks"] == 7).all()  # 9 minus 2
    e0 = df[(df.epoch == 0) & ~df.downsample]
    assert s["n_equivalent"].iloc[0] == e0["equivalent"].sum()
    assert s["median_change"].iloc[0] == e0["error_change"].median()
    # read back from a CSV, booleans are text: the same numbers
    assert emergence.per_epoch(pd.read_csv(pd.io.common.StringIO(df.to_csv()))).equals(s)
    assert emergence.lr_drops(s) == [4]  # lesions at 2 and 4: the first at a lower rate is 4


def test_settled_from_ignores_a_share_that_does_not_last():
    """At initialisation every deletion leaves a net at chance ("equivalent"): that share,
    lost at epoch 1, is not when robustness emerged; one held to the last lesion epoch is."""
    d = pd.DataFrame({"epoch": [0, 1, 2, 5, 8], "share_equivalent": [1.0, 0.0, 0.6, 0.4, 0.7]})
    assert emergence.settled_from(d) == 8
    assert emergence.settled_from(d.assign(share_equivalent=[1, 0, 0.6, 0.5, 0.9])) == 2
    assert emergence.settled_from(d.assign(share_equivalent=[1, 0, 0.6, 0.9, 0.1])) is None
    assert emergence.settled_from(d.iloc[::-1]) == 8  # order of rows does not matter


def test_missing_or_empty_tables_are_one_line(tmp_path):
    from ablate._infra.errors import UsageError

    with pytest.raises(UsageError, match="no lesion table"):
        emergence.read_run(tmp_path)
    L.write_table(tmp_path / L.TABLE, [])
    with pytest.raises(UsageError, match="no rows yet"):
        emergence.read_run(tmp_path)


def test_a_table_beside_another_runs_card_or_log_is_refused(runs, tmp_path):
    """A checkpoint re-trained under its name with one of its three files left behind: the
    lesion epochs would be read at another run's learning rates and named after its card."""
    from ablate._infra.errors import UsageError

    src = runs["const"]
    for f in ("const.lesions.csv", "const.log.csv", "const.json"):
        (tmp_path / f).write_bytes((src / f).read_bytes())
    shipped = tmp_path / "const.lesions.csv"
    assert emergence.read_run(shipped)["lr"].notna().sum() == 3 * 9  # epochs 1, 2, 4
    card = json.loads((src / "const.json").read_text())
    old = {k: v for k, v in card.items() if k != "lesions"}  # the card of a run without lesions
    (tmp_path / "const.json").write_text(json.dumps(old))
    with pytest.raises(UsageError, match="not the card of the run"):
        emergence.read_run(shipped)
    (tmp_path / "const.json").write_text(json.dumps(
        card | {"lesions": card["lesions"] | {"seconds": card["lesions"]["seconds"] + 5}}))
    with pytest.raises(UsageError, match="not the card of the run"):  # same epochs, other run
        emergence.read_run(shipped)
    (tmp_path / "const.json").write_text("[1, 2]")
    with pytest.raises(UsageError, match="not a card"):
        emergence.read_run(shipped)
    (tmp_path / "const.json").write_text("{")
    with pytest.raises(UsageError, match="not a readable card"):
        emergence.read_run(shipped)
    (tmp_path / "const.json").write_bytes((src / "const.json").read_bytes())
    log = pd.read_csv(src / "const.log.csv")
    log[log.epoch <= 2].to_csv(tmp_path / "const.log.csv", index=False)  # a shorter run's log
    with pytest.raises(UsageError, match="not the log of the run"):
        emergence.read_run(shipped)
    (tmp_path / "const.json").unlink()  # no card: a live run, whose last lesion epoch may lead
    assert emergence.read_run(shipped)["lr"].isna().sum() == 2 * 9  # epochs 0 and 4
    log[log.epoch <= 1].to_csv(tmp_path / "const.log.csv", index=False)
    with pytest.raises(UsageError, match="ends at epoch 1; the lesions reach epoch 4"):
        emergence.read_run(shipped)
    with pytest.raises(SystemExit) as e:  # the command: one line, exit status 2
        main(["emergence", str(shipped), "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and not (tmp_path / "o").exists()


def test_command_figure_and_verdict(runs, tmp_path):
    out = tmp_path / "o"
    assert main(["emergence", str(runs["const"]), str(runs["sd"]), "--out", str(out)]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["analysis"] == "emergence" and meta["lesion_images"] == [40]
    assert (out / "emergence.png").exists()
    root = tmp_path / "repro"
    (root / "results").mkdir(parents=True)
    (out).rename(root / "results" / "emergence")
    (f,) = emergence.verdicts(root)
    assert f.verdict == "new" and "const:" in f.ours and "sd:" in f.ours
    assert "half the blocks" in f.ours and "intact error" in f.ours
    assert "downsampling blocks" in f.ours and "across the drop at epoch 4: epoch 2" in f.ours
    assert "const: at epoch 1 (" in f.ours  # the first trained epoch, not the net at chance
    assert "stochastic depth: " in f.ours  # the pair compared, in words
    assert "described, not judged" in f.criterion
    assert emergence.verdicts(tmp_path / "none")[0].verdict == "not run"
    fig = plot(pd.read_csv(root / "results" / "emergence" / "results.csv"))
    gids = {a.get_gid() for ax in fig.axes for a in ax.get_children()}
    assert {"median:const", "median:sd", "downsample:const", "downsample:sd", "heatmap:const",
            "heatmap:sd", "drop:const:4", "drop:sd:4"} <= gids  # the drop between rows 2 and 4


def test_reproduce_reads_the_shipped_tables_of_the_pair(runs, tmp_path, monkeypatch):
    """The reproduction's step runs on the pair's bundled NAME.lesions.csv, named as the pair;
    without them it is not run (None)."""
    from analyses.plan import Plan, Settings

    monkeypatch.setenv("ABLATE_CHECKPOINTS", str(tmp_path))
    plan = Plan(resnets=("const",), plain=None, paths="const", gradnorm=(),
                stochastic=("const", "sd"), zoo=())
    assert emergence.reproduce(plan, Settings()) is None
    for name in ("const", "sd"):
        (tmp_path / f"{name}.lesions.csv").write_bytes(
            (runs[name] / f"{name}.lesions.csv").read_bytes())
    o = emergence.reproduce(plan, Settings())
    assert o.names == ["const", "sd"] and [p.endswith(".lesions.csv") for p in o.runs] == [
        True, True]
    df = emergence.read_runs(o.runs, o.names)
    assert set(df["model"]) == {"const", "sd"}
