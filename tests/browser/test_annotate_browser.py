"""The annotation pages in headless Chromium: sign in through the form, vote with the mouse, with the
keyboard (2, Enter) and as a tie with a reason (3, Ctrl+Enter in the reason box), watch the progress count,
see markup in a prompt shown as literal text, reach "nothing left to judge", and open the summary with its
statistics and plot. LIFECYCLE_SCREENSHOTS=1 also saves docs/images/annotate.png and annotate-summary.png."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from sqlalchemy import select

from lifecycle.preferences.app import create_app
from lifecycle.preferences.assign import next_item, submit_vote
from lifecycle.preferences.db import default_url, read
from lifecycle.preferences.schema import Vote
from lifecycle.preferences.store import NewBatch, NewItem, PreferenceStore
from tests.annotate_fixtures import annotate_config, serving
from tests.browser.chrome import NEEDS_CHROMIUM, wait_for

ROOT = Path(__file__).resolve().parents[2]
MARKUP = "<script>alert(1)</script><b>bold</b>"
pytestmark = NEEDS_CHROMIUM


def wait_votes(driver: webdriver.Chrome, n: int) -> None:
    """Until the page counts `n` votes of ours and shows the next item (or the end)."""
    wait_for(driver, lambda d: d.find_element(By.ID, "your-votes").text == str(n), f"your votes: {n}")


def screenshot(driver: webdriver.Chrome, name: str) -> None:
    if os.environ.get("LIFECYCLE_SCREENSHOTS") == "1":
        driver.save_screenshot(str(ROOT / "docs" / "images" / name))


def test_annotating_in_the_browser(tmp_path: Path, browser: webdriver.Chrome) -> None:
    store = PreferenceStore.open(default_url(tmp_path))
    store.publish_batch(NewBatch("b1", "human", votes_per_item=3), [
        NewItem(({"role": "system", "content": "Answer in one sentence."},
                 {"role": "user", "content": f"Question {i}: what does this print? {MARKUP}"}),
                f"It prints the text literally, markup and all ({i}).", f"Nothing, the script runs instead ({i}).")
        for i in range(4)])
    for name, choices in (("bob", "aabt"), ("carol", "abba")):  # two colleagues voted already (API level)
        who = store.authenticate(store.add_annotator(name))[0]
        for choice in choices:
            shown = next_item(store, who, gold_every=0)
            submit_vote(store, str(uuid.uuid4()), who, shown.item_id, {"t": "tie"}.get(choice, choice))
    token = store.add_annotator("alice")
    with serving(create_app(store, annotate_config())) as base:
        browser.get(f"{base}/")
        wait_for(browser, lambda d: d.current_url.endswith("/login"), "the sign-in page")
        browser.find_element(By.ID, "token").send_keys(token)
        browser.find_element(By.ID, "sign-in").click()
        wait_for(browser, lambda d: d.find_element(By.ID, "task").is_displayed(), "an item to judge")
        wait_votes(browser, 0)
        assert "items left" in browser.find_element(By.ID, "progress").text

        contents = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#prompt .content")]
        roles = [e.text.lower() for e in browser.find_elements(By.CSS_SELECTOR, "#prompt .role")]
        assert roles == ["system", "user"] and MARKUP in contents[1]  # shown as text, not run
        assert browser.find_elements(By.CSS_SELECTOR, "#prompt b, #prompt script") == []
        with pytest.raises(NoAlertPresentException):
            browser.switch_to.alert.text  # noqa: B018 - raises when no alert is open

        browser.find_element(By.ID, "choose-left").click()  # 1: the mouse
        browser.find_element(By.ID, "submit").click()
        wait_votes(browser, 1)
        keys = ActionChains(browser)
        keys.send_keys("2").perform()  # 2: the keyboard
        assert browser.find_element(By.ID, "choose-right").get_attribute("aria-pressed") == "true"
        keys.send_keys(Keys.ENTER).perform()
        wait_votes(browser, 2)
        keys.send_keys("3").perform()  # 3: a tie, with a reason; Enter in the box is a new line
        reason = browser.find_element(By.ID, "reason")
        reason.send_keys("both are wrong", Keys.ENTER, "equally")
        assert browser.find_element(By.ID, "your-votes").text == "2"
        reason.send_keys(Keys.CONTROL, Keys.ENTER)
        wait_votes(browser, 3)
        assert browser.find_element(By.ID, "items-left").text == "1"
        screenshot(browser, "annotate.png")
        keys.send_keys("1", Keys.ENTER).perform()
        wait_for(browser, lambda d: d.find_element(By.ID, "empty").is_displayed(), "nothing left to judge")
        assert "Nothing left to judge" in browser.find_element(By.ID, "empty").text

        judgements = [j for j in store.judgements("b1") if j.annotator == "alice"]
        assert len(judgements) == 4
        seen = [j.choice if j.choice == "tie" else ("left" if j.choice == j.left else "right") for j in judgements]
        assert sorted(seen) == ["left", "left", "right", "tie"]
        assert "both are wrong\nequally" in _reasons(store)  # Enter in the reason box made a new line

        browser.set_window_size(1280, 1500)  # the statistics and the plot on one screen
        browser.get(f"{base}/summary")
        wait_for(browser, lambda d: d.execute_script(
            "const img = document.getElementById('plot'); return img.complete && img.naturalWidth > 0;"),
            "the statistics plot loaded")
        stats = browser.find_element(By.ID, "stats-table").text
        for label in ("Cohen", "Fleiss", "Krippendorff", "majority agreement", "position bias", "length bias"):
            assert label in stats
        assert "alice" in browser.find_element(By.ID, "annotators-table").text
        assert "12 / 12" in browser.find_element(By.ID, "progress-table").text
        screenshot(browser, "annotate-summary.png")
        csp = [e["message"] for e in browser.get_log("browser") if "Content Security Policy" in e["message"]]
        assert csp == []  # every script and style is a file of this site


def _reasons(store: PreferenceStore) -> list[str | None]:
    with read(store.engine) as s:
        return list(s.scalars(select(Vote.reason)))
