"""End to end: the accuracy after accepting, compared points marked in the tree, deploying from the widget.

JupyterLab and Notebook 7 on the quickstart notebook (its session has eval data), in Debian's chromium:
a proposal's preview shows "accuracy after: computing…", then the figure; accepting another layer marks
it stale until recomputed.  Two history points compared mark the units that went in the heatmaps
(hover says which).  Deploy is driven from the keyboard: formats ticked, folder typed, Deploy pressed,
the table read; a second deploy asks before overwriting.  Screenshots: ``artifacts/e2e/more_*.png``.
"""

from __future__ import annotations

import pytest
from test_widget_e2e import ARTIFACTS, CHROMIUM, H1, H2, STATE, _browse, kernel, open_widget, row, server_fixture, shot

pytestmark = pytest.mark.skipif(not __import__("pathlib").Path(CHROMIUM).exists(),
                                reason="Debian chromium is not installed")

CELLS = "window.jupyterapp.shell.currentWidget.content.model.sharedModel.cells.length"
ACC = ".pw-preview[data-layer='{}'] .pw-preview-acc"


lab = server_fixture("lab_more", "lab")


nb7 = server_fixture("nb7_more", "notebook")


def _accuracy_preview(page, name: str) -> str:
    """Wait for a proposal's accuracy after accepting; returns its text (it was 'computing…' or stale first)."""
    sel = ACC.format(name)
    page.wait_for_selector(sel)
    page.wait_for_function(f"document.querySelector(\"{sel}\")?.dataset.state === 'done'", timeout=120_000)
    return page.locator(sel).inner_text()


def _deploy_by_keyboard(page, folder: str) -> None:
    """Untick the float .keras with the keyboard (keras-int8 and tflite-int8 stay ticked), type the folder,
    press Deploy with Enter."""
    page.focus(".pw-deploy-format[value='keras']")
    page.keyboard.press("Space")  # untick keras (float)
    assert not page.is_checked(".pw-deploy-format[value='keras']")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.value") == "keras-int8"
    assert page.is_checked(".pw-deploy-format[value='keras-int8']")
    page.focus(".pw-deploy-dir")
    page.keyboard.press("Control+a")
    page.keyboard.type(folder)
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.classList.contains('pw-deploy')")
    page.keyboard.press("Enter")


