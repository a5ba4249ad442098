"""The match-review page in a real headless Chromium (Selenium + the system's chromium and chromedriver)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from engine.settings import Settings

pytest.importorskip("fastapi", reason="the 'serve' extra is not installed (pip install -e '.[serve]')")
pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[dev]')")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[2] / ".matcher" / "artifacts"


@pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="no headless browser here: install Debian's chromium and chromium-driver (apt-get install -y chromium "
    "chromium-driver)",
)
def test_review_page_shows_a_users_photos_and_matches(served: Settings, live_server: str) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    root = served.serve.photos_root
    assert root is not None
    with open(root / "metadata.csv", newline="") as fh:
        uid = next(csv.DictReader(fh))["user_id"]
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1200"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    try:
        driver.get(f"{live_server}/review?user={uid}")
        WebDriverWait(driver, 60).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
        assert driver.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1", driver.find_element(
            By.ID, "status"
        ).text
        assert driver.find_element(By.ID, "who").text.startswith(uid)
        own = driver.find_elements(By.CSS_SELECTOR, "#own-photos img")
        assert own and all(driver.execute_script("return arguments[0].naturalWidth", im) > 0 for im in own)
        rows = driver.find_elements(By.CSS_SELECTOR, "#matches-a .match")
        assert rows, "no match on screen"
        first = rows[0]
        assert "score" in first.text and "a→b" in first.text and "b→a" in first.text
        assert driver.execute_script("return arguments[0].naturalWidth", first.find_element(By.TAG_NAME, "img")) > 0
        # Side by side: a second strategy in a second column.
        driver.find_element(By.ID, "compare").click()
        WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#matches-b .match"))
        # Neighbour view: click the user's first photo.
        driver.find_elements(By.CSS_SELECTOR, "#own-photos img")[0].click()
        WebDriverWait(driver, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#neighbours .nb")) > 1)
        owners = [e.get_attribute("data-user-id") for e in driver.find_elements(By.CSS_SELECTOR, "#neighbours .nb")]
        assert all(owners[1:])
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "review-page.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 1000
        print(f"review page screenshot: {shot}")
    finally:
        driver.quit()
