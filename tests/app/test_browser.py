"""End-to-end in a real browser: Playwright for Python driving the system's Chromium.

Playwright's own browser download is not used (no network); the tests launch Debian's
``chromium`` (``/usr/bin/chromium``, or ``$CONVLENS_CHROMIUM``). Without it they skip, saying
how to enable them; CI (.ci/run) installs it, so there they run.
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from serve_helpers import png_bytes

playwright_api = pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.browser
CHROMIUM = os.environ.get("CONVLENS_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        if os.environ.get("CONVLENS_REQUIRE_BROWSER"):
            pytest.fail(f"CONVLENS_REQUIRE_BROWSER is set but there is no Chromium at {CHROMIUM}")
        pytest.skip("browser tests need Chromium: apt-get install chromium (Debian), or set "
                    "CONVLENS_CHROMIUM=/path/to/chromium; CI installs it in .ci/run")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, live_server):
    context = browser.new_context(viewport={"width": 1280, "height": 1100})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(live_server.url + "/")
    page.wait_for_selector("#methods input[value=gradcam]")
    yield page
    context.close()


def pixels(element) -> np.ndarray:
    """What the browser drew for an element, as an RGB array."""
    return np.asarray(Image.open(io.BytesIO(element.screenshot())).convert("RGB")).astype(int)


def test_upload_two_methods_target_and_opacity(page, tmp_path):
    photo = tmp_path / "photo.png"
    photo.write_bytes(png_bytes(64, 48, seed=3))
    page.set_input_files("#file", str(photo))
    page.wait_for_selector("#predictions tbody tr")
    assert page.locator("#predictions tbody tr").count() == 4
    page.check("#m-saliency")
    page.click("#explain")
    page.wait_for_selector("figure.map[data-method=saliency] img.heat")
    figures = page.locator("figure.map")
    assert [figures.nth(i).get_attribute("data-method") for i in range(figures.count())] == [
        "gradcam", "saliency"]
    _wait_for(page, "[...document.querySelectorAll('img.heat')].every(i => i.complete "
                           "&& i.naturalWidth === 64)")
    page.fill("#opacity", "100")
    page.dispatch_event("#opacity", "input")
    drawn = {m: pixels(page.locator(f"figure.map[data-method={m}] .stack")) for m in
             ("gradcam", "saliency")}
    for method, rgb in drawn.items():
        assert rgb.std(axis=(0, 1)).max() > 10, f"{method} map is flat"
        # jet colours: strongly blue and strongly red pixels both present
        blue = ((rgb[..., 2] > 120) & (rgb[..., 0] < 80)).mean()
        red = ((rgb[..., 0] > 120) & (rgb[..., 2] < 80)).mean()
        assert blue > 0.01 and red > 0.001, (method, blue, red)
    assert not np.array_equal(drawn["gradcam"], drawn["saliency"])
    bar = pixels(page.locator("figure.map[data-method=gradcam] .colorbar"))
    middle = bar[bar.shape[0] // 2]
    assert middle[2, 2] > 100 and middle[2, 0] < 50  # blue on the left
    assert middle[-3, 0] > 100 and middle[-3, 2] < 50  # red on the right
    high = page.locator("figure.map[data-method=gradcam] .colorbar-labels span").last
    assert float(high.inner_text()) > 0
    page.fill("#opacity", "0")
    page.dispatch_event("#opacity", "input")
    assert page.locator("img.heat").first.evaluate("i => getComputedStyle(i).opacity") == "0"
    # change the target: the heading names the new class
    page.fill("#target", "rocket")
    page.click("#explain")
    _wait_for(page, "document.querySelector('.explanation h3')?.textContent"
                           ".startsWith('rocket')")
    page.fill("#target", "top:2")
    page.click("#explain")
    _wait_for(page, "document.querySelectorAll('.explanation').length === 2")


def test_a_text_file_shows_the_error(page, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo\n")
    page.set_input_files("#file", str(notes))
    page.wait_for_selector("#error:not([hidden])")
    text = page.inner_text("#error")
    assert text.startswith("error: notes.txt: ") and "image" in text


def test_audit_folder_pages_through_a_cluster(page):
    page.wait_for_selector("#audit-grid figure")
    assert page.locator("#audit-suspicious li").count() == 2
    assert page.inner_text("#audit-view") == "tabby / cluster 1"
    assert page.inner_text("#audit-page") == "1–30 of 30"
    page.locator("a[data-cluster='espresso/0']").click()
    _wait_for(page, "document.querySelector('#audit-view').textContent === "
                           "'espresso / cluster 0'")
    page.evaluate("state.pageSize = 12")
    page.locator("a[data-cluster='espresso/0']").click()
    _wait_for(page, "document.querySelector('#audit-page').textContent === '1–12 of 30'")
    first = page.locator("#audit-grid figure").first.get_attribute("data-index")
    page.click("#audit-next")
    _wait_for(page, "document.querySelector('#audit-page').textContent === '13–24 of 30'")
    assert page.locator("#audit-grid figure").first.get_attribute("data-index") != first
    _wait_for(page, "[...document.querySelectorAll('#audit-grid img')].every(i => "
                           "i.complete && i.naturalWidth > 0)")
    thumb = pixels(page.locator("#audit-grid figure img").first)
    assert thumb[..., 0].mean() > 150  # cluster 0 thumbnails are red
    page.click("#audit-next")
    _wait_for(page, "document.querySelector('#audit-page').textContent === '25–30 of 30'")
    assert page.locator("#audit-next").is_disabled()


def test_feature_visualization_streams_progress(page):
    page.fill("#vis-steps", "24")
    page.click("#visualize")
    page.wait_for_selector("#vis-image:not([hidden])")
    assert page.inner_text("#vis-status").endswith(":0")  # the objective's name: layer:channel
    assert page.locator("#vis-image").evaluate("i => i.naturalWidth") == 128
    assert float(page.locator("#vis-progress").evaluate("p => p.value")) == 1.0

def _wait_for(page, expression: str) -> None:
    """Wait until ``expression`` is true in the page. Passed as a function: Playwright calls a
    function through the DevTools protocol, while a bare expression string is compiled with
    ``eval``, which the page's Content-Security-Policy (no 'unsafe-eval') rightly refuses."""
    page.wait_for_function(f"() => ({expression})")
