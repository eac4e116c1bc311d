"""The user's path in the Prefect UI, in headless Chromium (Debian's ``chromium`` and
``chromium-driver``, installed by ``make system-deps``), against a demo-like setup: the demo in
``--serve-only`` mode (real Prefect server with the UI, the five served deployments, the
sandbox, saved blocks).

It checks the deployments list, each deployment's run form (parameter titles and
descriptions, the QC evaluation's fields, a saved-block picker), that the snapshot form refuses
a bad S3 destination before a run exists, starts the snapshot from its form with the CAVE block
picked from the saved blocks, follows the run to completion and opens its artifacts.
Screenshots (PNG) go to ``$NEURODATA_UI_SCREENSHOTS`` (default: the test's temporary
directory). A page that lacks what is checked fails the test; nothing is skipped.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from prefect_neurodata.deployments import deployment_specs

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

pytestmark = pytest.mark.flows

# What each run form must show: parameter names/titles and descriptions from the flows.
QC_EVALUATION_FIELDS = ("Name", "Modality", "Abbreviation", "Stage", "Metrics", "Status History")
"""What one QC evaluation shows in the run form once added."""
FORM_TEXT = {
    "registration": ["request", "docdb_block"],
    "qc": ["request", "Assets", "Evaluations", "docdb_block"],
    "sync": ["request", "Bucket", "docdb_block", "rds_block"],
    "snapshot": ["request", "Destination", "cave_block"],
    "annotations": ["request", "Table", "cave_block"],
}


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = os.environ.get("NEURODATA_UI_SCREENSHOTS")
    path = Path(target) if target else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def demo_ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The demo's Prefect UI URL, with everything served and the blocks saved."""
    workdir = tmp_path_factory.mktemp("ui-demo")
    console = workdir / "console.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    with console.open("wb") as out:
        demo = subprocess.Popen(
            [sys.executable, "-m", "prefect_neurodata.demo", "--workdir", str(workdir / "wd"),
             "--records", "200", "--s3-assets", "10", "--port", "0", "--serve-only"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while "press Ctrl-C to stop" not in console.read_text(errors="replace"):
            if demo.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the demo did not come up:\n{console.read_text()[-4000:]}")
            time.sleep(0.5)
        match = re.search(r"Prefect UI:\s+(http://127\.0\.0\.1:\d+)", console.read_text())
        assert match, console.read_text()
        yield match.group(1)
    finally:
        if demo.poll() is None:
            demo.send_signal(signal.SIGTERM)
            try:
                demo.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(demo.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    for binary in (CHROMIUM, CHROMEDRIVER):
        if not shutil.which(binary):
            pytest.fail(f"{binary} is missing: run `make system-deps`", pytrace=False)
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1400,2400"):  # fmt: skip
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _page_text(driver: Any, wanted: list[str], timeout: float = 60) -> str:
    """The page's text once every ``wanted`` string shows (fails naming the missing ones)."""
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = driver.find_element(By.TAG_NAME, "body").text
        if all(w in text for w in wanted):
            return text
        time.sleep(0.5)
    missing = [w for w in wanted if w not in text]
    pytest.fail(f"{driver.current_url} lacks {missing}; it shows:\n{text[:3000]}")


def _deployment_ids(ui: str) -> dict[str, str]:
    import httpx

    response = httpx.post(f"{ui}/api/deployments/filter", json={})
    response.raise_for_status()
    return {d["name"]: d["id"] for d in response.json()}


FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _flow_run(ui: str, flow_run_id: str) -> dict[str, Any]:
    import httpx

    response = httpx.get(f"{ui}/api/flow_runs/{flow_run_id}")
    response.raise_for_status()
    return response.json()


def _artifact_keys(ui: str, flow_run_id: str) -> set[str]:
    import httpx

    response = httpx.post(
        f"{ui}/api/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}}
    )
    response.raise_for_status()
    return {a["key"] for a in response.json() if a.get("key")}


def _flow_runs(ui: str, deployment_id: str) -> list[dict[str, Any]]:
    import httpx

    response = httpx.post(
        f"{ui}/api/flow_runs/filter", json={"deployments": {"id": {"any_": [deployment_id]}}}
    )
    response.raise_for_status()
    return response.json()


def _button(driver: Any, text: str, index: int = 0) -> Any:
    """The ``index``-th visible button labelled ``text`` (fails naming it when absent)."""
    from selenium.webdriver.common.by import By

    buttons = [b for b in driver.find_elements(By.TAG_NAME, "button") if b.text.strip() == text]
    visible = [b for b in buttons if b.is_displayed()]
    if len(visible) <= index:
        pytest.fail(f"{driver.current_url} has no button {text!r} number {index + 1}")
    return visible[index]


def _field_input(driver: Any, value: str) -> Any:
    """The visible text input or textarea of the form that holds ``value``."""
    from selenium.webdriver.common.by import By

    for element in driver.find_elements(By.CSS_SELECTOR, "input, textarea"):
        if element.is_displayed() and element.get_attribute("value") == value:
            return element
    pytest.fail(f"{driver.current_url} has no input holding {value!r}")


def _pick_block(driver: Any, block_type: str, block_name: str) -> None:
    """Switch a block parameter to the saved-block picker and pick ``block_name``."""
    from selenium.webdriver.common.by import By

    _button(driver, block_type).click()
    deadline = time.monotonic() + 30
    while not (
        pickers := [
            picker
            for picker in driver.find_elements(By.CSS_SELECTOR, ".block-documents-select")
            if picker.is_displayed()
        ]
    ):
        if time.monotonic() > deadline:
            pytest.fail(f"no saved-block picker after choosing {block_type}")
        time.sleep(0.5)
    pickers[0].click()
    while True:
        options = [
            e
            for e in driver.find_elements(By.XPATH, f"//*[normalize-space(text())='{block_name}']")
            if e.is_displayed()
        ]
        if options:
            options[-1].click()
            return
        if time.monotonic() > deadline:
            pytest.fail(f"the {block_type} picker does not offer the saved block {block_name!r}")
        time.sleep(0.5)


def test_deployments_forms_run_and_artifacts(demo_ui: str, browser: Any, screenshots: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    specs = deployment_specs()
    browser.get(f"{demo_ui}/deployments")
    _page_text(browser, ["5 Deployments", *[s.name for s in specs], *[s.flow_name for s in specs]])
    browser.save_screenshot(str(screenshots / "deployments.png"))

    ids = _deployment_ids(demo_ui)
    for spec in specs:
        browser.get(f"{demo_ui}/deployments/deployment/{ids[spec.name]}/run")
        _page_text(browser, [spec.name, "Parameters", *FORM_TEXT[spec.key], "Submit"])
        if spec.key == "qc":
            # QC evaluations are typed: adding one shows its fields, the stage as a choice.
            _button(browser, "Add item", 1).click()
            _page_text(browser, [*QC_EVALUATION_FIELDS])
            # Block parameters offer the saved blocks; the demo saved neurodata-docdb.
            _pick_block(browser, "DocDbApiCredentials", "neurodata-docdb")
        browser.save_screenshot(str(screenshots / f"run-form-{spec.key}.png"))

    # The snapshot form refuses a bad S3 destination before a run exists...
    snapshot = next(s for s in specs if s.key == "snapshot")
    scheduled = {r["id"] for r in _flow_runs(demo_ui, ids[snapshot.name])}  # the cron's runs
    browser.get(f"{demo_ui}/deployments/deployment/{ids[snapshot.name]}/run")
    _page_text(browser, ["Submit", "Destination"])
    default = snapshot.parameters["request"]["destination"]
    destination = _field_input(browser, default)
    destination.send_keys(Keys.CONTROL, "a")
    destination.send_keys("s3://Bad_Bucket/snapshots")
    _button(browser, "Submit").click()
    _page_text(browser, ["does not match"])
    browser.save_screenshot(str(screenshots / "run-form-snapshot-refused.png"))
    time.sleep(2)
    assert not [r for r in _flow_runs(demo_ui, ids[snapshot.name]) if r["id"] not in scheduled]
    assert "/run" in browser.current_url, "the form left its page despite the bad destination"

    # ...and, corrected and with the CAVE block picked from the saved blocks, it runs.
    destination = _field_input(browser, "s3://Bad_Bucket/snapshots")
    destination.send_keys(Keys.CONTROL, "a")
    destination.send_keys(default)
    _pick_block(browser, "CaveCredentials", snapshot.parameters["cave_block"])
    browser.save_screenshot(str(screenshots / "run-form-snapshot.png"))
    _button(browser, "Submit").click()
    # The UI creates the run and shows the deployment's runs; find the run it created.
    deadline = time.monotonic() + 60
    while not (
        runs := [r for r in _flow_runs(demo_ui, ids[snapshot.name]) if r["id"] not in scheduled]
    ):
        if time.monotonic() > deadline:
            pytest.fail(f"submitting the run form created no run: {browser.current_url}")
        time.sleep(0.5)
    (run,) = runs
    assert "$ref" in run["parameters"]["cave_block"], run["parameters"]  # the picked block
    run_url = f"{demo_ui}/runs/flow-run/{run['id']}"
    deadline = time.monotonic() + 300
    while (state := (run := _flow_run(demo_ui, run["id"]))["state_type"]) not in FINAL_STATES:
        if time.monotonic() > deadline:
            pytest.fail(f"the snapshot run is still {state} after 300 s")
        time.sleep(2)
    browser.get(run_url)
    # The flow names its run when it starts (the form's suggested name is replaced).
    text = _page_text(browser, [snapshot.flow_name, snapshot.name, run["name"], run["state_name"]])
    browser.save_screenshot(str(screenshots / "snapshot-run.png"))
    assert state == "COMPLETED", f"the run started from the form ended {state}:\n{text[:3000]}"

    # Its artifacts tab lists every artifact the run published.
    keys = _artifact_keys(demo_ui, run["id"])
    assert keys, "the snapshot run published no artifacts"
    browser.get(run_url)
    _page_text(browser, ["Artifacts"])
    tabs = [
        element
        for element in browser.find_elements(By.XPATH, "//*[normalize-space(.)='Artifacts']")
        if element.is_displayed()
    ]
    assert tabs, "the flow-run page has no Artifacts tab"
    tabs[-1].click()
    _page_text(browser, sorted(keys))
    browser.save_screenshot(str(screenshots / "snapshot-artifacts.png"))
