"""The chat page of `lifecycle serve` in headless Chromium: ask a question and see the streamed answer with its
sources, see markup in the question shown as literal text, rate the answer, then compare champion and
challenger side by side and pick one; the rating and the choice land in the preference store, and the page
works with an API key it asks for."""

from __future__ import annotations

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By
from sqlalchemy import select

from lifecycle.preferences.db import read
from lifecycle.preferences.feedback import feedback_rows
from lifecycle.preferences.schema import Rating
from lifecycle.serve.app import create_app
from tests.annotate_fixtures import serving
from tests.browser.chrome import NEEDS_CHROMIUM, wait_for
from tests.serve_fixtures import NAME, ServeState, make_serve_state, serve_config

QUESTION = "How do I deserialize a JSON document? <script>alert(1)</script><b>bold</b>"
pytestmark = NEEDS_CHROMIUM


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> ServeState:
    return make_serve_state(tmp_path_factory.mktemp("serve"))


def text(driver: webdriver.Chrome, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def ask(driver: webdriver.Chrome, question: str) -> None:
    box = driver.find_element(By.ID, "question")
    box.clear()
    box.send_keys(question)
    driver.find_element(By.ID, "ask").click()


def test_chatting_rating_and_comparing_in_the_browser(state: ServeState, browser: webdriver.Chrome) -> None:
    cfg, store = serve_config(), state.store()
    with serving(create_app(state.models(cfg), cfg, store, state.experiment_id)) as base:
        browser.get(f"{base}/")
        wait_for(browser, lambda d: d.find_element(By.ID, "compare").is_enabled(), "the challenger to show up")
        assert "champion: tiny-chat/1" in text(browser, "served")
        ask(browser, QUESTION)
        wait_for(browser, lambda d: text(d, "answer-trace").startswith("tr-"), "the answer and its trace")
        assert text(browser, "answer") and text(browser, "answer-model") == f"{NAME}/1"
        sources = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#sources li")]
        assert sources[0].startswith("json.loads") and "json.py [stdlib]" in sources[0]
        assert text(browser, "asked") == QUESTION  # markup shown as text, never run
        assert browser.find_elements(By.CSS_SELECTOR, "#asked b, #asked script") == []
        with pytest.raises(NoAlertPresentException):
            browser.switch_to.alert.text  # noqa: B018 - raises when no alert is open

        browser.find_element(By.ID, "rate-down").click()
        wait_for(browser, lambda d: "recorded" in text(d, "rate-status"), "the rating saved")
        assert not browser.find_element(By.ID, "rate-up").is_enabled()  # one rating per answer
        with read(store.engine) as s:
            rating = s.scalars(select(Rating)).one()
        assert (rating.score, rating.model, rating.answer) == (-1, f"{NAME}/1", text(browser, "answer"))
        assert QUESTION in rating.prompt and '"origin": "chat"' in rating.meta

        browser.find_element(By.ID, "compare").click()
        ask(browser, QUESTION)
        wait_for(browser, lambda d: d.find_element(By.ID, "choose-right").is_enabled(), "two answers to compare")
        left, right = text(browser, "left-answer"), text(browser, "right-answer")
        assert left and right and left != right and text(browser, "left-model") == ""  # blind until the vote
        assert browser.find_elements(By.CSS_SELECTOR, "#left-sources li")
        browser.find_element(By.ID, "choose-right").click()
        wait_for(browser, lambda d: "recorded" in text(d, "compare-status"), "the choice saved")
        assert {text(browser, "left-model"), text(browser, "right-model")} == {f"{NAME}/1", f"{NAME}/2"}
        rows = feedback_rows(store)
        assert [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows] == [(right, left)]
        assert rows[0]["prompt"] == [{"role": "user", "content": QUESTION}] and rows[0]["source"] == "feedback"
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []


def test_the_page_asks_for_the_api_key(state: ServeState, browser: webdriver.Chrome) -> None:
    cfg = serve_config()
    with serving(create_app(state.models(cfg), cfg, None, None, api_key="page-key", reload=False)) as base:
        browser.get(f"{base}/")
        assert browser.find_element(By.ID, "key-box").is_displayed()
        ask(browser, "What does csv.reader return?")
        wait_for(browser, lambda d: "API key" in text(d, "status"), "a refusal naming the key")
        browser.find_element(By.ID, "api-key").send_keys("page-key")
        browser.find_element(By.ID, "use-key").click()
        assert not browser.find_element(By.ID, "key-box").is_displayed()
        browser.find_element(By.ID, "ask").click()
        wait_for(browser, lambda d: text(d, "answer-model") == f"{NAME}/1", "an answer with the key")
