"""Screenshots of both dashboards for the README, from a real run: start `lifecycle ui --state-dir DIR`
first, then `python bench/dashboard_screenshots.py --state-dir DIR` writes docs/images/dashboard-*.png
(headless Debian Chromium: the pipeline's Prefect flow run, the registry with
aliases, and the report card)."""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from selenium.webdriver.common.by import By  # noqa: E402

from tests.browser.chrome import start_chromium  # noqa: E402


def latest_pipeline_run(prefect: str) -> str:
    body = json.dumps({"flow_runs": {"name": {"like_": "pipeline-"}}, "sort": "START_TIME_DESC", "limit": 1})
    request = urllib.request.Request(f"{prefect}/api/flow_runs/filter", data=body.encode(),
                                     headers={"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(request))[0]["id"]


def close_assistant(driver) -> None:  # MLflow 3's assistant panel covers a third of the page
    for button in driver.find_elements(By.CSS_SELECTOR, "button[aria-label='Close'], button[aria-label='close']"):
        try:
            button.click()
        except Exception:  # noqa: BLE001 - a hidden button: try the next one
            continue


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--prefect", default="http://127.0.0.1:4200")
    parser.add_argument("--mlflow", default="http://127.0.0.1:5000")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    args = parser.parse_args()
    db = sqlite3.connect(args.state_dir / "mlflow" / "mlflow.db")
    experiment = db.execute("select experiment_id from experiments where name = 'llm-lifecycle'").fetchone()[0]
    promote = db.execute("select r.run_uuid from runs r join tags t on t.run_uuid = r.run_uuid where t.key = "
                         "'lifecycle.stage' and t.value = 'promote' order by r.start_time desc").fetchone()[0]
    pages = {"dashboard-prefect-flow-run": f"{args.prefect}/runs/flow-run/{latest_pipeline_run(args.prefect)}",
             "dashboard-mlflow-registry": f"{args.mlflow}/#/models/lifecycle-gpt",
             "dashboard-mlflow-report-card":
                 f"{args.mlflow}/#/experiments/{experiment}/runs/{promote}/artifacts/promote/report/report.md"}
    driver = start_chromium()
    driver.set_window_size(1400, 900)
    try:
        for name, url in pages.items():
            driver.get(url)
            time.sleep(10)
            close_assistant(driver)
            driver.save_screenshot(str(args.out / f"{name}.png"))
            print(name, url)
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
