"""Figures from synthetic tidy tables: theme, saving, and the single-block plot."""

from __future__ import annotations

import struct

import matplotlib
import matplotlib.colors as mcolors
import numpy as np
import pandas as pd
import pytest
from matplotlib.lines import Line2D

from figures import delete_block, theme

N_IMAGES = 500


def _rows(model: str, n_blocks: int, per_stage: int, intact: float, seed: int) -> list[dict]:
    """One model's single-block table; blocks 0-based, downsampling at stage starts."""
    rng = np.random.default_rng(seed)
    rows = []
    for b in range(n_blocks):
        stage = b // per_stage + 1
        ds = b > 0 and b % per_stage == 0
        err = float(np.clip(intact + (0.5 if ds else 0.03) + rng.uniform(0, 0.03), 0, 1))
        half = 1.96 * np.sqrt(err * (1 - err) / N_IMAGES)
        rows.append(
            {
                "model": model,
                "family": theme.family_of(model),
                "dataset": "cifar10",
                "split": "test",
                "n_images": N_IMAGES,
                "block": b,
                "block_name": f"layer{stage}.{b % per_stage}",
                "stage": stage,
                "downsample": ds,
                "errors": round(err * N_IMAGES),
                "error": err,
                "error_low": max(err - half, 0.0),
                "error_high": min(err + half, 1.0),
                "intact_error": intact,
                "error_change": err - intact,
                "loss": 2 * err,
                "loss_low": 2 * err - 0.1,
                "loss_high": 2 * err + 0.1,
                "intact_loss": 2 * intact,
                "p_value": 0.01,
            }
        )
    return rows


