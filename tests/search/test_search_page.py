"""The search page in a real headless browser: Debian's chromium driven by Selenium through chromedriver.

Skipped only where chromium cannot be installed (`make test` installs it, see the Makefile's browser-deps).
Set EVACLIP_SEARCH_SCREENSHOT=PATH to keep a screenshot of the page with results (docs/search/screenshot.png).
"""
from __future__ import annotations

import base64
import os
import shutil

import httpx
import pytest

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                                reason="Debian's chromium and chromium-driver are not installed "
                                       "(`make browser-deps` installs them)")


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1200,900", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _wait(driver, condition, timeout=60):
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, timeout).until(condition)


def _cards(driver):
    """(path, score) of each card, read in one script so a re-render cannot interleave."""
    rows = driver.execute_script("""return [...document.querySelectorAll('#grid .card')].map(
        c => [c.querySelector('.path').textContent, c.querySelector('.score').textContent]);""")
    return [(path, float(score)) for path, score in rows]


def test_search_page_text_query_upload_drop_and_classify(browser, server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
    driver = browser
    driver.get(server.url + "/")
    _wait(driver, lambda d: "20 images" in d.find_element(By.ID, "status").text)
    assert not driver.find_element(By.ID, "upload").is_displayed()  # nothing uploaded yet

    # type a query: the grid shows the API's top-k, in order, with scores and loaded thumbnails
    Select(driver.find_element(By.ID, "k")).select_by_visible_text("10")
    box = driver.find_element(By.ID, "query")
    box.send_keys("a red circle")
    driver.find_element(By.CSS_SELECTOR, "#search-form button").click()
    _wait(driver, lambda d: len(_cards(d)) == 10)
    api = httpx.get(server.url + "/api/search", params={"q": "a red circle", "k": 10}).json()["results"]
    cards = _cards(driver)
    assert [p for p, _ in cards] == [r["path"] for r in api]
    assert [s for _, s in cards] == pytest.approx([round(r["score"], 3) for r in api], abs=1e-3)
    _wait(driver, lambda d: d.execute_script(
        "return [...document.querySelectorAll('#grid img')].every(i => i.complete && i.naturalWidth > 0)"))

    # upload an image through the file input: it comes first, at cosine 1
    target = server.photos / "img005.png"
    driver.find_element(By.ID, "file").send_keys(str(target))
    _wait(driver, lambda d: _cards(d) and _cards(d)[0][0] == "img005.png")
    assert driver.find_element(By.ID, "upload").is_displayed()
    assert _cards(driver)[0][1] == pytest.approx(1.0, abs=1e-3)

    # drop another image on the drop zone (a real drop event carrying a File)
    data = base64.b64encode((server.photos / "img007.png").read_bytes()).decode()
    driver.execute_script("""
        const bytes = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0));
        const file = new File([bytes], 'dropped.png', {type: 'image/png'});
        const dt = new DataTransfer(); dt.items.add(file);
        document.getElementById('drop').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true}));
    """, data)
    _wait(driver, lambda d: _cards(d) and _cards(d)[0][0] == "img007.png")

    # classify the dropped image with typed labels: probabilities, best first, summing to 100%
    driver.find_element(By.ID, "labels").send_keys("a red thing, a blue thing, a dog")
    driver.find_element(By.CSS_SELECTOR, "#classify-form button").click()
    _wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#classes li")) == 3)
    rows = [li.text.rsplit(" ", 1) for li in driver.find_elements(By.CSS_SELECTOR, "#classes li")]
    percents = [float(p.rstrip("%")) for _, p in rows]
    assert percents == sorted(percents, reverse=True) and sum(percents) == pytest.approx(100, abs=0.5)
    assert {label for label, _ in rows} == {"a red thing", "a blue thing", "a dog"}

    # an error from the API is shown on the page, not swallowed
    box.clear()
    box.send_keys("x" * 1001)
    driver.find_element(By.CSS_SELECTOR, "#search-form button").click()
    _wait(driver, lambda d: "longer than" in d.find_element(By.ID, "message").text)
    assert "error" in driver.find_element(By.ID, "message").get_attribute("class")

    shot = os.environ.get("EVACLIP_SEARCH_SCREENSHOT") or str(tmp_path / "page.png")
    assert driver.save_screenshot(shot)
    with open(shot, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
