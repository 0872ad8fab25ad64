"""Screenshots of ``convlens serve`` for the README (docs/images/serve_*.png).

Serves the bundled model on 127.0.0.1 with a synthetic audit folder (the one the tests use),
drives the system Chromium with Playwright: the sample cat, Grad-CAM and guided backprop
side by side, then the audit panel. Usage: ``python examples/screenshot_app.py``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "app")]


def main() -> None:
    import torch
    from playwright.sync_api import sync_playwright
    from serve_helpers import LiveServer, make_audit

    import convlens as cl
    from convlens.app.server import create_app

    torch.set_num_threads(2)
    out = ROOT / "docs" / "images"
    with tempfile.TemporaryDirectory() as folder:
        audit = make_audit(Path(folder) / "audit-out")
        server = LiveServer(create_app(cl.load_model(device="cpu"), audits=[audit]))
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
                    "--no-sandbox", "--disable-gpu", "--no-first-run"])
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.set_default_timeout(300_000)
                page.goto(server.url + "/")
                page.click("button[data-sample=chelsea]")
                page.wait_for_selector("#predictions tbody tr")
                page.check("#m-guided_backprop")
                page.click("#explain")
                page.wait_for_selector("figure.map[data-method=guided_backprop] img.heat")
                page.wait_for_timeout(500)
                page.locator("#photo-panel").screenshot(path=str(out / "serve_photo.png"))
                page.locator("#explain-panel").screenshot(path=str(out / "serve_explain.png"))
                page.wait_for_selector("#audit-grid figure img")
                page.wait_for_timeout(500)
                page.locator("#audit-panel").screenshot(path=str(out / "serve_audit.png"))
                browser.close()
        finally:
            server.close()


if __name__ == "__main__":
    main()
