"""Screenshots of the built site, taken by headless Chromium, to look at it as a reader does.

    python -m sphinx -W --keep-going -b html docs docs/_build/html
    python docs/screenshots.py [SITE_DIR] [OUT_DIR]

SITE_DIR defaults to docs/_build/html and OUT_DIR to docs/screenshots/ (not committed). It
writes one PNG per page, 1440 px wide: the landing page, the optimizers' API page at
``adamx.adam``, the quickstart notebook at its loss curves and the recipes page with its
update rule. It drives the system's Chromium (Debian: ``apt-get install chromium``) through
Playwright (``pip install playwright``; no browser download is needed) and, without either,
says what is missing and exits 0.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHOTS = {  # file name: (page of the site, the element to scroll to, or None for the top)
    "landing.png": ("index.html", None),
    "api_adam.png": ("api/optimizers.html", "#adamx\\.adam"),
    "notebook_quickstart.png": ("notebooks/quickstart.html", "#loss-curves"),
    "recipes_math.png": ("guide/recipes.html", None),
}
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WIDTH, HEIGHT = 1440, 1400  # furo shows the page's contents from 1312 px


def main(argv: list[str]) -> int:
    site = Path(argv[0]) if argv else HERE / "_build" / "html"
    out = Path(argv[1]) if len(argv) > 1 else HERE / "screenshots"
    browser = next((path for name in BROWSERS if (path := shutil.which(name))), None)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if browser is None or sync_playwright is None:
        missing = "Chromium (apt-get install chromium)" if browser is None else "playwright"
        print(f"no screenshots taken: {missing} is not installed")
        return 0
    if not (site / "index.html").exists():
        print(f"no built site at {site}: build it first (docs/README.md)")
        return 1
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=browser, args=["--no-sandbox"])
        page = chromium.new_page(viewport={"width": WIDTH, "height": HEIGHT})
        for name, (path, anchor) in SHOTS.items():
            page.goto((site / path).as_uri(), wait_until="load")
            if anchor:
                # instantly: the theme scrolls smoothly, and a screenshot would catch it moving
                page.locator(anchor).first.evaluate("e => e.scrollIntoView({behavior: 'instant'})")
                page.evaluate("window.scrollBy({top: -16, behavior: 'instant'})")
            page.wait_for_timeout(500)  # MathJax, where the network serves it
            page.screenshot(path=str(out / name))
            print(out / name)
        chromium.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
