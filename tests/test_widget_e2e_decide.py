"""End to end, deciding with the widget: JupyterLab at 900 px with the file browser open, then Notebook 7.

A person's session on the quickstart notebook: layer names readable in a narrow notebook; letters
typed with the focus on a toolbar button stay in the widget (no cell appears); a proposal shows what
accepting it removes and its certified bound; export asks before overwriting; a run to the target,
then two history points compared; sensitivity curves appear, a plan is made, edited and run.
Screenshots go to ``artifacts/e2e/`` (``decide_*.png``); ``docs/widget.png`` is a copy of
``decide_wide.png``.
"""

from __future__ import annotations

import pytest
from test_widget_e2e import ARTIFACTS, CHROMIUM, H1, H2, STATE, _browse, kernel, open_widget, row, server_fixture, shot

pytestmark = pytest.mark.skipif(not __import__("pathlib").Path(CHROMIUM).exists(),
                                reason="Debian chromium is not installed")

CELLS = "window.jupyterapp.shell.currentWidget.content.model.sharedModel.cells.length"


lab = server_fixture("lab_decide", "lab")


def _narrow(page, width: int = 900) -> None:
    page.set_viewport_size({"width": width, "height": 1000})


def _names_readable(page) -> list[str]:
    """Names of visible rows that are cut (scrollWidth > clientWidth) or squeezed under 8 characters."""
    return page.evaluate("""() => [...document.querySelectorAll('.pw-row[data-layer] .pw-name')]
      .filter(e => e.scrollWidth > e.clientWidth + 1 || e.clientWidth < 8 * 6)
      .map(e => e.textContent + ' ' + e.clientWidth + '/' + e.scrollWidth)""")


def _wait_previews(page, name: str) -> str:
    sel = f".pw-preview[data-layer='{name}']"
    page.wait_for_function(f"document.querySelector(\"{sel}\") && "
                           f"!document.querySelector(\"{sel}\").textContent.includes('computing')", timeout=180_000)
    return page.locator(sel).inner_text()


