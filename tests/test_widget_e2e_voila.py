"""End to end under Voila: the quickstart notebook served as an app, the widget renders and acts.

Voila runs every cell and shows outputs only (no code, no notebook commands), so this is the widget
alone in a page: it must render (anywidget's front end is loaded from its installed labextension),
a proposal must come back from the kernel, and accepting a layer must change the tree.
Screenshot: ``artifacts/e2e/voila.png``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from test_widget_e2e import ARTIFACTS, CHROMIUM, H1, H2, NOTEBOOK, _free_port, launch, row, stop_server

pytestmark = [pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed"),
              pytest.mark.skipif(shutil.which("voila") is None and not (Path(sys.executable).parent / "voila").exists(),
                                 reason="voila is not installed (pip install -e .[dev])")]


@pytest.fixture(scope="module")
def voila(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("voila")
    # Voila 0.5.13 fails the whole page on a Markdown image outside the folder it serves (HTTP 404 from
    # voila/exporter.py), and the quickstart shows ../docs/widget.png: the copy links a copy of the picture
    text = NOTEBOOK.read_text(encoding="utf-8")
    assert "../docs/widget.png" in text
    (work / NOTEBOOK.name).write_text(text.replace("../docs/widget.png", "widget.png"), encoding="utf-8")
    shutil.copy(NOTEBOOK.parents[1] / "docs" / "widget.png", work / "widget.png")
    port = _free_port()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "JUPYTER_CONFIG_DIR": str(work / ".jupyter"),
           "XDG_CONFIG_HOME": str(work / ".config"), "XDG_CACHE_HOME": str(work / ".cache")}
    cmd = [sys.executable, "-m", "voila", NOTEBOOK.name, "--no-browser", f"--port={port}", "--Voila.ip=127.0.0.1",
           "--show_tracebacks=True", "--Voila.token=", "--VoilaConfiguration.file_allowlist=[]"]
    log = open(work / "voila.log", "w")
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(f"{base}/api/status", timeout=1)
            break
        except OSError as exc:
            if getattr(exc, "code", None):  # the server answers (any HTTP status): it is up
                break
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail(f"voila did not start:\n{(work / 'voila.log').read_text()[-3000:]}")
    yield {"url": base + "/", "work": work}
    stop_server(proc, log)


def test_the_widget_renders_and_acts_under_voila(pw, voila, tmp_path_factory: pytest.TempPathFactory):
    ctx = launch(pw, tmp_path_factory.mktemp("chrome_voila"), 1300, 1000)
    try:
        page = ctx.new_page()
        lines: list[str] = []
        page.on("console", lambda m: lines.append(f"{m.type}: {m.text}"[:300]))
        page.on("pageerror", lambda e: lines.append(f"pageerror: {e}"[:300]))
        page.set_default_timeout(60_000)
        page.goto(voila["url"], timeout=300_000)  # Voila answers once every cell has run
        try:
            page.wait_for_selector(f".pw-root .pw-row[data-layer='{H1}']", timeout=300_000)
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "voila_failed.png"), full_page=True)
            raise AssertionError("no widget under Voila; console:\n" + "\n".join(lines[-30:])) from None
        assert not page.evaluate("document.body.innerText.includes('session.widget()')")  # no code: an app
        page.wait_for_selector(f".pw-heat[data-layer='{H1}']")  # heatmaps came over the comm (binary)
        page.click(".pw-propose")
        page.wait_for_selector(f".pw-row[data-layer='{H1}'][data-status='pending']")
        page.wait_for_selector(f".pw-preview[data-layer='{H1}'] .pw-preview-acc[data-state='done']",
                               timeout=120_000)
        row(page, H1).locator(".pw-accept").click()
        page.wait_for_selector(f".pw-row[data-layer='{H1}'][data-status='accepted']")
        assert row(page, H2).get_attribute("data-status") == "pending"
        units = row(page, H1).locator(".pw-units").inner_text()
        alive, total = (int(x) for x in units.split(" / "))
        assert alive < total == 128
        page.wait_for_selector(".pw-hist:has-text('accept')")
        page.screenshot(path=str(ARTIFACTS / "voila.png"), full_page=True)
    finally:
        ctx.close()