def test_accuracy_compare_and_deploy_in_jupyterlab(pw, lab, tmp_path_factory: pytest.TempPathFactory):
    seen: list[str] = []  # the states the accuracy preview of H2 went through

    def note(state: str) -> None:  # (playwright needs a Python function here, not a bound builtin)
        seen.append(state)

    for page in _browse(pw, lab, tmp_path_factory.mktemp("chrome_more")):
        page.set_viewport_size({"width": 1300, "height": 1100})
        open_widget(page, "more_lab")
        page.wait_for_selector(f".pw-heat[data-layer='{H1}']")

        # the accuracy after accepting, computed in the background
        page.expose_function("pwSeen", note)
        page.click(".pw-propose")
        page.wait_for_selector(ACC.format(H2))
        page.evaluate("""(sel) => { const el = document.querySelector('.pw-root');
          new MutationObserver(() => { const a = el.querySelector(sel); if (a) window.pwSeen(a.dataset.state); })
            .observe(el, { subtree: true, childList: true, characterData: true }); }""", ACC.format(H2))
        text = _accuracy_preview(page, H1)
        assert "→" in text and "eval samples" in text, text
        before, after = [float(x.split("%")[0]) for x in text.split("accuracy ")[1].split(" → ")]
        st = kernel(page, "import json; print(json.dumps(session.metrics().accuracy))")
        assert before == pytest.approx(100 * st, abs=0.051)
        h2_first = _accuracy_preview(page, H2)
        shot(page, "more_01_accuracy_preview")
        # accept h1: h2's figure is of the previous state until recomputed
        row(page, H1).locator(".pw-accept").click()
        page.wait_for_selector(f".pw-row[data-layer='{H1}'][data-status='accepted']")
        page.wait_for_function(f"document.querySelector(\"{ACC.format(H2)}\")?.dataset.state === 'done'",
                               timeout=120_000)
        assert "stale" in seen or "pending" in seen, seen
        h2_now = page.locator(ACC.format(H2)).inner_text()
        expected = kernel(page, "import json, numpy as np\n"
                                "s2 = session  # the figure: accuracy if h2's proposal is accepted now\n"
                                "from paoding_widgets.session import sensitivity as S\n"
                                "from paoding_widgets.session.readonly import SessionView\n"
                                "r = S.proposal_accuracies(SessionView(session))\n"
                                f"print(json.dumps([r.now, r.after['{H2}']]))")
        assert f"{100 * expected[1]:.1f}%" in h2_now and f"{100 * expected[0]:.1f}%" in h2_now, (h2_now, expected)
        assert h2_first != h2_now or expected[0] == expected[1]

        # compare two points: the units that went are marked in the heatmaps and named on hover
        page.click(".pw-run")
        page.wait_for_function("[...document.querySelectorAll('.pw-hist')].some(e => e.textContent.startsWith('run:'))"
                               " && document.querySelector('.pw-run').getAttribute('aria-disabled') === 'false'",
                               timeout=180_000)
        n = kernel(page, STATE)["position"]
        page.locator(".pw-hist[data-index='1'] .pw-pick-a").click()
        page.locator(f".pw-hist[data-index='{n}'] .pw-pick-b").click()
        page.wait_for_selector(".pw-compare")
        heat = page.locator(f".pw-heat[data-layer='{H2}']")
        page.wait_for_function(f"document.querySelector(\".pw-heat[data-layer='{H2}']\").dataset.went > 0")
        went = kernel(page, "import json\nfrom paoding_widgets.session.readonly import SessionView\n"
                            f"v = SessionView(session); a, b = v.alive_at(1)['{H2}'], v.alive_at({n})['{H2}']\n"
                            "print(json.dumps([int(i) for i in (a & ~b).nonzero()[0]]))")
        assert int(heat.get_attribute("data-went")) == len(went) > 0
        # hover the column of the first unit that went (heatmap.columnOfUnit: 128 units over the map's columns)
        box = heat.bounding_box()
        cols = page.evaluate(f"document.querySelector(\".pw-heat[data-layer='{H2}']\").width")
        u = went[0]
        col = u if cols >= 128 else -(-(u + 1) * cols // 128) - 1
        page.mouse.move(box["x"] + (col + 0.5) * box["width"] / cols, box["y"] + box["height"] / 2)
        page.wait_for_function(f"document.querySelector(\".pw-heat[data-layer='{H2}']\").title"
                               ".includes('went between')")
        assert f"went between points 1 and {n}" in heat.get_attribute("title")
        assert page.locator(".pw-heat-legend").inner_text().count("went between the compared points") == 1
        shot(page, "more_02_compare_marks")
        page.locator(".pw-root").screenshot(path=str(ARTIFACTS / "more_compare_widget.png"))
        page.click(".pw-compare-clear")

        # deploy from the keyboard: the table, then the overwrite question
        folder = lab["work"] / "deployed"
        _deploy_by_keyboard(page, str(folder))
        page.wait_for_selector(".pw-deploy-status:has-text('deploying')")
        page.wait_for_selector(".pw-deploy-table", timeout=300_000)
        page.wait_for_function("document.querySelector('.pw-deploy').getAttribute('aria-disabled') === 'false'")
        names = page.evaluate("[...document.querySelectorAll('.pw-deploy-table tr[data-name]')]"
                              ".map(r => r.dataset.name)")
        assert names == ["original", "pruned + keras-int8", "pruned + tflite-int8"], names
        assert (folder / "pruned.int8.keras").is_file() and (folder / "pruned.int8.tflite").is_file()
        cells = page.evaluate("[...document.querySelectorAll('.pw-deploy-table tr[data-name]')].map("
                              "r => [...r.children].map(c => c.textContent))")
        assert all(c[2].endswith(("KiB", "MiB")) and c[4].endswith("%") and c[7].endswith("%") for c in cells), cells
        assert float(cells[2][3].rstrip("×")) > 3  # int8 weights: several times smaller than the float original
        assert "deployed 2 files" in page.locator(".pw-notice").inner_text()
        assert page.locator(".pw-error").is_hidden()
        shot(page, "more_03_deployed")
        data = (folder / "pruned.int8.tflite").read_bytes()
        page.focus(".pw-deploy")
        page.keyboard.press("Enter")
        page.wait_for_selector(".pw-confirm:has-text('Overwrite?')")
        assert page.evaluate("document.activeElement.classList.contains('pw-keep')")  # the safe choice has the focus
        assert (folder / "pruned.int8.tflite").read_bytes() == data
        shot(page, "more_04_deploy_overwrite")
        page.keyboard.press("Shift+Tab")
        assert page.evaluate("document.activeElement.classList.contains('pw-overwrite')")
        page.keyboard.press("Enter")
        page.wait_for_selector(".pw-deploy-status:has-text('deploying')")
        page.wait_for_function("document.querySelector('.pw-deploy').getAttribute('aria-disabled') === 'false'",
                               timeout=300_000)
        assert page.locator(".pw-confirm").is_hidden() and page.locator(".pw-error").is_hidden()


def test_accuracy_compare_and_deploy_in_notebook_7(pw, nb7, tmp_path_factory: pytest.TempPathFactory):
    for page in _browse(pw, nb7, tmp_path_factory.mktemp("chrome7_more")):
        page.set_viewport_size({"width": 1200, "height": 1100})
        open_widget(page, "more_nb7")
        page.click(".pw-propose")
        assert "eval samples" in _accuracy_preview(page, H1)
        page.click(".pw-run")
        page.wait_for_function("[...document.querySelectorAll('.pw-hist')].some(e => e.textContent.startsWith('run:'))"
                               " && document.querySelector('.pw-run').getAttribute('aria-disabled') === 'false'",
                               timeout=180_000)
        n = kernel(page, STATE)["position"]
        page.locator(".pw-hist[data-index='0'] .pw-pick-a").click()
        page.locator(f".pw-hist[data-index='{n}'] .pw-pick-b").click()
        page.wait_for_function(f"document.querySelector(\".pw-heat[data-layer='{H1}']\").dataset.went > 0")
        cells = page.evaluate(CELLS)
        folder = nb7["work"] / "deployed"
        _deploy_by_keyboard(page, str(folder))
        page.wait_for_selector(".pw-deploy-table", timeout=300_000)
        assert page.evaluate(CELLS) == cells  # keys typed in the widget did not reach the notebook
        assert (folder / "pruned.int8.tflite").is_file()
        page.locator(".pw-root").screenshot(path=str(ARTIFACTS / "more_notebook7.png"))
