"""What an operator reaches for (issue 18): the per-minute series the workers write and
the charts drawn from them, a job's own page and API view, search by id, the failed list
filtered by task and error type with bulk actions, and panels that state a problem's fix.
Against the session's real redis-server; the series test runs a real worker."""

from __future__ import annotations

import re

from tests.admin.helpers import ADMIN, ADMIN_KEY, READONLY, READONLY_KEY, make_failed
from tests.admin.test_dashboard import csrf_of, login
from tests.helpers import wait_for
from worker.producer import enqueue
from worker.storage import Settlement

URL = "/api/admin/queue"


def fail_with(manager, queue, task, error_type, error, n=1):
    """Enqueue `n` jobs of `task` and fail them through the real storage."""
    ids = [enqueue(queue, task, {"n": i, "who": f"user-{i}"}).id for i in range(n)]
    storage = manager.storage(queue)
    for _ in ids:
        lease = storage.lease(block=False)
        storage.settle([Settlement("fail", lease, reason="error", error_type=error_type,
                                   error=error, traceback=f"Traceback\n{error_type}: {error}",
                                   attempts=1)])
    return ids


# -- series and charts -------------------------------------------------------------------------

def test_a_worker_writes_per_minute_series_that_the_api_and_charts_serve(
        client, workers, manager, redis_server, prefix):
    from tests.helpers import recorded

    worker = workers(queues=("sync",), concurrency=2)
    for i in range(6):
        enqueue("sync", "record", {"n": i})
    enqueue("sync", "permanent", {})
    wait_for(lambda: len(recorded("done")) == 6, timeout=30, message="six jobs to run")

    def point():
        body = client.get(f"{URL}?action=series&queue=sync&window=hour",
                          headers=READONLY).get_json()
        done = [p for p in body["queues"][0]["points"] if p["completed"] or p["failed"]]
        total = sum(p["completed"] for p in done), sum(p["failed"] for p in done)
        return body if total == (6, 1) else None

    client.application.extensions["clarity_views"].series.clear()
    body = wait_for(lambda: (client.application.extensions["clarity_views"].series.clear()
                             or point()), timeout=20, message="the series to show 6 + 1")
    worker.stop()
    points = body["queues"][0]["points"]
    assert len(points) == 60 and body["queues"][0]["stepMinutes"] == 1
    busy = [p for p in points if p["completed"]]
    assert all(p["latencyP50Ms"] is not None and p["latencyP95Ms"] >= p["latencyP50Ms"]
               for p in busy)
    assert any(p["depth"] is not None for p in points)
    # Bounded: one hash per minute per queue, each expiring within 25 hours.
    keys = list(redis_server.client().scan_iter(match=f"{prefix}:{{sync}}:series:*"))
    assert keys and all(0 < redis_server.client().ttl(k) <= 25 * 3600 for k in keys)
    day = client.get(f"{URL}?action=series&window=day", headers=READONLY).get_json()
    assert len(day["queues"]) == 5 and len(day["queues"][0]["points"]) == 96

    login(client)
    page = client.get("/charts").get_data(as_text=True)
    svg = re.search(r'<svg[^>]*id="chart-sync-throughput"[^>]*data-points="(\d+)"', page)
    assert svg and int(svg.group(1)) > 0
    assert "<polyline" in page or "<circle" in page
    assert "http" not in page.split("<svg", 1)[1].split("</svg>", 1)[0].replace(
        "http://www.w3.org/2000/svg", "")  # nothing fetched from anywhere


def test_series_recorder_keeps_counts_through_a_redis_error(manager):
    import redis as redis_lib

    from worker.events import ActiveJob
    from worker.series import SeriesRecorder, read_series

    broken = redis_lib.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    recorder = SeriesRecorder(broken, manager.settings.redis_key_prefix, ["email"])
    job = ActiveJob("j1", "email", "record", 0.0, 1)
    for _ in range(3):
        recorder.job_finished(job, "completed", 0.2, 0.004)
    assert recorder.flush() == 0  # Redis unreachable: kept for later
    recorder.client = manager.redis
    recorder._script = manager.redis.register_script(
        __import__("worker.series", fromlist=["FLUSH_SCRIPT"]).FLUSH_SCRIPT)
    assert recorder.flush() == 1
    series = read_series(manager.redis, manager.settings.redis_key_prefix, "email", 2)
    assert sum(p["completed"] for p in series["points"]) == 3
    assert next(p["latencyP50Ms"] for p in series["points"] if p["completed"]) <= 5


