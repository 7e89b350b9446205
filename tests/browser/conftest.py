"""The `browser` fixture of the browser tests: a fresh headless Chromium per test (tests/browser/chrome.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from selenium import webdriver

from tests.browser.chrome import start_chromium


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    driver = start_chromium()
    try:
        yield driver
    finally:
        driver.quit()
