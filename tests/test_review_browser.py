"""The review web app end to end: `ugafl review` as a real process, Debian's Chromium driven by
Selenium with real pointer and key events. A pathologist fills, erases, paints, undoes and
accepts; the stored mask must be exactly what the page held, and where each tool was used it
must show the tool's effect. A screenshot is checked for what a person would see. Two tabs work
side by side without touching each other's items."""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from selenium.webdriver.support.ui import WebDriverWait

from browser import chromium, review_process, sign_in
from review_helpers import RING_INNER, SIZE, make_review_workspace, ring_mask
from ugafl.client.queue.store import CorrectionQueue

pytestmark = pytest.mark.slow


def page(driver) -> dict:
    return driver.execute_script("return {state: document.body.dataset.state, item: document.body.dataset.item,"
                                 " message: document.getElementById('message').textContent,"
                                 " progress: document.getElementById('progress-text').textContent}")


def wait_for(driver, state: str, item: str | None = None, timeout: float = 30) -> dict:
    from selenium.webdriver.support.ui import WebDriverWait

    def ready(d):
        now = page(d)
        return now if now["state"] == state and (item is None or now["item"] == item) else False

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.05).until(ready)
    except Exception:
        raise AssertionError(f"page never reached state={state} item={item}; it shows {page(driver)}") from None


def page_mask(driver) -> np.ndarray:
    raw = base64.b64decode(driver.execute_script("return window.ugafl.maskBase64()"))
    return np.frombuffer(raw, np.uint8).reshape(SIZE, SIZE).astype(bool)