def test_percentiles_come_from_the_histogram():
    from worker.series import WAIT_BUCKETS_MS, percentile_ms

    buckets = [0] * (len(WAIT_BUCKETS_MS) + 1)
    buckets[0], buckets[5] = 50, 50  # half under 5 ms, half in (100, 250] ms
    assert percentile_ms(buckets, 0.5) == 5
    assert 100 < percentile_ms(buckets, 0.95) <= 250
    assert percentile_ms([0] * len(buckets), 0.5) is None


# -- one job -------------------------------------------------------------------------------------

def test_job_view_has_state_times_attempts_and_lease_holder(client, manager):
    (failed_id,) = fail_with(manager, "sync", "record", "TimeoutError", "bank did not answer")
    body = client.get(f"{URL}?action=job&id={failed_id}", headers=ADMIN).get_json()
    assert body["state"] == "failed" and body["queue"] == "sync" and body["task"] == "record"
    assert body["enqueuedAt"] and body["lastFailedAt"]
    # When and where it last ran stays after it failed; only the lease itself is gone.
    assert body["startedAt"] and body["consumer"] and body["leaseHolder"] is None
    (attempt,) = body["history"]
    assert attempt["errorType"] == "TimeoutError" and "bank did not answer" in \
        attempt["traceback"]
    running = enqueue("email", "record", {"n": 1}).id
    lease = manager.storage("email").lease(block=False)
    assert lease.id == running
    body = client.get(f"{URL}?action=job&queue=email&id={running}", headers=ADMIN).get_json()
    assert body["state"] == "active" and body["leaseHolder"] and body["leaseDeadline"]
    assert body["startedAt"]


def test_job_page_shows_the_job_and_its_buttons_to_admins_only(client, manager):
    (job_id,) = fail_with(manager, "sync", "record", "ValueError", "bad account number")
    login(client)
    page = client.get(f"/job?id={job_id}").get_data(as_text=True)
    for text in (job_id, "ValueError", "bad account number", "user-0", "Retry", "Remove",
                 'id="job-search"'):
        assert text in page, text
    client.post("/logout", data={"csrf_token": csrf_of(page)})
    login(client, READONLY_KEY)
    page = client.get(f"/job?id={job_id}").get_data(as_text=True)
    assert "bad account number" in page and "user-0" not in page and "[redacted]" in page
    assert 'data-action="retry-job"' not in page
    missing = client.get("/job?id=no-such-job")
    assert missing.status_code == 404 and "finished jobs are not kept" in missing.text


def test_retry_from_the_job_page_comes_back_to_it(client, manager):
    (job_id,) = fail_with(manager, "sync", "record", "ValueError", "x")
    login(client, ADMIN_KEY)
    page = client.get(f"/job?queue=sync&id={job_id}").get_data(as_text=True)
    back = re.search(r'name="back" value="([^"]+)"', page).group(1)
    response = client.post("/dashboard/action", data={
        "csrf_token": csrf_of(page), "action": "retry-job", "queue": "sync", "jobId": job_id,
        "back": back.replace("&amp;", "&")})
    assert response.status_code == 302 and "/job?" in response.headers["Location"]
    assert manager.get_job("sync", job_id)["state"] == "waiting"


# -- the failed list -----------------------------------------------------------------------------

def test_failed_list_filters_by_task_and_error_type_with_pages(client, manager):
    timeouts = fail_with(manager, "sync", "record", "TimeoutError", "slow", n=5)
    fail_with(manager, "sync", "flaky", "TimeoutError", "slow", n=2)
    fail_with(manager, "sync", "record", "KeyError", "'account'", n=3)
    first = client.get(f"{URL}?action=failed-jobs&queue=sync&task=record&errorType=TimeoutError"
                       "&limit=2", headers=READONLY).get_json()
    assert first["filtered"] and first["total"] == 10 and len(first["jobs"]) == 2
    seen = [j["id"] for j in first["jobs"]]
    cursor = first["nextCursor"]
    while cursor:
        page = client.get(f"{URL}?action=failed-jobs&queue=sync&task=record"
                          f"&errorType=TimeoutError&limit=2&cursor={cursor}",
                          headers=READONLY).get_json()
        seen += [j["id"] for j in page["jobs"]]
        cursor = page["nextCursor"]
    assert sorted(seen) == sorted(timeouts)
    login(client)
    html = client.get("/failed?queue=sync&errorType=KeyError").get_data(as_text=True)
    assert html.count('name="jobIds"') == 3 and "record (8)" in html and "KeyError (3)" in html


