"""End to end: an attention layer's three unit groups (heads, key_dim, value_dim) as rows of their own in
JupyterLab; one is locked from the keyboard and only its group is locked in the kernel; accepting in a
narrow tree keeps the tree's sideways scroll.  Screenshots: ``artifacts/e2e/groups_*.png``.
"""

from __future__ import annotations

import pytest
from test_widget_e2e import ARTIFACTS, CHROMIUM, _browse, kernel, server_fixture

pytestmark = pytest.mark.skipif(not __import__("pathlib").Path(CHROMIUM).exists(),
                                reason="Debian chromium is not installed")

MHA_CELL = """\
import keras
from paoding_widgets import PruningSession
L = keras.layers
keras.utils.set_random_seed(0)
inp = keras.Input((6, 8), name="seq")
x = L.MultiHeadAttention(num_heads=3, key_dim=4, name="mha")(inp, inp)
x = L.Bidirectional(L.LSTM(6, return_sequences=True), name="bi")(x)
x = L.GlobalAveragePooling1D(name="gap")(x)
out = L.Dense(3, name="logits")(L.Dense(10, activation="relu", name="d1")(x))
mha_session = PruningSession(keras.Model(inp, out), input_range=(-1.0, 1.0), step=0.34, n_probes=32)
mha_session.widget()
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

STATUS = ("import json; print(json.dumps({l.name: l.status for l in mha_session.layers}))")


lab = server_fixture("lab_groups", "lab")


def test_attention_groups_are_rows_locked_by_keyboard(pw, lab, tmp_path_factory: pytest.TempPathFactory):
    for page in _browse(pw, lab, tmp_path_factory.mktemp("chrome_groups")):
        page.set_viewport_size({"width": 760, "height": 1000})
        page.evaluate(ADD_AND_RUN_CELL, MHA_CELL)
        root = page.locator(".pw-root:has(.pw-row[data-layer='mha/key_dim'])")
        root.wait_for(timeout=300_000)
        names = root.locator(".pw-row[data-layer] .pw-name").all_inner_texts()
        assert names[:6] == ["seq", "mha · heads", "mha · key_dim", "mha · value_dim", "bi · forward", "bi · backward"]
        for name in ("mha", "mha/key_dim", "mha/value_dim"):  # each has its own heatmap, units and buttons
            r = root.locator(f".pw-row[data-layer='{name}']")
            assert r.locator("canvas.pw-heat").count() == 1
            assert r.locator(".pw-units").inner_text().endswith("/ 3" if name == "mha" else "/ 4")
        assert root.get_by_role("button", name="Lock mha key_dim").count() == 1

        # the keyboard: focus the tree, go down to mha · key_dim, lock it with "l"
        root.locator(".pw-tree").focus()
        page.keyboard.press("Home")  # the input layer
        page.keyboard.press("ArrowDown")  # mha · heads
        page.keyboard.press("ArrowDown")
        assert root.locator(".pw-focus").get_attribute("data-layer") == "mha/key_dim"
        page.keyboard.press("l")
        root.locator(".pw-row[data-layer='mha/key_dim'][data-status='locked']").wait_for()
        status = kernel(page, STATUS)
        assert status["mha/key_dim"] == "locked"
        assert [g for g, s in status.items() if s == "locked"] == ["mha/key_dim"]
        assert root.get_by_role("button", name="Unlock mha key_dim").count() == 1
        page.wait_for_timeout(300)
        root.screenshot(path=str(ARTIFACTS / "groups_locked.png"))

        # propose, scroll the narrow tree sideways, accept a row: the tree stays where it was
        root.locator(".pw-propose").click()
        root.locator(".pw-row[data-layer='mha'][data-status='pending']").wait_for()
        tree = root.locator(".pw-tree")
        wide = tree.evaluate("t => t.scrollWidth > t.clientWidth + 20")
        if wide:
            tree.evaluate("t => { t.scrollLeft = t.scrollWidth - t.clientWidth; }")
            left = tree.evaluate("t => t.scrollLeft")
            assert left > 0
            root.locator(".pw-row[data-layer='mha'] .pw-accept").click()
            root.locator(".pw-row[data-layer='mha'][data-status='accepted']").wait_for()
            page.wait_for_timeout(300)
            assert abs(tree.evaluate("t => t.scrollLeft") - left) <= 2
        else:  # the tree fits: nothing scrolls sideways (said, so a reader of the run knows)
            print("the tree fits at 760 px: sideways scroll not exercised")
            root.locator(".pw-row[data-layer='mha'] .pw-accept").click()
            root.locator(".pw-row[data-layer='mha'][data-status='accepted']").wait_for()
        assert kernel(page, STATUS)["mha"] == "accepted"
        root.screenshot(path=str(ARTIFACTS / "groups_accepted.png"))
