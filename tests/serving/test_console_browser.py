"""The console in a real browser: Debian's Chromium driven by Selenium (system chromedriver) against
the service running in-process under uvicorn on a free port, over the synthetic bundle and the small
artifacts of ``tests/serving/test_console.py``.

One walk through the console: a wrong key shows the login message; sign in with the admin key; open
every view and compare its numbers with the artifacts (segment sizes, users, audience counts,
experiment units); start an experiment, send traffic, read its split, stop it; a phone-sized window
still shows the views. Any console error in the browser, or any failed request after sign-in, fails
the test. With ``SHOPREC_CONSOLE_SHOTS=<folder>`` a screenshot of each view is saved there.
"""
from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from tests.serving.conftest import ADMIN_KEY, API_KEY, free_port
from tests.serving.test_console import EXPERIMENT, console_artifacts, console_overrides  # noqa: F401 (fixture)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
pytestmark = pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
                                reason="needs Debian's chromium and chromium-driver (scripts/_system_deps.sh)")


@pytest.fixture()
def live_console(console_artifacts, tmp_path):
    """The app under uvicorn on a free loopback port; yields (base URL, Service)."""
    import uvicorn

    from serving.api import create_app
    from serving.app import compose_config
    from serving.service import Service

    cfg = compose_config([*console_overrides(console_artifacts), f"serve.store.event_log={tmp_path}/events.csv",
                          f"serve.experiments.log_dir={tmp_path}/exp"])
    svc = Service(cfg.serve, background=False)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(svc), host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    yield url, svc
    server.should_exit = True
    thread.join(10)
    svc.stop()


