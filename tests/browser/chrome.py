"""Shared by the browser tests: headless Debian Chromium through Selenium, the mark that skips a test module
without it, and a wait that names what it waited for."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
NEEDS_CHROMIUM = [pytest.mark.browser, pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="needs Debian chromium + chromium-driver; .ci/run installs them")]


def start_chromium() -> webdriver.Chrome:
    """Headless, 1280x900, with the browser console kept (driver.get_log("browser"))."""
    options = Options()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))


def wait_for(driver: webdriver.Chrome, condition: Callable[[webdriver.Chrome], object], message: str,
             timeout_s: float = 20) -> None:
    WebDriverWait(driver, timeout_s, poll_frequency=0.05).until(condition, message)
