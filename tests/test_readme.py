"""The README's code stays true: every Python block runs, in order, and its commands exist."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index: int, tmp_path: Path) -> None:
    """Each block runs as a fresh script (a reader pastes them one at a time), in an empty folder."""
    code = BLOCKS[index]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3",
           "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"README block {index} failed:\n{code}\n--- stderr ---\n{proc.stderr[-3000:]}"


def test_readme_shell_commands_name_real_entry_points() -> None:
    from paoding_widgets.cli import build_parser

    parser = build_parser()
    for line in re.findall(r"^(?:\.venv/bin/)?paoding-widgets (.+?)(?:\s+#.*)?$", README, flags=re.M):
        argv = [a for a in line.replace("\\", " ").split() if not a.startswith("[")]
        if "prune" in argv:
            continue  # needs a model file; the CLI tests run it
        parser.parse_args(argv)  # raises (one line) if the README names an option that does not exist
