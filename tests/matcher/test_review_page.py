"""The match-review page in a real headless Chromium (Selenium + the system's chromium and chromedriver)."""

from __future__ import annotations

import csv

import pytest

from engine.settings import Settings
from tests.matcher.browser import ARTIFACTS, needs_browser, open_review_page

pytest.importorskip("fastapi", reason="the 'serve' extra is not installed (pip install -e '.[serve]')")
pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[dev]')")



@needs_browser
def test_review_page_shows_a_users_photos_and_matches(served: Settings, live_server: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    root = served.serve.photos_root
    assert root is not None
    with open(root / "metadata.csv", newline="") as fh:
        uid = next(csv.DictReader(fh))["user_id"]
    with open_review_page(f"{live_server}/review?user={uid}", 1200) as driver:
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
