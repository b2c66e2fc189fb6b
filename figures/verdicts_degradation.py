"""The verdict on He et al.'s degradation problem (2015, Fig. 6 and Table 6): a deeper plain net
tests worse, a deeper ResNet better, on the same test images."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from figures.verdicts import ONE_SEED, Finding, fig, pct, read

__all__ = ["HE_2015_RESNET", "degradation"]

HE_2015_RESNET = {"resnet20": 8.75, "resnet56": 6.97}  # Table 6, quoted
CRITERION = ("deepest minus shallowest net of each family on the same images: the plain net's "
             "95% paired interval entirely above 0 and the ResNet's entirely below 0 (both: "
             "reproduces; one: partly); " + ONE_SEED)


def _depths(df: pd.DataFrame) -> str:
    parts = []
    for fam, d in df.sort_values("depth").groupby("family", sort=False):
        parts.append(f"{fam}: " + ", ".join(
            f"{int(r.depth)} {pct(r.error)} [{pct(r.error_low)}, {pct(r.error_high)}]"
            for r in d.itertuples()))
    return "; ".join(parts)


def _contrast(r) -> str:
    return (f"{r.a} - {r.b} {100 * r.difference:+.2f} points (95% paired interval "
            f"{100 * r.difference_low:+.2f} to {100 * r.difference_high:+.2f}, McNemar p = "
            f"{r.p_value:.2g})")


def degradation(root: Path) -> list[Finding]:
    from analyses.degradation import compare

    claim = ("Degradation: a deeper plain net errs more (plain-56 above plain-20, Fig. 6), a "
             f"deeper ResNet less (ResNet-20 {HE_2015_RESNET['resnet20']}% -> ResNet-56 "
             f"{HE_2015_RESNET['resnet56']}%, Table 6).")
    df, _ = read(root, "degradation")
    if df is None:
        return [Finding("He et al. Fig. 6", claim, "-", "not run", CRITERION)]
    pairs = compare(df)
    within = {c.split(":")[0]: r for c, r in zip(pairs.contrast, pairs.itertuples())
              if c.endswith("deepest vs shallowest")}
    across = pairs[pairs.contrast == "plain vs resnet"]
    if not {"plain", "resnet"} <= set(within):
        return [Finding("He et al. Fig. 6", claim, _depths(df), "not run",
                        CRITERION + "; needs two depths of each family")]
    plain_up = within["plain"].difference_low > 0
    res_down = within["resnet"].difference_high < 0
    verdict = ("reproduces" if plain_up and res_down else "partly" if plain_up or res_down
               else "does not reproduce")
    ours = (f"test error by depth [95% Wilson]: {_depths(df)}; {_contrast(within['plain'])}; "
            f"{_contrast(within['resnet'])}; plain-n vs ResNet-n: "
            + ", ".join(f"{int(r.depth)}: {100 * r.difference:+.2f} points (p = {r.p_value:.2g})"
                        for r in across.itertuples()))
    return [Finding("He et al. Fig. 6", claim, ours, verdict, CRITERION, fig(root, "degradation"))]
