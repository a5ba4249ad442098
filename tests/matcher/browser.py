"""A real headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by Selenium) on the review
page: what the page tests share. ``needs_browser`` skips, with the reason, where either is missing."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[2] / ".matcher" / "artifacts"

needs_browser = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="no headless browser here: install Debian's chromium and chromium-driver (apt-get install -y chromium "
    "chromium-driver)",
)


@contextlib.contextmanager
def open_review_page(url: str, height: int) -> Iterator[Any]:
    """A headless Chromium (1400 x ``height``) on ``url`` once the page has loaded its data (``data-ready`` 1,
    else the page's status line is the failure); quit on leaving."""
    pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[dev]')")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size=1400,{height}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    try:
        driver.get(url)
        WebDriverWait(driver, 60).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
        assert driver.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1", driver.find_element(
            By.ID, "status"
        ).text
        yield driver
    finally:
        driver.quit()
