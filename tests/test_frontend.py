"""The front end's own tests (vitest) and the freshness of the shipped bundle.

The bundle ``paoding_widgets/widget/static/widget.js`` is committed so that
``pip install`` gives a working widget without node; this test rebuilds it from
``js/src`` and fails if the committed file is stale (fix: ``npm run build``).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "paoding_widgets" / "widget" / "static" / "widget.js"
NODE_MODULES = ROOT / "node_modules"

pytestmark = pytest.mark.skipif(not (NODE_MODULES / ".bin" / "esbuild").exists() or shutil.which("npm") is None,
                                reason="front-end dev dependencies are not installed (run npm ci)")


def test_shipped_bundle_is_fresh(tmp_path: Path) -> None:
    out = tmp_path / "widget.js"
    subprocess.run([str(NODE_MODULES / ".bin" / "esbuild"), "js/src/widget.js", "--bundle", "--format=esm",
                    "--target=es2020", f"--outfile={out}", "--log-level=error"], cwd=ROOT, check=True)
    assert out.read_text() == BUNDLE.read_text(), "the shipped widget bundle is stale: run `npm run build`"


def test_vitest_suite_passes() -> None:
    proc = subprocess.run(["npm", "test", "--silent"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "passed" in proc.stdout
