"""End to end: the quickstart notebook in JupyterLab, driven in Debian's chromium.

A person's session: run the notebook, propose, accept one layer, skip one, lock
one, propose again (the locked layer gets no proposal), undo, run to target,
cancel a run, export, switch to the dark theme -- checking the page and the
kernel-side session after each step; then a second view of the same session
cancels a run the first one started.  Screenshots go to ``artifacts/e2e/``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "example_notebooks" / "01_quickstart.ipynb"
ARTIFACTS = ROOT / "artifacts" / "e2e"
H1, H2, OUT = "dense", "dense_1", "dense_2"  # the quickstart MLP's layers (paoding_widgets.demos)

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(work: Path, app: str):
    """Start JupyterLab (``app="lab"``) or Notebook 7 (``"notebook"``) on a loopback port in ``work``."""
    shutil.copy(NOTEBOOK, work / NOTEBOOK.name)  # a copy: the repository's notebook is never rewritten
    port, token = _free_port(), "paoding-e2e"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "JUPYTER_CONFIG_DIR": str(work / ".jupyter"),
           "XDG_CONFIG_HOME": str(work / ".config"), "XDG_CACHE_HOME": str(work / ".cache"),
           "JUPYTERLAB_WORKSPACES_DIR": str(work / ".workspaces")}
    module, expose = {"lab": ("jupyterlab", "LabApp"), "notebook": ("notebook", "JupyterNotebookApp")}[app]
    cmd = [sys.executable, "-m", module, "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}",
           f"--IdentityProvider.token={token}", f"--{expose}.expose_app_in_browser=True",
           "--ServerApp.disable_check_xsrf=True", f"--ServerApp.root_dir={work}"]
    settings = work / ".settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    env["JUPYTERLAB_SETTINGS_DIR"] = str(work / ".settings")
    log = open(work / "server.log", "w")
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=1)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail(f"{module} did not start:\n{(work / 'server.log').read_text()[-3000:]}")
    path = f"/lab/tree/{NOTEBOOK.name}" if app == "lab" else f"/notebooks/{NOTEBOOK.name}"
    yield {"base": base, "token": token, "work": work, "url": f"{base}{path}?token={token}"}
    stop_server(proc, log)
    subprocess.run(["pkill", "-f", str(work)], check=False)  # kernels started from the temp runtime dir


def stop_server(proc: subprocess.Popen, log) -> None:
    """Stop a server started with ``start_new_session=True``: it and its children (kernels), then its log."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    log.close()


def server_fixture(name: str, app: str):
    """A module-scoped fixture serving the quickstart in JupyterLab (``"lab"``) or Notebook 7 (``"notebook"``)."""

    @pytest.fixture(scope="module")
    def serve(tmp_path_factory: pytest.TempPathFactory):
        if app == "notebook":
            pytest.importorskip("notebook", minversion="7")
        yield from _serve(tmp_path_factory.mktemp(name), app)

    return serve


# Debian chromium, headless, as root, on a closed network (background requests would be refused, many a time)
CHROME_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def launch(pw, profile: Path, width: int = 1400, height: int = 1000):
    """A persistent Chromium context with its own profile folder (never the user's)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return pw.chromium.launch_persistent_context(str(profile), executable_path=CHROMIUM, headless=True,
                                                 viewport={"width": width, "height": height}, args=CHROME_ARGS)


def _browse(pw, server: dict, profile: Path):
    """Chromium on the server's notebook, once its kernel is up."""
    ctx = launch(pw, profile)
    try:
        pg = ctx.new_page()
        pg.console_lines = []  # what the page logged, for the failure message
        pg.on("console", lambda m: pg.console_lines.append(f"{m.type}: {m.text}"[:300]))
        pg.on("pageerror", lambda e: pg.console_lines.append(f"pageerror: {e}"[:300]))
        pg.set_default_timeout(60_000)
        pg.goto(server["url"])
        pg.wait_for_function("window.jupyterapp && window.jupyterapp.shell.currentWidget "
                             "&& window.jupyterapp.shell.currentWidget.sessionContext")
        pg.wait_for_function("window.jupyterapp.shell.currentWidget.sessionContext.session?.kernel")
        yield pg
    finally:
        ctx.close()


lab = server_fixture("lab", "lab")


@pytest.fixture(scope="module")
def page(pw, lab, tmp_path_factory: pytest.TempPathFactory):
    yield from _browse(pw, lab, tmp_path_factory.mktemp("chrome"))


def open_widget(page, name: str) -> None:
    """Run every cell and wait for the widget's tree; on failure keep a screenshot and the console."""
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    try:
        page.wait_for_selector(f".pw-root .pw-row[data-layer='{H1}']", timeout=300_000)
    except Exception:
        shot(page, f"{name}_failed_to_open")
        raise AssertionError("the widget did not appear; console:\n" + "\n".join(page.console_lines[-30:])) from None


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