def test_bulk_retry_and_remove_of_a_selection(client, manager):
    ids = make_failed(manager, "email", 5)
    body = client.post(URL, headers=ADMIN, json={"action": "retry-jobs", "queue": "email",
                                                 "jobIds": ids[:2]}).get_json()
    assert body["count"] == 2 and body["selected"] == 2
    assert [manager.get_job("email", i)["state"] for i in ids[:2]] == ["waiting", "waiting"]
    login(client)
    page = client.get("/failed?queue=email").get_data(as_text=True)
    response = client.post("/dashboard/action", data={
        "csrf_token": csrf_of(page), "action": "remove-jobs", "queue": "email",
        "jobIds": ids[2:4], "back": "/failed?queue=email"})
    assert response.status_code == 302 and response.headers["Location"].endswith(
        "/failed?queue=email")
    assert manager.get_job("email", ids[2]) is None and manager.get_job("email", ids[4])
    # Waiting jobs in a remove-jobs selection are left alone: it acts on failed jobs.
    again = client.post(URL, headers=ADMIN, json={"action": "remove-jobs", "queue": "email",
                                                  "jobIds": ids[:1]}).get_json()
    assert again["count"] == 0 and manager.get_job("email", ids[0])["state"] == "waiting"


# -- panels state the fix ------------------------------------------------------------------------

def test_migration_panel_says_to_migrate_instead_of_showing_the_exception(admin_env):
    from app.admin import create_app

    app = create_app({"TESTING": True, "CLARITY_MIGRATION_STATUS": lambda: {
        "mode": "legacy", "routed": {"queue": 0},
        "legacy": {"error": "OperationalError: (sqlite3.OperationalError) no such table: "
                            "queued_sync"}}})
    client = app.test_client()
    login(client)
    page = client.get("/").get_data(as_text=True)
    assert "database not migrated: run `clarity db upgrade`" in page.replace("&#96;", "`")
    assert "OperationalError" not in page and "queued_sync" not in page


def test_dashboard_says_redis_is_down_instead_of_an_error_page(configure, redis_factory,
                                                                monkeypatch):
    from app.admin import create_app
    from app.admin.config import reset_admin_settings_cache
    from tests.admin.helpers import KEY_SETTINGS

    configure(redis_factory("down", start=False), **KEY_SETTINGS)
    monkeypatch.setenv("ADMIN_PROXY_HOPS", "0")
    reset_admin_settings_cache()
    client = create_app({"TESTING": True}).test_client()
    assert login(client).status_code == 302
    for path in ("/", "/dashboard/panels"):
        page = client.get(path)
        assert page.status_code == 200, page.text
        assert "the queue store (Redis) is unavailable" in page.text
        assert "Traceback" not in page.text and "ConnectionError" not in page.text
    reset_admin_settings_cache()


def test_job_page_lists_every_attempt_of_a_job_retried_by_a_real_worker(client, workers,
                                                                         manager):
    workers(queues=("sync",))
    job = enqueue("sync", "flaky", {"n": "attempts"})  # 3 retries, then failed for good
    wait_for(lambda: (manager.get_job("sync", job.id) or {}).get("state") == "failed",
             timeout=30, message="the flaky job to fail for good")
    body = client.get(f"{URL}?action=job&queue=sync&id={job.id}", headers=ADMIN).get_json()
    errors = [a["error"] for a in body["history"]]
    assert errors[-1] == "flaky failure 4 of job attempts", errors
    assert len(errors) >= 2 and all(e.startswith("flaky failure") for e in errors)
    assert [a["attempt"] for a in body["history"]] == sorted(a["attempt"] for a in
                                                             body["history"])
