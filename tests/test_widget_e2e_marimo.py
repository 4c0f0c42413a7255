"""End to end in marimo (``marimo run``, headless chromium): the widget is usable under marimo's CSS
reset (fields and buttons have borders), acts, and a cell that reads the widget's ``value`` re-runs
after an action (reactive notebooks see the session change).  Skipped without marimo.
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
from test_widget_e2e import ARTIFACTS, CHROMIUM, ROOT, _free_port, launch, stop_server

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed")

APP = '''\
import marimo

app = marimo.App()


@app.cell
def _():
    import os
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import marimo as mo
    from paoding_widgets import PruningSession

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu", name="h1"),
                              keras.layers.Dense(12, activation="relu", name="h2"), keras.layers.Dense(3, name="out")])
    session = PruningSession(model, n_probes=64, step=0.25)
    view = mo.ui.anywidget(session.widget())
    return mo, session, view


@app.cell
def _(view):
    view
    return


@app.cell
def _(mo, view):
    mo.md(f"session at position {view.value['value'].get('position')}")
    return


if __name__ == "__main__":
    app.run()
'''


@pytest.fixture(scope="module")
def marimo_app(tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("marimo")
    work = tmp_path_factory.mktemp("marimo")
    (work / "app.py").write_text(APP)
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2", "HOME": str(work),
           "XDG_CONFIG_HOME": str(work / ".config"), "XDG_CACHE_HOME": str(work / ".cache")}
    log = open(work / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "marimo", "run", "app.py", "--headless", "--no-token",
                             "--host", "127.0.0.1", "--port", str(port)], cwd=work, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(base, timeout=1)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail(f"marimo did not start:\n{(work / 'server.log').read_text()[-3000:]}")
    yield {"url": base, "work": work}
    stop_server(proc, log)


def test_the_widget_in_marimo(pw, marimo_app, tmp_path_factory: pytest.TempPathFactory):
    ctx = launch(pw, tmp_path_factory.mktemp("chrome_marimo"), 1200, 1000)
    try:
        page = ctx.new_page()
        page.set_default_timeout(120_000)
        page.goto(marimo_app["url"])
        page.wait_for_selector(".pw-root .pw-row[data-layer='h1']")
        page.wait_for_selector("text=session at position 0")
        # marimo's reset: the fields and buttons still have borders
        borders = [page.locator(f".pw-root {s}").evaluate("e => getComputedStyle(e).borderTopWidth")
                   for s in (".pw-step", ".pw-target", ".pw-export-path", ".pw-propose")]  # in a shadow root
        assert all(b not in ("0px", "") for b in borders), borders
        page.click(".pw-root .pw-propose")
        page.wait_for_selector(".pw-row[data-layer='h1'][data-status='pending']")
        page.wait_for_selector("text=session at position 1", timeout=60_000)  # the reading cell re-ran
        page.locator(".pw-row[data-layer='h1'] .pw-accept").click()
        page.wait_for_selector(".pw-row[data-layer='h1'][data-status='accepted']")
        page.wait_for_selector("text=session at position 2", timeout=60_000)
        page.screenshot(path=str(ARTIFACTS / "decide_marimo.png"), full_page=True)
    finally:
        ctx.close()
    shutil.rmtree(marimo_app["work"] / ".cache", ignore_errors=True)