@pytest.fixture()
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,900",
              "--disable-extensions", "--no-first-run", "--disable-background-networking"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=DriverService(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def problems(driver) -> list[str]:
    """Console errors and failed requests since the last call (the logs are drained)."""
    out = [f"console: {e['message']}" for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    for e in driver.get_log("performance"):
        msg = json.loads(e["message"])["message"]
        if msg["method"] == "Network.responseReceived":
            r = msg["params"]["response"]
            if r["status"] >= 400:
                out.append(f"request: {r['status']} {r['url']}")
        elif msg["method"] == "Network.loadingFailed" and not msg["params"].get("canceled"):
            out.append(f"request failed: {msg['params'].get('errorText')}")
    return out


def open_view(driver, url: str, name: str):
    from selenium.webdriver.support.ui import WebDriverWait

    same = driver.execute_script("document.getElementById('view').dataset.loaded = ''; return location.hash") == f"#{name}"
    if same:  # no hashchange: load the page again
        driver.refresh()
    else:
        driver.get(f"{url}/console#{name}")
    WebDriverWait(driver, 20).until(
        lambda d: d.execute_script("return document.getElementById('view').dataset.loaded") == name)
    return driver.find_element("id", "view")


def shot(driver, name: str) -> None:
    folder = os.environ.get("SHOPREC_CONSOLE_SHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / f"{name}.png"))


def test_console_in_chromium(live_console, browser, console_artifacts):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, svc = live_console
    d = browser
    # a wrong key: the login page again, with a message (the 403 of that POST is expected)
    d.get(f"{url}/console")
    d.find_element(By.ID, "key").send_keys("wrong-key")
    d.find_element(By.ID, "login-button").click()
    # the message element is on the page before the POST too (hidden): wait for the answer's page, whose
    # message says so, through the moment the old page's element goes stale
    from selenium.common.exceptions import StaleElementReferenceException

    WebDriverWait(d, 10, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda x: "not accepted" in x.find_element(By.ID, "login-message").text)
    msg = d.find_element(By.ID, "login-message")
    assert "not accepted" in msg.text and msg.is_displayed()
    problems(d)
    # sign in
    d.find_element(By.ID, "key").send_keys(ADMIN_KEY)
    d.find_element(By.ID, "login-button").click()
    WebDriverWait(d, 20).until(lambda x: x.execute_script("return document.getElementById('view') && "
                                                          "document.getElementById('view').dataset.loaded") == "segments")
    assert problems(d) == []

    # segments: sizes and users equal the profile artifacts
    v = open_view(d, url, "segments")
    table = pd.read_parquet(console_artifacts / "profiles" / "toy" / "segments.parquet")
    shown = {r.get_attribute("data-segment"): r.find_element(By.CSS_SELECTOR, "[data-size]").text
             for r in v.find_elements(By.CSS_SELECTOR, "#segment-table tr[data-segment]")}
    assert shown == {f"{k}:{n}": f"{int(s):,}" for k, n, s in zip(table["kind"], table["name"], table["size"])}
    n_users = len(pd.read_parquet(console_artifacts / "profiles" / "toy" / "profiles.parquet", columns=["user_id"]))
    assert v.find_element(By.ID, "users-total").text == f"{n_users:,}"
    assert len(v.find_elements(By.CSS_SELECTOR, "svg.chart")) >= 6
    shot(d, "segments")

    # campaigns: audience counts equal the audience manifest; the readout is there
    v = open_view(d, url, "campaigns")
    m = json.loads((console_artifacts / "campaigns" / "winback" / "manifest.json").read_text())
    for k in ("audience", "treatment", "control"):
        assert v.find_element(By.ID, f"count-{k}").text == f"{m['counts'][k]:,}"
    assert "Readout winback" in v.text and "simulation" in v.text
    shot(d, "campaigns")

    # experiments: start, traffic, split read from the exposure log, stop
    v = open_view(d, url, "experiments")
    box = v.find_element(By.CSS_SELECTOR, f"[data-experiment='{EXPERIMENT}']")
    assert box.get_attribute("data-status") == "not started"
    box.find_element(By.CSS_SELECTOR, "button[data-action='start']").click()
    WebDriverWait(d, 20).until(lambda x: x.find_element(
        By.CSS_SELECTOR, f"[data-experiment='{EXPERIMENT}']").get_attribute("data-status") == "running")
    with httpx.Client(base_url=url, headers={"X-API-Key": API_KEY}) as api:
        got = [api.post("/v1/recommendations", json={"user_id": f"user-{i}", "k": 5}).json() for i in range(20)]
    assert all(g.get("experiment") == EXPERIMENT for g in got)
    v = open_view(d, url, "experiments")
    box = v.find_element(By.CSS_SELECTOR, f"[data-experiment='{EXPERIMENT}']")
    units = {r.get_attribute("data-variant"): int(r.find_element(By.CSS_SELECTOR, "[data-units]").text)
             for r in box.find_elements(By.CSS_SELECTOR, "tr[data-variant]")}
    want = pd.Series([g["variant"] for g in got]).value_counts().to_dict()
    assert units == want and sum(units.values()) == 20
    assert box.find_element(By.CSS_SELECTOR, "[data-srm]").get_attribute("data-srm") in ("ok", "mismatch")
    shot(d, "experiments")
    box.find_element(By.CSS_SELECTOR, "button[data-action='stop']").click()
    WebDriverWait(d, 20).until(lambda x: x.find_element(
        By.CSS_SELECTOR, f"[data-experiment='{EXPERIMENT}']").get_attribute("data-status") == "stopped")
    assert "experiment" not in httpx.post(f"{url}/v1/recommendations", json={"user_id": "user-1", "k": 5},
                                          headers={"X-API-Key": API_KEY}).json()

    # models and health
    v = open_view(d, url, "models")
    assert v.find_element(By.ID, "serving-version").text == "b1"
    assert {e.get_attribute("data-version") for e in v.find_elements(By.CSS_SELECTOR, "[data-version]")} == {"b1", "b2"}
    shot(d, "models")
    v = open_view(d, url, "health")
    assert int(v.find_element(By.ID, "recs-total").text.replace(",", "")) == 21
    shot(d, "health")

    # a phone: one column, nothing wider than the screen
    d.set_window_size(390, 844)
    v = open_view(d, url, "campaigns")
    width = d.execute_script("return document.documentElement.scrollWidth")
    assert width <= 400, f"page {width} px wide on a 390 px screen"
    assert problems(d) == []
