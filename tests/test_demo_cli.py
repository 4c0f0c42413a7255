"""The README's main job: the headless demo through a real subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys


def test_demo_prunes_half_and_prints_table(tmp_path) -> None:
    # The demo caches its trained model; a fresh cache keeps the test off the user's ~/.cache.
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PAODING_DEMO_CACHE": str(tmp_path / "demos")}
    proc = subprocess.run([sys.executable, "-m", "paoding_widgets", "demo", "--strategy", "impact"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {m.group(1): m for m in re.finditer(r"^(original|impact)\s+([\d,]+)\s+\S+\s+\S+\s+([\d.]+)%",
                                                 proc.stdout, re.M)}
    assert set(rows) == {"original", "impact"}, proc.stdout
    params = {k: int(m.group(2).replace(",", "")) for k, m in rows.items()}
    acc = {k: float(m.group(3)) for k, m in rows.items()}
    assert params["impact"] < 0.6 * params["original"]
    assert acc["impact"] > 0.75 * acc["original"]  # data-free, 50 % of hidden units gone
    assert "50% of hidden units pruned" in proc.stdout


def test_cli_rejects_bad_target() -> None:
    proc = subprocess.run([sys.executable, "-m", "paoding_widgets", "demo", "--target", "1.5"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2
    assert "target" in proc.stderr and "1.5" in proc.stderr
