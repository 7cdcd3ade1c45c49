"""`lowmem ui` in a real browser (Debian's chromium driven by selenium, headless): upload an image,
drag the move's box with the mouse, run, and see the edit and its report; a bad input shows its
message in the page and the next edit still runs. The screenshot it takes is docs/ui.png
(LOWMEM_UI_SCREENSHOT=docs/ui.png). Without chromium it is skipped, unless LOWMEM_REQUIRE_BROWSER=1
(CI), where that is a failure."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("gradio", reason="`lowmem ui` needs the ui extra: pip install 'lowmem[ui]'")

from ui_server import running_server, scene_file  # noqa: E402

BROWSER, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
if not (BROWSER and DRIVER):
    reason = "no chromium/chromedriver here (Debian: apt-get install chromium chromium-driver)"
    if os.environ.get("LOWMEM_REQUIRE_BROWSER") == "1":
        pytest.fail(f"LOWMEM_REQUIRE_BROWSER=1 but {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the test extra")
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

WAIT = 60  # seconds for anything the page does (2 shared CPU cores)


@pytest.fixture(scope="module")
def page():
    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(argument)
    with running_server() as (url, _):
        browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(DRIVER))
        try:
            browser.get(url)
            yield browser
        finally:
            browser.quit()


def wait(browser, condition):
    return WebDriverWait(browser, WAIT).until(lambda _: condition())


def css(browser, selector: str):
    return browser.find_element(By.CSS_SELECTOR, selector)


def report(browser) -> str:
    return css(browser, "#report textarea").get_attribute("value")


def test_upload_drag_a_box_run_and_see_the_edit_and_its_report(page, tmp_path):
    wait(page, lambda: page.find_elements(By.CSS_SELECTOR, "#input-image input[type=file]"))
    css(page, "#input-image input[type=file]").send_keys(str(scene_file(tmp_path)))
    next(tab for tab in page.find_elements(By.CSS_SELECTOR, "button[role=tab]") if tab.text.strip() == "Move").click()
    canvas = wait(page, lambda: page.find_elements(By.CSS_SELECTOR, "#box-canvas img"))[0]
    page.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)  # offsets are from its visible centre
    width, height = canvas.size["width"], canvas.size["height"]
    # Drag from the top left corner of the box to its bottom right (offsets from the image's centre).
    ActionChains(page).move_to_element_with_offset(canvas, -width // 2 + width // 8, -height // 2 + height // 2) \
        .click_and_hold().move_by_offset(width // 8, height // 8).move_by_offset(width // 8, height // 8 + 4) \
        .release().perform()
    box = wait(page, lambda: [css(page, f"#box-{n} input").get_attribute("value") for n in ("x0", "y0", "x1", "y1")]
               if css(page, "#box-x1 input").get_attribute("value") else None)
    x0, y0, x1, y1 = map(int, box)
    assert (x0, y0) == (pytest.approx(8, abs=1), pytest.approx(32, abs=1))  # the 64 px input's pixels
    assert x1 - x0 == pytest.approx(16, abs=2) and y1 - y0 == pytest.approx(17, abs=2)
    wait(page, lambda: page.find_elements(By.CSS_SELECTOR, "#box-preview img"))  # the red box the model will see

    start = time.monotonic()
    css(page, "#run-move").click()
    wait(page, lambda: "s through the page" in report(page))
    seconds = time.monotonic() - start
    print(f"\na tiny move through the page: {seconds:.2f} s from the click to the report shown")
    assert "Move the block into the red box." in css(page, "#status").text
    assert "bytes streamed" in report(page) and "denoise" in report(page)
    edited = wait(page, lambda: page.find_elements(By.CSS_SELECTOR, "#result img"))[0]
    assert page.execute_script("return arguments[0].complete && arguments[0].naturalWidth", edited) == 64
    assert page.find_elements(By.CSS_SELECTOR, "#region img"), "the regenerated region is not shown"

    page.set_window_size(1280, page.execute_script("return document.documentElement.scrollHeight") + 40)
    page.execute_script("window.scrollTo(0, 0)")
    screenshot = tmp_path / "ui.png"
    page.save_screenshot(str(screenshot))
    assert Image.open(screenshot).height > 900  # the whole page
    if os.environ.get("LOWMEM_UI_SCREENSHOT"):  # docs/ui.png: in 256 colours, a fraction of the bytes
        Image.open(screenshot).convert("RGB").quantize(256).save(Path(os.environ["LOWMEM_UI_SCREENSHOT"]), optimize=True)


def test_a_bad_input_shows_its_message_in_the_page_and_the_next_edit_runs(page):
    name = css(page, "#object-name textarea, #object-name input")
    name.send_keys(Keys.CONTROL, "a")
    name.send_keys(Keys.DELETE)  # as a person empties it (WebElement.clear() is not an input event)
    next(tab for tab in page.find_elements(By.CSS_SELECTOR, "button[role=tab]") if tab.text.strip() == "Rotate").click()
    before = report(page)
    wait(page, lambda: css(page, "#run-rotate").is_displayed())
    css(page, "#run-rotate").click()
    toast = wait(page, lambda: [t for t in page.find_elements(By.CSS_SELECTOR, ".toast-body") if t.is_displayed()])
    assert "name the object to edit" in toast[0].text
    name.send_keys("block")
    css(page, "#run-rotate").click()
    wait(page, lambda: report(page) != before and "s through the page" in report(page))
    assert "Rotate the block to show the front side view." in css(page, "#status").text
