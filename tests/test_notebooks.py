"""Every notebook in notebooks/ runs headlessly, cell by cell, without errors (small configuration).

The notebooks run in a fresh kernel of THIS interpreter (a kernel spec written to a temporary
JUPYTER_PATH), with FITEM_NB_QUICK=1 (the notebooks' parameter cells pick a small working size and few
rounds), in a temporary working directory so that nothing is written into the repository. Notebook 02's
Basel cells get stand-in files: the demo model written in the BFM 2017 (statismo HDF5) and BFM 2009
(``01_MorphableModel.mat``) layouts, so those cells run for real instead of skipping.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (pip install -e '.[dev]')")
nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed (pip install -e '.[dev]')")
pytest.importorskip("ipykernel", reason="ipykernel is not installed (pip install -e '.[dev]')")

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
KERNEL = "fitem-test-python"
CELL_TIMEOUT_S = 300  # generous: the suite may share a busy 2-core machine


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
    """A kernel spec for this interpreter, the quick switch, and a scratch working directory."""
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "fitem test kernel", "language": "python",
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("FITEM_NB_QUICK", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend, no display needed
    for var in ("FITEM_BFM2017", "FITEM_BFM2009"):
        monkeypatch.delenv(var, raising=False)
    work = tmp_path / "work"
    work.mkdir()
    return work


def _demo_as_basel(folder: Path) -> tuple[Path, Path]:
    """The demo model written as a BFM 2017 statismo .h5 and a BFM 2009 .mat (no iBUG-68 landmarks)."""
    from fitem.models import load_model
    from tests.models import bfm_files as bf

    m = load_model("demo")

    def split(block):
        std = np.linalg.norm(block.basis.astype(np.float64), axis=0)
        return block.basis / std, std

    su, ss = split(m.shape)
    eu, es = split(m.expression)
    cu, cs = split(m.colour)
    face = bf.Face(mean=m.shape.mean.astype(np.float64), shape_u=su, shape_std=ss,
                   expr_mean=m.expression.mean.astype(np.float64), expr_u=eu, expr_std=es,
                   colour_mean=m.colour.mean.astype(np.float64), colour_u=cu, colour_std=cs,
                   tri_out=m.triangles, centre=np.zeros(3))
    h5 = bf.write_statismo(folder / "model2017-demo-layout.h5", face)
    mat = bf.write_mat_v5(folder / "01_MorphableModel-demo-layout.mat", bf.bfm2009_arrays(face))
    return h5, mat


def _run(path: Path, work: Path) -> "nbformat.NotebookNode":
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name=KERNEL,
                                     resources={"metadata": {"path": str(work)}})
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as exc:  # name the notebook and the failing cell
        pytest.fail(f"{path.name}: a cell raised\n{exc}")
    return nb


def _text(nb) -> str:
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            if o.get("output_type") == "stream":
                out.append(o.get("text", ""))
    return "".join(out)


def test_notebooks_exist_and_are_stripped():
    assert {p.name for p in NOTEBOOKS} >= {"01_quickstart.ipynb", "02_your_own_model.ipynb"}
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(c.outputs == [] and c.execution_count is None for c in code), \
            f"{path.name} is committed with outputs; strip them (e.g. jupyter nbconvert --clear-output)"
        assert any("parameters" in c.metadata.get("tags", []) for c in code), \
            f"{path.name} has no cell tagged 'parameters'"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, kernel_env, tmp_path, monkeypatch):
    if path.name.startswith("02_"):
        h5, mat = _demo_as_basel(tmp_path)
        monkeypatch.setenv("FITEM_BFM2017", str(h5))
        monkeypatch.setenv("FITEM_BFM2009", str(mat))
    nb = _run(path, kernel_env)
    text = _text(nb)
    assert "Traceback" not in text
    if path.name.startswith("01_"):
        assert "loaded back: success" in text
        assert (kernel_env / "fitem-quickstart" / "astronaut" / "params.json").is_file()
    if path.name.startswith("02_"):
        # both stand-in Basel files were converted, given landmarks and fitted (not skipped)
        assert "is not set: skipping" not in text
        assert text.count("picked iBUG-68 landmark vertices from a render") == 2
        assert "fit with model2017-demo-layout: success" in text
        assert "fit with 01_MorphableModel-demo-layout: success" in text
    images = sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    assert images >= 3, f"{path.name} drew only {images} pictures"
