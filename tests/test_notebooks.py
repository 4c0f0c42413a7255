"""Every example notebook runs top to bottom in a real kernel (nbclient) without an error.

Select with ``python3 -m pytest -k notebooks``.  The notebooks share one fresh
demo cache (``PAODING_DEMO_CACHE`` in a temporary directory), so the first
notebook that loads a demo trains it, as on a fresh machine, and the tests
neither depend on nor write to the user's ``~/.cache``.  Each notebook runs
with a temporary working directory; the notebooks themselves write only into
``tempfile.mkdtemp()`` directories, and the test checks that nothing appears
beside them in ``example_notebooks/``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "example_notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Environment inherited by the kernels: a fresh demo cache, quiet TensorFlow."""
    cache = tmp_path_factory.mktemp("demo-cache")
    wanted = {"PAODING_DEMO_CACHE": str(cache), "TF_CPP_MIN_LOG_LEVEL": "2"}
    saved = {k: os.environ.get(k) for k in wanted}
    os.environ.update(wanted)
    try:
        yield cache
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_carry_no_saved_widget_state(path: Path) -> None:
    """Saved widget state (the bundle's JS and CSS of the day it ran) would shadow the live widget's."""
    assert "widgets" not in nbformat.read(path, as_version=4).metadata, f"{path.name}: clear its widget state"


def test_notebooks_are_there() -> None:
    stems = [p.stem[:2] for p in NOTEBOOKS]
    assert stems[:5] == ["01", "02", "03", "04", "05"], NOTEBOOKS


DIGIT_NOTEBOOKS = [p for p in NOTEBOOKS if p.stem[:2] in ("01", "02", "03", "04")]


@pytest.mark.parametrize("path", DIGIT_NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_on_the_digits_fallback(path: Path, kernel_env: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline without MNIST the demos use scikit-learn's 8x8 digits: every notebook must still run."""
    monkeypatch.setenv("PAODING_DIGITS", "sklearn")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT_S, record_timing=False,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "scikit-learn digits" in printed  # the notebook says which data it ran on


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path: Path, kernel_env: Path, tmp_path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:  # what GitHub shows must not be a traceback either
        if cell.cell_type == "code":
            assert not [o for o in cell.get("outputs", []) if o.output_type == "error"], (path.name, cell.source)
    beside = sorted(NOTEBOOK_DIR.iterdir())

    client = NotebookClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT_S, record_timing=False,
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error

    assert sorted(NOTEBOOK_DIR.iterdir()) == beside, "a notebook wrote into example_notebooks/"
    assert list(tmp_path.iterdir()) == [], "a notebook wrote into its working directory"