def _plain_rows(model: str, n_units: int, intact: float) -> list[dict]:
    """A plain net: deleting any unit is catastrophic."""
    rows = _rows(model, n_units, n_units // 3 + 1, intact, seed=3)
    for r in rows:
        r.update(error=0.88, error_low=0.85, error_high=0.91, error_change=0.88 - intact)
    return rows


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    rows = (
        _rows("resnet20", 9, 3, intact=0.08, seed=0)
        + _rows("resnet20-sd", 9, 3, intact=0.07, seed=1)
        + _plain_rows("plain20", 16, intact=0.10)
    )
    return pd.DataFrame(rows)


def _png_size(path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def _error_lines(ax) -> dict[str, Line2D]:
    return {
        line.get_gid().split(":", 1)[1]: line
        for line in ax.get_lines()
        if (line.get_gid() or "").startswith("error:")
    }


@pytest.mark.parametrize(
    "name, family",
    [
        ("plain20", "plain"),
        ("plain110", "plain"),
        ("preact_resnet110", "preact"),
        ("resnet110-sd", "stochastic_depth"),
        ("resnet56_stochastic", "stochastic_depth"),
        ("resnet18", "torchvision"),
        ("resnet34", "torchvision"),
        ("resnet50", "torchvision"),
        ("resnet101", "torchvision"),
        ("resnet152", "torchvision"),
        ("vgg16_bn", "torchvision"),
        ("resnet20", "resnet"),
        ("resnet32", "resnet"),
        ("resnet44", "resnet"),
        ("resnet56", "resnet"),
        ("resnet110", "resnet"),
        ("resnet1202", "resnet"),
        ("published-resnet110", "reference"),
    ],
)
def test_family_of(name, family):
    assert theme.family_of(name) == family


def test_family_of_unknown_and_colors():
    with pytest.raises(ValueError):
        theme.family_of("densenet121")
    assert set(theme.FAMILY_COLORS) == set(theme.FAMILY_LABELS)
    assert len(set(theme.FAMILY_COLORS.values())) == len(theme.FAMILY_COLORS)
    assert theme.family_color("resnet") == theme.FAMILY_COLORS["resnet"]
    assert theme.family_color("resnet110-sd") == theme.FAMILY_COLORS["stochastic_depth"]
    assert theme.FAMILY_LABELS["reference"] == "published"


def test_import_leaves_rcparams_alone():
    import importlib

    before = dict(matplotlib.rcParams)
    importlib.reload(theme)
    assert dict(matplotlib.rcParams) == before


@pytest.mark.parametrize("size, inches", [("one", theme.ONE_COLUMN), ("two", theme.TWO_COLUMN)])
def test_save_writes_pdf_and_png(tmp_path, size, inches):
    fig, ax = theme.figure(size)
    ax.plot([0, 1], [0, 1])
    theme.note(ax, "quick run: 500 images")
    paths = theme.save(fig, tmp_path / "sub" / "fig")
    pdf, png = paths
    assert [p.name for p in paths] == ["fig.pdf", "fig.png"]
    assert pdf.stat().st_size > 0 and pdf.read_bytes()[:4] == b"%PDF"
    assert _png_size(png) == (round(inches[0] * 300), round(inches[1] * 300))
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["fig.pdf", "fig.png"]
    import matplotlib.pyplot as plt

    assert not plt.fignum_exists(fig.number)  # closed


def test_one_axes_per_panel_family(table):
    fig = delete_block.plot(table)
    # resnet20 and its stochastic-depth twin share the ResNet panel; plain20 has its own; each
    # has a change panel under it.
    assert len(fig.axes) == 4
    titles = [ax.get_title(loc="left") for ax in fig.axes[:2]]
    assert titles == ["ResNet", "plain"]
    assert set(_error_lines(fig.axes[0])) == {"resnet20", "resnet20-sd"}
    assert set(_error_lines(fig.axes[1])) == {"plain20"}
    assert fig.get_size_inches().tolist() == pytest.approx([7.0, 2.8 * 1.75])

    only_resnet = delete_block.plot(table[table["model"] == "resnet20"])
    assert len(only_resnet.axes) == 2
    assert only_resnet.get_size_inches().tolist() == pytest.approx([3.4, 2.4 * 1.75])

    preact = table[table["model"] == "resnet20"].assign(model="preact_resnet20", family="preact")
    three = delete_block.plot(pd.concat([table, preact]))
    assert len(three.axes) == 6
    import matplotlib.pyplot as plt

    plt.close("all")


def test_two_depths_of_a_family_do_not_share_a_block_axis(table):
    """resnet56 and resnet110: their downsampling blocks sit at different indices, so each depth
    has its own panel (and its own grey lines)."""
    import matplotlib.pyplot as plt

    deep = pd.DataFrame(_rows("resnet56", 27, 9, intact=0.07, seed=5))
    fig = delete_block.plot(pd.concat([table, deep], ignore_index=True))
    titles = [ax.get_title(loc="left") for ax in fig.axes[:3]]
    assert titles == ["ResNet, 9 units", "ResNet, 27 units", "plain"]
    assert set(_error_lines(fig.axes[1])) == {"resnet56"}
    grey = [ln.get_xdata()[0] for ln in fig.axes[1].get_lines()
            if mcolors.to_hex(ln.get_color()) == "#dddddd"]
    assert sorted(grey) == [9, 18]  # resnet56's downsampling blocks only
    plt.close(fig)


def test_change_panel_draws_points_with_intervals_and_the_margin(table):
    """Fig. 3's 0-100% axis hides a point's change: under it, the change in points with its
    paired interval and the ±1-point band of the verdict."""
    import matplotlib.pyplot as plt

    t = table.assign(change_low=table.error_change - 0.004, change_high=table.error_change + 0.006)
    fig = delete_block.plot(t[t["model"] == "resnet20"])
    low = fig.axes[1]
    pts = {ln.get_gid(): ln for ln in low.get_lines() if ln.get_gid()}
    want = t[t.model == "resnet20"].sort_values("block").error_change * 100
    assert np.allclose(pts["change:resnet20"].get_ydata(), want)
    (bars,) = low.containers  # the paired intervals
    seg = bars.lines[2][0].get_segments()[0]
    assert np.allclose([seg[0][1], seg[1][1]], [want.iloc[0] - 0.4, want.iloc[0] + 0.6])
    assert low.get_ylabel() == "change (points)"
    band = [p for p in low.patches if p.get_gid() == "margin"]
    assert len(band) == 1
    labels = [tx.get_text() for tx in fig.legends[0].get_texts()]
    assert "±1 point (change panel)" in labels
    plt.close(fig)


def test_intact_line_height_and_y_axis(table):
    fig = delete_block.plot(table)
    for ax in fig.axes[:2]:
        dashed = {
            line.get_gid().split(":", 1)[1]: line
            for line in ax.get_lines()
            if line.get_linestyle() == "--"
        }
        models = set(_error_lines(ax))
        assert set(dashed) == models
        for model, line in dashed.items():
            intact = table.loc[table["model"] == model, "intact_error"].iloc[0]
            assert np.allclose(line.get_ydata(), intact * 100)
            color = table.loc[table["model"] == model, "family"].iloc[0]
            assert mcolors.to_hex(line.get_color()) == mcolors.to_hex(theme.family_color(color))
        chance = [ln for ln in ax.get_lines() if ln.get_linestyle() == ":"]
        assert len(chance) == 1 and np.allclose(chance[0].get_ydata(), 90.0)
        assert ax.get_ylim() == (0.0, 100.0)
        # the plotted error is in percent
        for model, line in _error_lines(ax).items():
            want = table.loc[table["model"] == model].sort_values("block")["error"] * 100
            assert np.allclose(line.get_ydata(), want)
    assert fig.axes[0].get_ylabel() == "test error (%)"
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_chance_from_num_classes(table):
    fig = delete_block.plot(table[table["model"] == "resnet20"].assign(num_classes=100))
    chance = [ln for ln in fig.axes[0].get_lines() if ln.get_linestyle() == ":"]
    assert len(chance) == 1 and np.allclose(chance[0].get_ydata(), 99.0)
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_downsampling_blocks_marked(table):
    fig = delete_block.plot(table)
    ax = fig.axes[0]
    hollow = [ln for ln in ax.get_lines() if (ln.get_gid() or "") == "downsample:resnet20"]
    assert len(hollow) == 1
    assert hollow[0].get_xdata().tolist() == [3, 6]
    assert mcolors.to_hex(hollow[0].get_markerfacecolor()) == "#ffffff"
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "downsampling block" in labels and "intact network" in labels
    assert {"resnet20", "resnet20-sd", "plain20"} <= set(labels)
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_family_colors_consistent_across_figures(table):
    want = mcolors.to_hex(theme.FAMILY_COLORS["resnet"])
    subsets = [
        table,
        table[table["model"] == "resnet20"],
        table[table["model"] != "plain20"],
        table[table["model"] != "resnet20-sd"].iloc[::-1],  # row order must not matter
    ]
    for sub in subsets:
        fig = delete_block.plot(sub)
        lines = [ln for ax in fig.axes for ln in ax.get_lines() if ln.get_gid() == "error:resnet20"]
        assert len(lines) == 1 and mcolors.to_hex(lines[0].get_color()) == want
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_duplicate_rows_rejected(table):
    with pytest.raises(ValueError, match="several rows"):
        delete_block.plot(pd.concat([table, table.assign(dataset="cifar10-jpeg")]))


def test_vit_branches_drawn_beside_their_layer(table):
    """Branch rows (granularity "branch") are drawn at their layer's index as two extra lines
    in the ViT's panel; the whole-block line is the block rows alone."""
    import matplotlib.pyplot as plt

    vit = pd.DataFrame(_rows("vit_cifar", 7, 7, intact=0.1, seed=4)).assign(granularity="block")
    branches = pd.DataFrame([{**vit.iloc[b // 2].to_dict(), "granularity": "branch",
                              "block": b, "layer": b // 2, "branch": ("attn", "mlp")[b % 2],
                              "error": 0.1 + 0.01 * b} for b in range(14)])
    fig = delete_block.plot(pd.concat([table, vit, branches], ignore_index=True))
    ax = next(a for a in fig.axes if a.get_title(loc="left") == "ViT")
    lines = {ln.get_gid(): ln for ln in ax.get_lines() if ln.get_gid()}
    assert list(lines["error:vit_cifar"].get_xdata()) == list(range(7))
    attn = lines["branch:vit_cifar:attn"]
    assert list(attn.get_xdata()) == list(range(7))
    assert np.allclose(attn.get_ydata(), [10 + 2 * i for i in range(7)])
    assert np.allclose(lines["branch:vit_cifar:mlp"].get_ydata(), [11 + 2 * i for i in range(7)])
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "vit_cifar: attention branch only" in labels and "vit_cifar: MLP branch only" in labels
    plt.close(fig)


def test_cli_writes_both_files(table, tmp_path, capsys):
    csv = tmp_path / "results.csv"
    table.to_csv(csv, index=False)
    out = tmp_path / "out"
    assert delete_block.main([str(csv), "--out", str(out), "--note", "quick run: 500 images"]) == 0
    pdf, png = out / "delete_block.pdf", out / "delete_block.png"
    assert pdf.read_bytes()[:4] == b"%PDF"
    assert _png_size(png) == (round(7.0 * 300), round(2.8 * 1.75 * 300))
    assert str(pdf) in capsys.readouterr().out


def test_models_of_one_family_differ_in_colour():
    from figures import theme

    c = theme.model_colors(["resnet110", "resnet56", "resnet110-sd", "plain56"],
                           ["resnet", "resnet", "stochastic_depth", "plain"])
    fam = {k: v.lower() for k, v in theme.FAMILY_COLORS.items()}
    assert c["resnet110"] == fam["resnet"]  # the first keeps the family colour
    assert c["resnet56"] not in fam.values()  # the second is a lighter shade
    assert c["resnet110-sd"] == fam["stochastic_depth"] and c["plain56"] == fam["plain"]
    assert len(set(c.values())) == 4


def test_redundancy_panels_and_rho(tmp_path):
    """One panel per measure (angular distance: the longest window), points only for blocks in
    the correlation, each model's rho in its panel."""
    import matplotlib.pyplot as plt

    from figures import redundancy

    rows = []
    for model, fam in (("resnet56", "resnet"), ("vit_cifar", "vit")):
        for measure, n in (("block_influence", 1), ("contribution_ratio", 1),
                           ("angular_distance", 1), ("angular_distance", 2)):
            for b in range(5 - n + 1):
                rows.append({"model": model, "family": fam, "measure": measure, "n": n,
                             "block": b, "value": 0.1 * (b + 1), "error_change": 0.01 * b,
                             "in_correlation": b != 2, "rho_error": 0.8, "rho_error_low": 0.4,
                             "rho_error_high": 0.95})
    df = pd.DataFrame(rows)
    assert redundancy.panels(df) == [("block_influence", 1), ("contribution_ratio", 1),
                                     ("angular_distance", 2)]
    fig = redundancy.plot(df)
    assert len(fig.axes) == 3
    pts = {ln.get_gid(): ln for ax in fig.axes for ln in ax.get_lines() if ln.get_gid()}
    assert list(pts["points:vit_cifar:block_influence:1"].get_xdata()) == pytest.approx(
        [0.1, 0.2, 0.4, 0.5])  # block 2 is out of the correlation
    assert len(pts["points:resnet56:angular_distance:2"].get_xdata()) == 3
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert any("vit_cifar: ρ = 1.00 (p = 0.042, 4 units)" in t for t in texts)  # 1 of 24
    plt.close(fig)


def test_paths_veit_range_sits_on_the_axis_not_at_a_height():
    """Fig. 6c: Veit's 5-17 is a range of lengths with no height of ours: drawn on the x axis
    (axes coordinates), whatever our curve's peak; small shares keep two significant digits."""
    import matplotlib.pyplot as plt

    from ablate.measures import paths as ps
    from figures import paths

    n, ks = 54, np.arange(0, 55, 6)
    mag = 10.0 ** (-0.6 * ks)
    base = {"model": "resnet110", "family": "resnet", "n_blocks": n}
    total = ps.total_gradient(ps.path_counts(n, log=True), ps.log_interpolate(ks, mag, n))
    r = ps.effective_range(total, 0.9)
    rows = ([{**base, "kind": "gradient_magnitude", "tap": "input", "k": int(k), "value": v,
              "low": v / 2, "high": v * 2} for k, v in zip(ks, mag)]
            + [{**base, "kind": "path_fraction", "k": k, "value": v}
               for k, v in enumerate(ps.length_distribution(n))]
            + [{**base, "kind": "total_gradient", "k": k, "value": v,
                "in_range": r.lo <= k <= r.hi} for k, v in enumerate(total)])
    fig = paths.plot(pd.DataFrame(rows))
    ax = fig.axes[2]
    (bar,) = [ln for ln in ax.get_lines() if ln.get_gid() == "published"]
    assert bar.get_transform() == ax.get_xaxis_transform()
    assert list(bar.get_ydata()) == [0.03, 0.03] and list(bar.get_xdata()) == [4.5, 17.5]
    texts = [t.get_text() for t in ax.texts]
    assert "Veit et al.: 5–17" in texts
    assert any("% of paths" in t and "0.00%" not in t for t in texts)
    plt.close(fig)