KERNEL_EVAL = """
async (code) => {
  const kernel = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
  let out = "";
  const future = kernel.requestExecute({ code, store_history: false });
  future.onIOPub = (msg) => {
    if (msg.header.msg_type === "stream") out += msg.content.text;
    if (msg.header.msg_type === "error") out += "ERROR " + msg.content.ename + ": " + msg.content.evalue;
  };
  await future.done;
  return out;
}
"""


def kernel(page, code: str) -> object:
    """Run code in the notebook's kernel; it must print one JSON value."""
    out = page.evaluate(KERNEL_EVAL, code)
    assert not out.startswith("ERROR"), out
    return json.loads(out.strip().splitlines()[-1])


STATE = ("import json; print(json.dumps({'layers': {l.name: [l.status, l.units_alive] for l in session.layers}, "
         "'position': session.history.position, 'share': session.share_pruned(), "
         "'labels': [h.label for h in session.history_items], 'running': session.running}))")


def row(page, name: str):
    return page.locator(f".pw-row[data-layer='{name}']")


def wait_status(page, name: str, status: str) -> None:
    page.wait_for_selector(f".pw-row[data-layer='{name}'][data-status='{status}']")


def wait_run_finished(page, runs_before: int) -> None:
    """A run entry was added to the history and the toolbar is usable again."""
    page.wait_for_function(f"document.querySelectorAll('.pw-hist').length && "
                           f"[...document.querySelectorAll('.pw-hist')].filter(e => e.textContent.startsWith('run:'))"
                           f".length > {runs_before} && "
                           "document.querySelector('.pw-run').getAttribute('aria-disabled') === 'false'",
                           timeout=120_000)


def test_a_person_prunes_with_the_widget(page, lab):
    open_widget(page, "lab")
    page.wait_for_selector(f".pw-heat[data-layer='{H1}']")
    shot(page, "01_opened")
    st = kernel(page, STATE)
    assert st["layers"][H1] == ["ready", 128] and st["position"] == 0
    assert row(page, OUT).get_attribute("data-status") == "not prunable"
    assert "output" in row(page, OUT).locator(".pw-chip").get_attribute("title")

    # propose: both hidden layers pending, with highlighted units
    page.click(".pw-propose")
    wait_status(page, H1, "pending")
    wait_status(page, H2, "pending")
    shot(page, "02_proposed")
    page.locator(".pw-root").screenshot(path=str(ARTIFACTS / "widget.png"))  # the README's picture
    assert kernel(page, STATE)["layers"][H2][0] == "pending"

    # accept one layer, skip one, lock one
    row(page, H1).locator(".pw-accept").click()
    wait_status(page, H1, "accepted")
    row(page, H2).locator(".pw-skip").click()
    wait_status(page, H2, "skipped")
    row(page, H2).locator(".pw-lock").click()
    wait_status(page, H2, "locked")
    st = kernel(page, STATE)
    assert st["layers"][H1] == ["accepted", 122] and st["layers"][H2] == ["locked", 128]
    assert row(page, H1).locator(".pw-units").inner_text() == "122 / 128"
    shot(page, "03_accept_skip_lock")

    # propose again: the locked layer gets no proposal
    page.click(".pw-propose")
    wait_status(page, H1, "pending")
    st = kernel(page, STATE)
    assert st["layers"][H2][0] == "locked"
    assert kernel(page, "import json; print(json.dumps(sorted(session.proposals)))") == [H1]
    assert row(page, H2).locator(".pw-accept").is_disabled()

    # keyboard: focus the tree, move to the first hidden layer, 'a' accepts it
    page.focus(".pw-tree")
    page.keyboard.press("Home")
    for _ in range(5):
        if page.locator(".pw-row[aria-selected='true']").get_attribute("data-layer") == H1:
            break
        page.keyboard.press("ArrowDown")
    assert page.locator(".pw-row[aria-selected='true']").get_attribute("data-layer") == H1
    page.keyboard.press("a")
    wait_status(page, H1, "accepted")
    assert kernel(page, STATE)["layers"][H1] == ["accepted", 116]

    # undo: back to pending, weights restored (kernel checks units)
    page.click(".pw-undo")
    wait_status(page, H1, "pending")
    assert kernel(page, STATE)["layers"][H1] == ["pending", 122]
    shot(page, "04_undo")

    # unlock, then run to target in the background; the tree follows
    row(page, H2).locator(".pw-unlock").click()
    runs_before = page.locator(".pw-hist:has-text('run:')").count()
    page.click(".pw-run")
    wait_run_finished(page, runs_before)
    st = kernel(page, STATE)
    assert not st["running"] and abs(st["share"] - 0.5) < 1e-9
    assert st["layers"][H1][1] == 64 and st["layers"][H2][1] == 64
    assert row(page, H2).locator(".pw-units").inner_text() == "64 / 128"
    shot(page, "05_run_to_target")

    # cancel a run: go back to the original model, slow steps, run and cancel at once
    page.locator(".pw-hist[data-index='0']").click()
    page.wait_for_function(f"document.querySelector(\".pw-row[data-layer='{H1}'] .pw-units\").innerText "
                           "=== '128 / 128'")
    kernel(page, "session.configure(step=0.01, strategy='certified'); print(1)")
    runs_before = page.locator(".pw-hist:has-text('run:')").count()
    # click Run, then Cancel as soon as the kernel reports the run (as fast as a person could not)
    page.evaluate("""() => new Promise((resolve) => {
      document.querySelector('.pw-run').click();
      const t = setInterval(() => {
        const c = document.querySelector('.pw-cancel');
        if (c.getAttribute('aria-disabled') === 'false') { c.click(); clearInterval(t); resolve(); }
      }, 2);
    })""")
    wait_run_finished(page, runs_before)
    st = kernel(page, STATE)
    assert not st["running"]
    assert st["labels"][-1].startswith("run:")
    shot(page, "06_cancelled")
    if "(cancelled)" in st["labels"][-1]:
        assert st["share"] < 0.5
    # the session is consistent after the run: undo it restores the units
    page.click(".pw-undo")
    page.wait_for_function(f"document.querySelector(\".pw-row[data-layer='{H1}'] .pw-units\").innerText "
                           "=== '128 / 128'")

    # export the pruned model through the toolbar
    target = lab["work"] / "from_widget.keras"
    page.fill(".pw-export-path", str(target))
    page.click(".pw-export")
    page.wait_for_selector(".pw-notice:has-text('exported')")
    assert target.exists() and target.stat().st_size > 0
    # exporting again asks before overwriting
    page.click(".pw-export")
    page.wait_for_selector(".pw-confirm:has-text('exists')")
    page.click(".pw-keep")
    shot(page, "07_exported")

    # an action the kernel refuses is shown, and the kernel stays usable
    page.evaluate("window.jupyterapp.commands.execute('apputils:change-theme', {theme: 'JupyterLab Dark'})")
    page.wait_for_function("document.body.dataset.jpThemeLight === 'false'")
    page.wait_for_selector("#jupyterlab-splash", state="detached")
    bg = page.evaluate("getComputedStyle(document.querySelector('.pw-root')).backgroundColor")
    assert bg not in ("rgb(255, 255, 255)", "rgba(0, 0, 0, 0)")
    shot(page, "08_dark_theme")
    assert kernel(page, "print(len(session.layers))") == 3