def keys(driver, *sequence: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    actions = ActionChains(driver)
    for key in sequence:
        actions.send_keys(key)
    actions.perform()


def ctrl_z(driver) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    ActionChains(driver).key_down(Keys.CONTROL).send_keys("z").key_up(Keys.CONTROL).perform()


def ctrl_y(driver) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    ActionChains(driver).key_down(Keys.CONTROL).send_keys("y").key_up(Keys.CONTROL).perform()


def _scale(driver) -> float:
    """CSS px per patch px: the patch's overlay in the viewer, as zoomed now."""
    return driver.execute_script("return document.getElementById('cursor-layer').getBoundingClientRect().width") / SIZE


def _offset(p: float, scale: float) -> int:
    """CSS offset from the patch overlay's centre to the centre of patch pixel p."""
    return round((p + 0.5 - SIZE / 2) * scale)


def click_at(driver, x: float, y: float) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    layer = driver.find_element("id", "cursor-layer")
    scale = _scale(driver)
    ActionChains(driver).move_to_element_with_offset(layer, _offset(x, scale), _offset(y, scale)).click().perform()


def drag(driver, start: tuple[float, float], end: tuple[float, float], steps: int = 8) -> None:
    """Press at `start`, move in steps to `end`, release (patch pixels)."""
    from selenium.webdriver.common.action_chains import ActionChains

    layer = driver.find_element("id", "cursor-layer")
    scale = _scale(driver)
    actions = ActionChains(driver).move_to_element_with_offset(layer, _offset(start[0], scale),
                                                               _offset(start[1], scale)).click_and_hold()
    for k in range(1, steps + 1):
        x = start[0] + (end[0] - start[0]) * k / steps
        y = start[1] + (end[1] - start[1]) * k / steps
        actions.move_to_element_with_offset(layer, _offset(x, scale), _offset(y, scale))
    actions.release().perform()


def element_box(driver, element_id: str) -> tuple[int, int, int, int]:
    rect = driver.execute_script(f"const r = document.getElementById('{element_id}').getBoundingClientRect();"
                                 " return [r.left, r.top, r.width, r.height];")
    return tuple(int(round(v)) for v in rect)


def screen_pixel(shot: np.ndarray, box: tuple[int, int, int, int], px: float, py: float, size: int = SIZE) -> np.ndarray:
    """The screenshot's colour at patch pixel (px, py) of the element at `box` (left, top, width, height)."""
    left, top, width, height = box
    return shot[int(top + (py + 0.5) * height / size), int(left + (px + 0.5) * width / size)].astype(int)


def test_a_full_correction_in_the_browser(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    make_review_workspace(ws, [0.3, 0.8, 0.5])  # ids 1, 2, 3: priority 2, 3, 1
    model = ring_mask()
    with CorrectionQueue(ws) as queue:
        raw_patch = queue.load_image(2)
    with review_process(ws) as url, chromium(tmp_path) as driver:
        sign_in(driver, url)
        now = wait_for(driver, "ready", "2")
        assert "0 of 3 done" in now["progress"] and "3 pending · 0 in review" in now["progress"]  # opened only
        assert (page_mask(driver) == model).all()  # the correction starts from the model's mask
        assert "Signed in as Dr. Test" in driver.find_element("id", "who").text

        keys(driver, "f")
        click_at(driver, SIZE / 2, SIZE / 2)  # fill the ring's hole: the first edit claims the item
        WebDriverWait(driver, 30).until(lambda d: "2 pending · 1 in review" in page(d)["progress"])
        keys(driver, "e")
        drag(driver, (24, 64), (46, 64))  # erase across the ring's left band (brush 6 px)
        keys(driver, "b", "]", "]")  # brush, 8 px
        drag(driver, (96, 12), (120, 12))  # paint a new streak top right
        drag(driver, (8, 110), (30, 110))  # a slip ...
        ctrl_z(driver)  # ... taken back
        before_redo = page_mask(driver)
        ctrl_y(driver)  # redo brings the slip back, undo takes it away again
        assert page_mask(driver)[108:113, 12:27].all()
        ctrl_z(driver)
        assert (page_mask(driver) == before_redo).all()
        keys(driver, "p")  # polygon: four corners on the glass, bottom right; Enter closes it
        for corner in ((100, 96), (120, 96), (120, 116), (100, 116)):
            click_at(driver, *corner)
        keys(driver, "\ue007")
        assert page(driver)["item"] == "2"  # Enter closed the polygon; it did not accept
        expected = page_mask(driver)
        assert expected[97:116, 101:120].all() and not expected[97:116, 121:126].any()
        # Leaving with unsaved edits: the page asks the browser to ask first.
        assert driver.execute_script("const e = new Event('beforeunload', {cancelable: true});"
                                     " window.dispatchEvent(e); return e.defaultPrevented;")
        driver.execute_script("const s = document.getElementById('mask-opacity'); s.value = 40;"
                              " s.dispatchEvent(new Event('input'));")
        assert driver.execute_script("return document.getElementById('mask-layer').style.opacity") == "0.4"
        driver.execute_script("const s = document.getElementById('mask-opacity'); s.value = 100;"
                              " s.dispatchEvent(new Event('input'));")

        yy, xx = np.mgrid[:SIZE, :SIZE] + 0.5
        radius = np.hypot(yy - SIZE / 2, xx - SIZE / 2)
        assert expected[radius <= RING_INNER].all(), "fill left part of the hole empty"
        assert not expected[62:67, 26:45].any(), "the eraser stroke left tumour behind"
        assert expected[9:16, 98:119].all(), "the brush stroke is not all tumour"
        assert not expected[105:116, 2:36].any(), "undo did not take the slip back"
        untouched = np.ones_like(model)
        untouched[radius <= RING_INNER + 1] = False
        untouched[56:73, 18:59] = False
        untouched[4:21, 88:129] = False
        untouched[95:118, 99:122] = False
        assert (expected[untouched] == model[untouched]).all(), "pixels away from every stroke changed"

        # What the pathologist sees, read off a screenshot: the patch as stored, tinted yellow
        # where the correction says tumour, the model's contour in cyan where they differ.
        keys(driver, "c")
        shot_path = tmp_path / "review.png"
        driver.save_screenshot(str(shot_path))
        shot = np.asarray(Image.open(shot_path).convert("RGB"))
        editor, model_panel, unc_panel = (element_box(driver, i) for i in ("stack", "model-panel", "unc-panel"))
        assert editor[2] == editor[3] >= 2 * SIZE, editor  # the patch, zoomed to fit the viewer
        raw = raw_patch.astype(int)
        for px, py in [(100, 64), (64, 64), (70, 90)]:  # tumour (kept, filled): yellow tint
            seen, under = screen_pixel(shot, editor, px, py), raw[py, px]
            assert seen[2] < under[2] - 40 and seen[0] >= under[0] - 2, (px, py, seen, under)
        for px, py in [(120, 120), (38, 64), (10, 60)]:  # background, erased: the patch untinted
            seen, under = screen_pixel(shot, editor, px, py), raw[py, px]
            assert np.abs(seen - under).max() <= 12, (px, py, seen, under)
        contour = screen_pixel(shot, editor, 24, 64)  # the model's outer edge, where the eraser went
        assert contour[0] < 60 and contour[1] > 200 and contour[2] > 230, contour
        edge_unc = screen_pixel(shot, unc_panel, 103, 64)  # bright where the model is unsure ...
        far_unc = screen_pixel(shot, unc_panel, 4, 4)  # ... dark where it is sure
        assert edge_unc.sum() > far_unc.sum() + 250 and far_unc.sum() < 60, (edge_unc, far_unc)
        seen, under = screen_pixel(shot, model_panel, 100, 64), raw[64, 100]  # model's mask: cyan tint
        assert seen[2] > under[2] + 10 and seen[0] < under[0] - 60, (seen, under)
        if os.environ.get("UGAFL_SCREENSHOT"):  # keep the picture for a person to look at
            shutil.copy(shot_path, os.environ["UGAFL_SCREENSHOT"])

        keys(driver, "\ue007")  # Enter: accept
        now = wait_for(driver, "ready", "3")
        assert "Saved your correction of item 2" in now["message"] and "1 of 3 done" in now["progress"]

        keys(driver, "s")  # skip item 3: it stays in the queue
        wait_for(driver, "ready", "1")
        keys(driver, "r")  # reject item 1 with a reason and a note
        driver.find_element("id", "reject-note").send_keys("fold across the patch")
        keys(driver, "\ue007")
        now = wait_for(driver, "done")
        assert "2 of 3 done · 1 corrected · 1 rejected · 1 pending" in now["progress"]

    with CorrectionQueue(ws) as queue:
        assert (queue.load_correction(2) == expected).all(), "stored mask differs from the page's"
        assert queue.get(2).reviewer == "Dr. Test" and queue.history(2)[-1].who == "Dr. Test"
        assert queue.get(3).state == "pending"
        rejected = queue.get(1)
        assert rejected.state == "rejected"
        assert queue.history(1)[-1].detail["reason"] == "not tumour tissue / artefact: fold across the patch"


def test_two_tabs_never_touch_each_others_items(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    make_review_workspace(ws, [0.9, 0.8, 0.1])
    with review_process(ws) as url, chromium(tmp_path) as driver:
        sign_in(driver, url)
        wait_for(driver, "ready", "1")
        tab_a = driver.current_window_handle
        keys(driver, "e")
        drag(driver, (20, 40), (110, 40))  # tab A erases a band

        driver.switch_to.new_window("tab")
        driver.get(url)
        wait_for(driver, "ready", "2")  # not tab A's item
        driver.refresh()  # a reload keeps this tab's item
        wait_for(driver, "ready", "2")
        drag(driver, (5, 5), (40, 5))  # tab B paints a streak
        # Tab B tries to save over tab A's item (say, a stale page): refused, nothing stored.
        status = driver.execute_async_script("""
            const done = arguments[arguments.length - 1];
            fetch('/api/items/1/correction', {method: 'POST', body: JSON.stringify({
                token: document.querySelector('meta[name="ugafl-token"]').content, tab: window.ugafl.tab,
                mask_png: 'iVBORw0KGgo='})})
              .then(r => r.json().then(j => done([r.status, j.error])));""")
        assert status[0] == 409 and "open in another tab" in status[1]
        mask_b = page_mask(driver)
        keys(driver, "\ue007")
        wait_for(driver, "ready", "3")

        driver.switch_to.window(tab_a)
        wait_for(driver, "ready", "1")
        mask_a = page_mask(driver)
        keys(driver, "\ue007")
        wait_for(driver, "done")  # item 3 is tab B's: tab A has nothing left

    model = ring_mask()
    # Each tab's stroke, where it was drawn (brush 6 px): tab A erased the ring along y = 40,
    # tab B painted tumour on the glass along y = 5; neither leaked into the other's mask.
    assert model[38:43, 22:109].any() and not mask_a[38:43, 22:109].any()
    assert not model[4:7, 7:39].any() and mask_b[4:7, 7:39].all()
    assert (mask_a[:20] == model[:20]).all() and (mask_b[30:] == model[30:]).all()
    with CorrectionQueue(ws) as queue:
        assert (queue.load_correction(1) == mask_a).all()
        assert (queue.load_correction(2) == mask_b).all()
        assert queue.get(3).state == "pending"  # tab B opened it but never drew: not claimed
        assert [(e.action, e.who) for e in queue.history(1)][1:] == [("claim", "Dr. Test"), ("correct", "Dr. Test")]


def test_the_drawing_survives_the_server_going_away(tmp_path: Path) -> None:
    """The server stops while a pathologist draws: a banner says so, Accept keeps the drawing; the
    server comes back (a new process: new page token, sessions gone), they sign in again and the
    same patch opens with their drawing, which Accept then saves."""
    from flower_deployment import free_port

    ws = tmp_path / "ws"
    make_review_workspace(ws, [0.8, 0.3])
    port = free_port()
    with chromium(tmp_path) as driver:
        with review_process(ws, port=port) as url:
            sign_in(driver, url)
            wait_for(driver, "ready", "1")
            keys(driver, "b")
            drag(driver, (5, 5), (40, 5))  # tumour on the glass: a stroke the model never drew
            drawn = page_mask(driver)
        keys(driver, "\ue007")  # Accept, with the server gone
        wait_for(driver, "offline")
        assert driver.find_element("id", "offline").is_displayed()
        assert "cannot be reached; your drawing is kept" in page(driver)["message"]
        assert (page_mask(driver) == drawn).all()
        with review_process(ws, port=port, add_user=False) as url:
            WebDriverWait(driver, 30).until(lambda d: not d.find_element("id", "offline").is_displayed())
            keys(driver, "\ue007")  # Accept again: the session is gone, so: sign in ...
            WebDriverWait(driver, 30).until(lambda d: d.execute_script("return document.body.dataset.state") == "login")
            sign_in(driver, url)
            now = wait_for(driver, "ready", "1")  # ... and the same patch, with the drawing
            assert "unsaved drawing on this patch was restored" in now["message"]
            assert (page_mask(driver) == drawn).all()
            keys(driver, "\ue007")
            wait_for(driver, "ready", "2")
    with CorrectionQueue(ws) as queue:
        assert (queue.load_correction(1) == drawn).all()
        assert [(e.action, e.who) for e in queue.history(1)][1:] == [("claim", "Dr. Test"), ("correct", "Dr. Test")]


CONTROLS = "#workspace button, #workspace input, #workspace select, #workspace label, header button, #viewer"


def unseen_controls(driver) -> list[str]:
    """Controls of the page not wholly inside the window (nothing may need scrolling)."""
    return driver.execute_script(f"""
        const out = [];
        for (const el of document.querySelectorAll("{CONTROLS}")) {{
          const r = el.getBoundingClientRect();
          if (r.width === 0 || r.top < 0 || r.left < 0 || r.bottom > innerHeight + 0.5 || r.right > innerWidth + 0.5)
            out.push(el.id || el.textContent.trim().slice(0, 30));
        }}
        if (document.scrollingElement.scrollHeight > innerHeight) out.push("the page scrolls");
        return out;""")


def test_the_patch_in_its_slide_at_every_zoom_and_screen_size(tmp_path: Path, synthetic_tiff) -> None:
    """The viewer shows the patch in its slide (OpenSlide's Deep Zoom tiles, level-0 frame), zooms
    to the scanner's full resolution and back, and every control fits 1920x1080 and 1280x720."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shutil.copy(synthetic_tiff.path, inbox / "slide.tiff")
    ws = tmp_path / "ws"
    make_review_workspace(ws, [0.8, 0.3], slide="slide")  # item 1's box: level-0 (0, 1024), 256 x 256
    shots = os.environ.get("UGAFL_SCREENSHOTS")  # a folder: keep the pictures for a person to look at
    with review_process(ws, slides=inbox) as url, chromium(tmp_path) as driver:
        sign_in(driver, url)
        wait_for(driver, "ready", "1")
        world = driver.execute_script("const v = window.ugafl.state.viewer, i = v.world.getItemAt(0),"
                                      " c = i.getContentSize(), o = document.getElementById('stack').getBoundingClientRect(),"
                                      " a = v.viewport.viewerElementToImageCoordinates(new OpenSeadragon.Point("
                                      "   o.left - v.element.getBoundingClientRect().left, o.top - v.element.getBoundingClientRect().top)),"
                                      " b = v.viewport.viewerElementToImageCoordinates(new OpenSeadragon.Point("
                                      "   o.right - v.element.getBoundingClientRect().left, o.bottom - v.element.getBoundingClientRect().top));"
                                      " return [c.x, c.y, a.x, a.y, b.x, b.y, window.ugafl.state.item.slide_dzi];")
        assert world[:2] == [2048, 1536]  # the whole slide, level 0
        assert np.allclose(world[2:6], [0, 1024, 256, 1280], atol=2), world  # the overlay sits on the box
        assert world[6] == "api/slides/slide.dzi"

        def zoom() -> float:
            return float(driver.execute_script("return document.getElementById('viewer').dataset.zoom"))

        fitted = zoom()
        keys(driver, "1")  # the scanner's full resolution: one screen pixel per slide pixel
        WebDriverWait(driver, 30).until(lambda d: abs(zoom() - 1) < 0.02)
        keys(driver, "0")  # and back to the patch
        WebDriverWait(driver, 30).until(lambda d: abs(zoom() - fitted) < 0.02)
        keys(driver, "b")
        drag(driver, (10, 10), (50, 10))
        drawn = page_mask(driver)
        keys(driver, "\ue007")
        wait_for(driver, "ready", "2")

        for width, height in ((1920, 1080), (1280, 720)):
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                   {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
            driver.refresh()
            wait_for(driver, "ready", "2")
            assert unseen_controls(driver) == [], (width, height)
            console = [e["message"] for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
            assert not [m for m in console if "Content Security Policy" in m], console  # nothing the page does is blocked
            if shots:
                driver.save_screenshot(str(Path(shots) / f"review_app_{width}x{height}.png"))
    with CorrectionQueue(ws) as queue:
        assert (queue.load_correction(1) == drawn).all() and drawn[9:12, 12:48].all()
