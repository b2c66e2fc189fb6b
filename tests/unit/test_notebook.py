"""notebooks/tour.ipynb runs top to bottom on tiny checkpoints and data (nbclient)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "tour.ipynb"


def test_tour_notebook_executes(tmp_path, tiny_checkpoints, image_folder, monkeypatch):
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    for path in tiny_checkpoints.values():
        shutil.copy(path, zoo / path.name)
        shutil.copy(path.with_suffix(".json"), zoo / path.with_suffix(".json").name)
    monkeypatch.setenv("ABLATE_CHECKPOINTS", str(zoo))
    monkeypatch.setenv("ABLATE_TOUR_DATA", str(image_folder))
    monkeypatch.setenv("ABLATE_TOUR_LIMIT", "30")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # The kernel imports this checkout, installed or not.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "stored outputs"
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={
        "metadata": {"path": str(tmp_path)}}).execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.outputs)
    assert "block 1 deleted" in text and "Spearman rho" in text
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if "image/png" in o.get("data", {})]
    assert len(images) >= 2  # the sweep figure and the path-gradient plot, drawn inline