def test_deciding_in_jupyterlab_at_900px(pw, lab, tmp_path_factory: pytest.TempPathFactory):
    for page in _browse(pw, lab, tmp_path_factory.mktemp("chrome_decide")):
        _narrow(page)
        page.evaluate("window.jupyterapp.commands.execute('filebrowser:activate')")
        page.wait_for_selector(".jp-FileBrowser", state="visible")
        open_widget(page, "decide_lab")
        page.wait_for_selector(f".pw-heat[data-layer='{H1}']")
        assert page.locator(".jp-FileBrowser").is_visible()
        width = page.evaluate("document.querySelector('.pw-root').getBoundingClientRect().width")
        assert width < 700, width  # the notebook really is narrow
        assert _names_readable(page) == []
        shot(page, "decide_01_narrow_lab")

        # keyboard: letters typed on a toolbar button stay in the widget (JupyterLab would add a cell)
        cells = page.evaluate(CELLS)
        page.focus(".pw-root .pw-propose")
        for k in ("a", "s", "l", "b"):
            page.keyboard.press(k)
        page.wait_for_timeout(300)
        assert page.evaluate(CELLS) == cells
        assert page.evaluate("document.activeElement.classList.contains('pw-propose')")
        page.keyboard.press("Space")  # the button itself works from the keyboard
        page.wait_for_selector(f".pw-row[data-layer='{H1}'][data-status='pending']")
        page.keyboard.press("Tab")  # the tab order: the next toolbar button (stays focusable when off)
        assert page.evaluate("document.activeElement.classList.contains('pw-accept-all')")

        # a proposal preview: what accepting removes and the certified bound
        text = _wait_previews(page, H1)
        assert "Accepting removes" in text and "parameters" in text and "FLOPs" in text
        assert "certified" in text or "no certified bound" in text
        page.locator(f".pw-heat[data-layer='{H1}']").hover()
        assert H1 in page.locator(f".pw-heat[data-layer='{H1}']").get_attribute("title")
        shot(page, "decide_02_preview")
        page.locator(".pw-root").screenshot(path=str(ARTIFACTS / "decide_widget.png"))

        # export: the second time the widget asks before overwriting
        target = lab["work"] / "decided.keras"
        page.fill(".pw-export-path", str(target))
        page.locator(".pw-export-path").press("Enter")
        page.click(".pw-export")
        page.wait_for_selector(".pw-notice:has-text('exported')")
        assert target.exists()
        assert page.locator(".pw-error").is_hidden()
        page.click(".pw-export")
        page.wait_for_selector(".pw-confirm:has-text('exists')")
        shot(page, "decide_03_overwrite")
        page.click(".pw-overwrite")
        page.wait_for_selector(".pw-notice:has-text('exported')")
        assert page.locator(".pw-confirm").is_hidden()

        # run to the target, then compare the original with the end of the run
        page.click(".pw-run")
        page.wait_for_function("[...document.querySelectorAll('.pw-hist')].some(e => e.textContent.startsWith('run:'))"
                               " && document.querySelector('.pw-run').getAttribute('aria-disabled') === 'false'",
                               timeout=180_000)
        n = kernel(page, STATE)["position"]
        page.locator(".pw-hist[data-index='0'] .pw-pick-a").click()
        page.locator(f".pw-hist[data-index='{n}'] .pw-pick-b").click()
        page.wait_for_selector(".pw-compare")
        assert row(page, H1).locator(".pw-units").inner_text() == "128 → 64"
        assert "went" in page.locator(f".pw-went[data-layer='{H2}']").inner_text()
        shot(page, "decide_04_compare")
        page.click(".pw-compare-clear")

        # sensitivity curves, then a plan, edited and run
        page.click(".pw-sens")
        page.wait_for_selector(f".pw-spark[data-layer='{H1}']", timeout=180_000)
        page.wait_for_selector(f".pw-spark[data-layer='{H2}']")
        row(page, H1).click()
        page.wait_for_selector(f".pw-sens-chart[data-layer='{H1}']")
        page.fill(".pw-goal", "20")
        page.click(".pw-make-plan")
        page.wait_for_selector(".pw-plan-row")
        shot(page, "decide_05_sensitivity_plan")
        kernel(page, "session.goto(0); print(1)")
        page.wait_for_function(f"document.querySelector(\".pw-row[data-layer='{H1}'] .pw-units\").innerText "
                               "=== '128 / 128'")
        page.click(".pw-sens")  # the original state: computed again (or from the cache)
        page.wait_for_function("!document.querySelector('.pw-sens-cell.pw-stale')", timeout=180_000)
        page.click(".pw-make-plan")
        page.wait_for_selector(".pw-plan-row")
        first = page.locator(".pw-plan-row input").first
        first.fill("10")
        first.press("Enter")
        page.click(".pw-run-plan")
        page.wait_for_function("[...document.querySelectorAll('.pw-hist')]"
                               ".some(e => e.textContent.startsWith('run plan:'))", timeout=180_000)
        st = kernel(page, STATE)
        assert st["labels"][-1].startswith("run plan:")
        assert 0 < st["share"] < 0.5
        shot(page, "decide_06_plan_run")

        # the README picture: a wide notebook, a proposal open with its preview, curves in the rows
        page.set_viewport_size({"width": 1400, "height": 1400})
        page.evaluate("window.jupyterapp.commands.execute('application:toggle-left-area')")
        page.click(".pw-propose")
        _wait_previews(page, H1)
        page.click(".pw-sens")
        page.wait_for_function("!document.querySelector('.pw-sens-cell.pw-stale') && "
                               "document.querySelector('.pw-sens').getAttribute('aria-disabled') === 'false'",
                               timeout=180_000)
        if page.locator(".pw-detail-canvas").count():
            row(page, H1).click()  # close its detail: the picture shows the rows
        page.focus(".pw-tree")
        page.keyboard.press("Home")
        for _ in range(2):
            page.keyboard.press("ArrowDown")  # the focused row's sensitivity chart
        page.wait_for_selector(f".pw-sens-chart[data-layer='{H1}']")
        page.wait_for_timeout(500)
        page.evaluate("document.querySelector('.pw-tree').scrollLeft = 0")
        page.locator(".pw-root").screenshot(path=str(ARTIFACTS / "decide_wide.png"))


nb7 = server_fixture("nb7_decide", "notebook")


def test_deciding_in_notebook_7(pw, nb7, tmp_path_factory: pytest.TempPathFactory):
    for page in _browse(pw, nb7, tmp_path_factory.mktemp("chrome7_decide")):
        _narrow(page)
        open_widget(page, "decide_nb7")
        assert _names_readable(page) == []
        cells = page.evaluate(CELLS)
        page.focus(".pw-root .pw-propose")
        page.keyboard.press("a")
        page.keyboard.press("b")
        page.wait_for_timeout(300)
        assert page.evaluate(CELLS) == cells
        page.keyboard.press("Enter")
        page.wait_for_selector(f".pw-row[data-layer='{H1}'][data-status='pending']")
        assert "Accepting removes" in _wait_previews(page, H1)
        page.click(".pw-sens")
        page.wait_for_selector(f".pw-spark[data-layer='{H1}']", timeout=180_000)
        page.locator(".pw-root").screenshot(path=str(ARTIFACTS / "decide_notebook7.png"))