SLOW_RUN = """\
import time
_propose = session.pruner.propose
def _slow_propose(*a, **k):  # a run of ~50 iterations of 0.3 s: long enough to cancel by hand
    time.sleep(0.3)
    return _propose(*a, **k)
session.pruner.propose = _slow_propose
session.goto(0)
session.configure(step=0.01, target=0.5, strategy="magnitude")
print(1)
"""


def test_cancel_from_a_second_view_stops_the_run(page, lab):
    """Two views of one session: a run started in the first is cancelled from the second (by keyboard)."""
    if not page.locator(f".pw-row[data-layer='{H1}']").count():
        open_widget(page, "lab_second_view")
    assert kernel(page, "print(int(session.running))") == 0
    kernel(page, SLOW_RUN)
    page.evaluate(ADD_AND_RUN_CELL, "second_view = session.widget()\nsecond_view")
    page.wait_for_function("document.querySelectorAll('.pw-root').length >= 2", timeout=120_000)
    first, second = page.locator(".pw-root").nth(0), page.locator(".pw-root").nth(1)
    second.locator(f".pw-row[data-layer='{H1}']").wait_for(timeout=120_000)
    runs_before = len([x for x in kernel(page, STATE)["labels"] if x.startswith("run:")])

    first.locator(".pw-run").click()
    # both views learn of the run from the session (the second never sent anything)
    for root in (first, second):
        root.locator(".pw-cancel[aria-disabled='false']").wait_for(timeout=30_000)
    assert kernel(page, STATE)["running"] is True
    assert all(r.locator(".pw-run").get_attribute("aria-disabled") == "true" for r in (first, second))
    shot(page, "09_two_views_running")

    second.locator(".pw-cancel").focus()
    page.keyboard.press("Space")  # the keyboard works the toolbar too
    page.wait_for_function("() => [...document.querySelectorAll('.pw-root .pw-run')]"
                           ".every(b => b.getAttribute('aria-disabled') === 'false')",
                           timeout=60_000)
    st = kernel(page, STATE)
    runs = [x for x in st["labels"] if x.startswith("run:")]
    assert len(runs) == runs_before + 1 and "cancelled" in runs[-1], st["labels"]
    assert not st["running"] and st["share"] < 0.5
    assert kernel(page, "import json; print(json.dumps(session.state))") == "idle"
    for root in (first, second):  # both views idle, both show the cancelled run
        assert root.locator(".pw-cancel").get_attribute("aria-disabled") == "true"
        assert root.locator(".pw-hist").last.inner_text().startswith("run:")
        assert "cancelled" in root.locator(".pw-hist").last.inner_text()
    shot(page, "10_cancelled_from_second_view")
    kernel(page, "session.pruner.propose = _propose; second_view.close(); print(1)")


