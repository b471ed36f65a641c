"""Pages in a real browser: Debian's headless ``chromium`` driven by Playwright (system browser, no
download), WebGL through SwiftShader so no GPU is needed.

``ohif_auto_segmentation(server_url, study_uid, out_dir)`` opens MONAI Label's bundled OHIF at the
server's ``/ohif/`` in its MONAI Label mode, points the panel at the server, runs the automatic
model and returns what a person would look at: the share of CT-grey pixels in the viewports before,
the pixels an overlay coloured after ``Run``, the ``/infer`` answer's status and a screenshot.
``screenshot_page(path, png)`` screenshots a local HTML page (the campaign report) whole.
"""

import os
import shutil
import subprocess
from typing import Dict, Optional

import numpy as np

CHROMIUM_ARGS = ["--no-sandbox", "--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"]


def find_chromium() -> Optional[str]:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def install_chromium() -> str:
    """Debian's ``chromium``, installed with apt-get when absent (root needed)."""
    found = find_chromium()
    if found:
        return found
    if os.geteuid() != 0:
        raise RuntimeError("chromium is not installed and installing it needs root: apt-get install chromium")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
    done = subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], env=env, capture_output=True, text=True)
    if done.returncode != 0 or not find_chromium():
        raise RuntimeError(f"apt-get install chromium failed: {done.stderr[-2000:]}")
    return find_chromium()


def _rgb(png: bytes) -> np.ndarray:
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def grey_share(rgb: np.ndarray) -> float:
    """Share of pixels that are CT grey: not black, unsaturated."""
    spread = rgb.max(axis=2) - rgb.min(axis=2)
    return float(((spread < 16) & (rgb.mean(axis=2) > 30)).mean())


def newly_coloured(before: np.ndarray, after: np.ndarray) -> int:
    """Pixels grey or black before and saturated after: an overlay drawn on the image."""
    saturated = lambda rgb: (rgb.max(axis=2) - rgb.min(axis=2)) > 60  # noqa: E731
    return int((saturated(after) & ~saturated(before)).sum())


def _viewports(page) -> np.ndarray:
    """The viewport grid (every cornerstone canvas), as RGB."""
    boxes = [b for b in (c.bounding_box() for c in page.locator("canvas.cornerstone-canvas").all()) if b]
    x0, y0 = min(b["x"] for b in boxes), min(b["y"] for b in boxes)
    x1, y1 = max(b["x"] + b["width"] for b in boxes), max(b["y"] + b["height"] for b in boxes)
    return _rgb(page.screenshot(clip={"x": x0, "y": y0, "width": x1 - x0, "height": y1 - y0}))


def ohif_auto_segmentation(server_url: str, study_uid: str, out_dir: str, timeout_s: float = 180) -> Dict:
    from playwright.sync_api import sync_playwright

    os.makedirs(out_dir, exist_ok=True)
    server_url = server_url.rstrip("/") + "/"
    result: Dict = {"errors": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=install_chromium(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("pageerror", lambda e: result["errors"].append(str(e)[:300]))
            page.goto(f"{server_url}ohif/monai-label?StudyInstanceUIDs={study_uid}", timeout=timeout_s * 1000)
            viewport = page.locator("canvas.cornerstone-canvas").first
            viewport.wait_for(timeout=timeout_s * 1000)
            page.wait_for_timeout(3000)  # the first slices arrive
            banner = page.get_by_text("Confirm and Hide")
            if banner.count():
                banner.first.click()
            before = _viewports(page)
            result["grey_share_before"] = grey_share(before)
            server_box = page.locator("input[value^='http']").first
            server_box.fill(server_url)
            server_box.locator("xpath=following::button[1]").click()  # connect: the panel reads /info
            run = page.get_by_role("button", name="Run").first
            run.wait_for(timeout=timeout_s * 1000)
            with page.expect_response(lambda r: "/infer/" in r.url, timeout=timeout_s * 1000) as answer:
                run.click()
            result["infer_status"] = answer.value.status
            page.wait_for_timeout(4000)  # the label map is decoded and drawn
            result["newly_coloured_pixels"] = newly_coloured(before, _viewports(page))
            result["screenshot"] = os.path.join(out_dir, "ohif_auto_segmentation.png")
            page.screenshot(path=result["screenshot"])
        finally:
            browser.close()
    return result


def screenshot_page(path: str, png: str, width: int = 1200, height: int = 1600) -> Dict:
    """Open a local HTML page (the campaign report) in headless chromium and screenshot it whole:
    ``{"title", "images", "images_loaded", "errors", "screenshot"}`` (an image counts as loaded when
    the browser decoded it: ``naturalWidth > 0``)."""
    from playwright.sync_api import sync_playwright

    result: Dict = {"errors": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=install_chromium(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.on("pageerror", lambda e: result["errors"].append(str(e)[:300]))
            page.goto("file://" + os.path.abspath(path))
            page.wait_for_load_state("load")
            result["title"] = page.title()
            result["images"] = page.locator("img").count()
            result["images_loaded"] = page.evaluate("Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).length")
            page.screenshot(path=png, full_page=True)
            result["screenshot"] = png
        finally:
            browser.close()
    return result
