"""A person at the dashboard: headless Chromium (Debian's) logs in through nginx over TLS,
clicks Retry on a failed job, and a real `clarity worker` runs it. Screenshots go to
tests/artifacts/."""

from __future__ import annotations

import shutil

import pytest

from app.devstack.processes import free_port, real_clock_env
from tests.admin.helpers import ADMIN, ADMIN_KEY
from tests.helpers import WorkerProcess, clarity_env, wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                       reason="needs Debian's chromium and chromium-driver"),
]
PREFIX = "open"  # the open_stack's key prefix


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 "--window-size=1400,1000", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    options.accept_insecure_certs = True  # the test's self-signed certificate
    service = Service(executable_path=CHROMEDRIVER, env=real_clock_env())
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def test_operator_logs_in_and_retries_a_failed_job_which_then_runs(
        open_stack, redis_server, browser, artifacts, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    client = redis_server.client()
    with open_stack.client() as api:
        for queue in ("sync", "email", "cleanup", "webhook", "notifications"):
            api.post("/api/admin/queue", json={"action": "resume", "queue": queue},
                     headers=ADMIN)
        api.post("/api/admin/queue", json={"action": "clear-queue", "queue": "sync",
                                           "jobState": "failed"}, headers=ADMIN)
        worker = WorkerProcess(clarity_env(redis_server, PREFIX, health_check_port=free_port()),
                               queues=("sync",),
                               concurrency=2, log=tmp_path / "worker.log").start()
        try:
            # A job that fails every attempt until the "heal" flag is set.
            job = api.post("/api/jobs", json={"queue": "sync", "task": "flaky",
                                              "payload": {"n": "browser-1"}},
                           headers=ADMIN).json()
            wait_for(lambda: api.get(f"/api/admin/queue?action=job&queue=sync&id={job['id']}",
                                     headers=ADMIN).json().get("state") == "failed",
                     timeout=30, message="the flaky job to fail")
            client.set(f"{PREFIX}:test:heal", "1")

            wait = WebDriverWait(browser, 60)  # a bound for a loaded machine, not a timing
            browser.get(open_stack.url + "/")
            wait.until(ec.presence_of_element_located((By.ID, "key")))
            browser.find_element(By.ID, "key").send_keys(ADMIN_KEY)
            browser.save_screenshot(str(artifacts / "admin-login.png"))
            browser.find_element(By.ID, "login").click()
            retry = (By.CSS_SELECTOR, f'button[data-action="retry-job"][data-job="{job["id"]}"]')
            button = wait.until(ec.element_to_be_clickable(retry))
            assert "flaky failure" in browser.page_source
            browser.save_screenshot(str(artifacts / "admin-dashboard-failed-job.png"))
            button.click()
            wait_for(lambda: api.get(f"/api/admin/queue?action=job&queue=sync&id={job['id']}",
                                     headers=ADMIN).json().get("state") != "failed",
                     timeout=10, message="the click to move the job out of the failed set")

            # The worker runs it, and the page refreshes itself (no reload) to show it gone.
            wait_for(lambda: b"browser-1" in client.lrange(f"{PREFIX}:test:done", 0, -1),
                     timeout=30, message="the worker to run the retried job")
            wait.until(ec.invisibility_of_element_located(retry))
            wait.until(lambda d: "done" in d.find_element(By.ID, "status").text
                       or "live" in d.find_element(By.ID, "status").text)
            assert browser.execute_script("return performance.getEntriesByType("
                                          "'navigation').length") == 1
            browser.save_screenshot(str(artifacts / "admin-dashboard-after-retry.png"))
            audit = client.lrange(f"{PREFIX}:audit", 0, 20)
            assert any(b'"action":"retry-job"' in a and b'"via":"dashboard"' in a
                       for a in audit)
        finally:
            worker.stop()


def test_operator_reads_charts_finds_a_job_and_filters_the_failed_list(
        open_stack, redis_server, browser, artifacts, tmp_path):
    """Issue 18 in a browser: charts drawn from what a real worker ran, search by job id
    from the header into the job's page, the failed list filtered by error type, then a
    bulk retry of the selection. Screenshots: admin-charts.png, admin-job-page.png,
    admin-failed-filtered.png."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    client = redis_server.client()
    with open_stack.client() as api:
        for queue in ("sync", "email", "cleanup", "webhook", "notifications"):
            api.post("/api/admin/queue", json={"action": "resume", "queue": queue},
                     headers=ADMIN)
        api.post("/api/admin/queue", json={"action": "clear-queue", "queue": "sync",
                                           "jobState": "failed"}, headers=ADMIN)
        client.delete(f"{PREFIX}:test:heal")
        worker = WorkerProcess(clarity_env(redis_server, PREFIX, health_check_port=free_port()),
                               queues=("sync",), concurrency=4,
                               log=tmp_path / "worker.log").start()
        try:
            for i in range(30):
                api.post("/api/jobs", json={"queue": "sync", "task": "record",
                                            "payload": {"n": f"chart-{i}"}}, headers=ADMIN)
            for i in range(3):
                api.post("/api/jobs", json={"queue": "sync", "task": "permanent",
                                            "payload": {"n": i}}, headers=ADMIN)
            flaky = [api.post("/api/jobs", json={"queue": "sync", "task": "flaky",
                                                 "payload": {"n": f"chart-flaky-{i}"}},
                              headers=ADMIN).json()["id"] for i in range(2)]
            wait_for(lambda: api.get("/api/admin/queue?action=stats&queue=sync",
                                     headers=ADMIN).json()["counts"]["failed"] == 5,
                     timeout=40, message="five jobs to fail for good")

            wait = WebDriverWait(browser, 60)  # a bound for a loaded machine, not a timing
            browser.get(open_stack.url + "/")
            wait.until(ec.presence_of_element_located((By.ID, "key")))
            browser.find_element(By.ID, "key").send_keys(ADMIN_KEY)
            browser.find_element(By.ID, "login").click()

            def drawn(driver):
                driver.get(open_stack.url + "/charts")
                chart = driver.find_element(By.ID, "chart-sync-throughput")
                return chart if int(chart.get_attribute("data-points")) > 0 else False

            WebDriverWait(browser, 30, poll_frequency=1).until(drawn)
            assert browser.find_elements(By.CSS_SELECTOR, "#chart-sync-throughput polyline, "
                                                          "#chart-sync-throughput circle")
            assert int(browser.find_element(By.ID, "chart-sync-latency")
                       .get_attribute("data-points")) > 0
            browser.save_screenshot(str(artifacts / "admin-charts.png"))

            search = browser.find_element(By.ID, "job-search")
            search.send_keys(flaky[0])
            browser.find_element(By.ID, "job-search-go").click()
            wait.until(ec.presence_of_element_located((By.ID, "attempts")))
            assert "flaky failure" in browser.find_element(By.ID, "attempts").text
            assert "chart-flaky-0" in browser.find_element(By.ID, "payload").text
            browser.save_screenshot(str(artifacts / "admin-job-page.png"))

            browser.get(open_stack.url + "/failed?queue=sync")
            Select(browser.find_element(By.ID, "filter-error")).select_by_value("RuntimeError")
            browser.find_element(By.ID, "filter-apply").click()
            wait.until(lambda d: "errorType=RuntimeError" in d.current_url)
            rows = browser.find_elements(By.CSS_SELECTOR, "#bulk tbody tr")
            assert sorted(r.get_attribute("data-job") for r in rows) == sorted(flaky)
            for box in browser.find_elements(By.NAME, "jobIds"):
                box.click()
            browser.save_screenshot(str(artifacts / "admin-failed-filtered.png"))
            browser.find_element(By.ID, "bulk-retry").click()
            wait_for(lambda: any(b'"action":"retry-jobs"' in a and b'"via":"dashboard"' in a
                                 and b'"result":"ok"' in a
                                 for a in client.lrange(f"{PREFIX}:audit", 0, 20)),
                     timeout=15, message="the bulk retry to be done and audited")
            wait.until(lambda d: "errorType=RuntimeError" in d.current_url)
        finally:
            worker.stop()