# ---------------------------------------------------------------------- Notebook 7
nb7 = server_fixture("nb7", "notebook")


def test_the_widget_works_in_notebook_7(pw, nb7, tmp_path_factory: pytest.TempPathFactory):
    """The same front end in Notebook 7: renders, acts, undoes, follows the kernel."""
    for page in _browse(pw, nb7, tmp_path_factory.mktemp("chrome7")):
        open_widget(page, "notebook7")
        page.wait_for_selector(f".pw-heat[data-layer='{H1}']")
        page.wait_for_selector(".pw-root dd[data-metric='parameters']:not(:has-text('–'))")
        assert kernel(page, STATE)["layers"][H1] == ["ready", 128]
        page.click(".pw-propose")
        wait_status(page, H1, "pending")
        row(page, H1).locator(".pw-accept").click()
        wait_status(page, H1, "accepted")
        assert kernel(page, STATE)["layers"][H1] == ["accepted", 122]
        assert row(page, H1).locator(".pw-units").inner_text() == "122 / 128"
        page.wait_for_function("document.querySelector(\"dd[data-metric='parameters']\").textContent "
                               "!== '118,282'")  # the metrics follow the accepted layer
        page.locator(".pw-root").screenshot(path=str(ARTIFACTS / "notebook7.png"))
        page.click(".pw-undo")
        wait_status(page, H1, "pending")
        st = kernel(page, STATE)
        assert st["layers"][H1] == ["pending", 128] and st["position"] == 1

        # a residual block is a tree node: closed, summarised, opened by click and by the arrow keys
        page.evaluate(ADD_AND_RUN_CELL, RESIDUAL_CELL)
        block = page.locator(".pw-row[data-layer='res']")
        block.wait_for(timeout=120_000)
        assert block.get_attribute("aria-expanded") == "false"
        assert page.locator(".pw-row[data-layer='res_a']").count() == 0
        root = page.locator(".pw-root").filter(has=block)
        root.locator(".pw-propose").click()
        page.wait_for_selector(".pw-row[data-layer='res'] .pw-chip:has-text('2 pending')")  # res_a + res_b: one group
        block.click()
        page.wait_for_selector(".pw-row[data-layer='res_a'][data-status='pending']")
        assert [r.get_attribute("data-layer") for r in root.locator(".pw-row[data-layer]").all()] == [
            "input_layer", "stem", "res", "res_a", "res_b", "res_add", "res_out", "gap", "logits"]
        page.locator(".pw-row[data-layer='res_b'] .pw-accept").click()
        page.wait_for_selector(".pw-row[data-layer='res'] .pw-chip:has-text('2 accepted')")
        assert kernel(page, "import json; print(json.dumps(res_session.layer('res_a').status))") == "accepted"
        root.locator(".pw-tree").focus()
        page.keyboard.press("ArrowLeft")  # the focused block closes (JupyterLab's own ArrowLeft is kept off)
        page.wait_for_function("!document.querySelector(\".pw-row[data-layer='res_a']\")")
        root.screenshot(path=str(ARTIFACTS / "notebook7_blocks.png"))


RESIDUAL_CELL = """\
import keras
from paoding_widgets import PruningSession
L = keras.layers
inp = keras.Input((8, 8, 3), name="input_layer")
x = L.Conv2D(8, 3, padding="same", activation="relu", name="stem")(inp)
a = L.Conv2D(8, 3, padding="same", name="res_a")(x)
b = L.Conv2D(8, 1, name="res_b")(x)
x = L.ReLU(name="res_out")(L.Add(name="res_add")([a, b]))
out = L.Dense(3, name="logits")(L.GlobalAveragePooling2D(name="gap")(x))
res_session = PruningSession(keras.Model(inp, out), input_range=(0.0, 1.0), step=0.25)
res_session.widget()
"""

ADD_AND_RUN_CELL = """
async (source) => {
  const app = window.jupyterapp, panel = app.shell.currentWidget, nb = panel.content;
  const n = nb.model.sharedModel.cells.length;
  nb.model.sharedModel.insertCell(n, { cell_type: "code", source });
  nb.activeCellIndex = n;
  await app.commands.execute("notebook:run-cell");
}
"""
