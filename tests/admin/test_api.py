"""The admin JSON API through Flask's test client: every action and every 4xx path."""

from __future__ import annotations

import json

import pytest

from tests.admin.helpers import ADMIN, PRODUCER, READONLY, make_failed, make_jobs
from worker.queues import QUEUE_NAMES

URL = "/api/admin/queue"


def post(client, body, headers=ADMIN, **kw):
    return client.post(URL, json=body, headers=headers, **kw)


def assert_error(response, status, field=None):
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.is_json, response.get_data(as_text=True)
    body = response.get_json()
    assert body["status"] == status and body["message"]
    if field is not None:
        assert body.get("field") == field, body
    return body


# -- reads ------------------------------------------------------------------------------------

def test_overview_is_the_default_action_and_counts_every_queue(client):
    make_jobs("sync", 3)
    make_jobs("email", 1, priority="critical")
    make_jobs("sync", 1, delay=60)
    body = client.get(URL, headers=READONLY).get_json()
    assert [q["name"] for q in body["queues"]] == list(QUEUE_NAMES)
    sync = body["queues"][0]
    assert sync["waiting"] == 3 and sync["delayed"] == 1
    assert sync["waitingByPriority"]["normal"] == 3
    email = next(q for q in body["queues"] if q["name"] == "email")
    assert email["waitingByPriority"]["critical"] == 1
    assert body["totals"]["waiting"] == 4
    assert body["redis"]["ok"] is True and body["redis"]["maxMemoryPolicy"] == "noeviction"
    assert "migration" in body  # None until the legacy migration reports progress
    assert client.get(URL + "?action=overview", headers=ADMIN).status_code == 200


def test_overview_shows_migration_progress_when_present(admin_env):
    from app.admin import create_app

    app = create_app({"CLARITY_MIGRATION_STATUS": lambda: {"legacyPending": 7}})
    body = app.test_client().get(URL, headers=ADMIN).get_json()
    assert body["migration"] == {"legacyPending": 7}


def test_health_reports_waiting_jobs_without_workers_as_degraded(client):
    assert client.get(URL + "?action=health", headers=READONLY).get_json()["status"] == "ok"
    make_jobs("sync", 1)
    body = client.get(URL + "?action=health", headers=READONLY).get_json()
    assert body["status"] == "degraded"
    assert any("no live worker" in p for p in body["problems"])


def test_stats_of_one_queue(client):
    make_jobs("cleanup", 2)
    body = client.get(URL + "?action=stats&queue=cleanup", headers=READONLY).get_json()
    assert body["queue"] == "cleanup" and body["counts"]["waiting"] == 2


def test_failed_jobs_page_newest_first_with_offset_and_cursor(client, manager):
    ids = make_failed(manager, "sync", 5)
    first = client.get(URL + "?action=failed-jobs&queue=sync&limit=2", headers=READONLY)
    body = first.get_json()
    assert body["total"] == 5 and len(body["jobs"]) == 2 and body["nextOffset"] == 2
    assert body["jobs"][0]["error"] == "boom" and "Traceback" in body["jobs"][0]["traceback"]
    assert {j["id"] for j in body["jobs"]} <= set(ids)
    second = client.get(URL + f"?action=failed-jobs&queue=sync&limit=2&cursor="
                              f"{body['nextCursor']}", headers=READONLY).get_json()
    by_offset = client.get(URL + "?action=failed-jobs&queue=sync&limit=2&offset=2",
                           headers=READONLY).get_json()
    assert [j["id"] for j in second["jobs"]] == [j["id"] for j in by_offset["jobs"]]
    last = client.get(URL + "?action=failed-jobs&queue=sync&offset=4", headers=READONLY)
    assert last.get_json()["nextCursor"] is None


@pytest.mark.parametrize("state", ["waiting", "delayed", "active", "failed"])
def test_jobs_by_state(client, manager, state):
    if state == "waiting":
        make_jobs("sync", 2)
    elif state == "delayed":
        make_jobs("sync", 2, delay=30)
    elif state == "active":
        make_jobs("sync", 2)
        manager.storage("sync").lease(block=False)
    else:
        make_failed(manager, "sync", 2)
    body = client.get(URL + f"?action=jobs&queue=sync&state={state}", headers=READONLY)
    jobs = body.get_json()["jobs"]
    assert jobs and all(j["state"] == state for j in jobs)


def test_one_job_by_queue_and_id_or_by_id_alone(client):
    (job_id,) = make_jobs("email", 1)
    body = client.get(URL + f"?action=job&queue=email&id={job_id}", headers=ADMIN).get_json()
    assert body["id"] == job_id and body["payload"] == {"n": 0} and body["task"] == "record"
    assert client.get(URL + f"?action=job&id={job_id}", headers=READONLY).get_json()["queue"] \
        == "email"


@pytest.mark.parametrize("query, field", [
    ("action=bogus", "action"),
    ("action=stats", "queue"),
    ("action=stats&queue=nope", "queue"),
    ("action=jobs&queue=sync", "state"),
    ("action=jobs&queue=sync&state=done", "state"),
    ("action=failed-jobs&queue=sync&limit=0", "limit"),
    ("action=failed-jobs&queue=sync&limit=501", "limit"),
    ("action=failed-jobs&queue=sync&limit=ten", "limit"),
    ("action=failed-jobs&queue=sync&offset=-1", "offset"),
    ("action=failed-jobs&queue=sync&cursor=%%%", "cursor"),
    ("action=failed-jobs&queue=sync&cursor=bzox&offset=1", "cursor"),
    ("action=job&queue=sync", "id"),
])
def test_bad_read_parameters_are_400_naming_the_field(client, query, field):
    assert_error(client.get(f"{URL}?{query}", headers=READONLY), 400, field)


def test_missing_job_is_404(client):
    assert_error(client.get(URL + "?action=job&queue=sync&id=nope", headers=READONLY), 404, "id")
    assert_error(client.get(URL + "?action=job&id=nope", headers=READONLY), 404, "id")


# -- mutations -------------------------------------------------------------------------------

def test_retry_failed_one_queue_and_all(client, manager):
    make_failed(manager, "sync", 2)
    make_failed(manager, "email", 1)
    body = post(client, {"action": "retry-failed", "queue": "sync"}).get_json()
    assert body["count"] == 2 and manager.counts("sync")["waiting"] == 2
    body = post(client, {"action": "retry-failed", "queue": "all"}).get_json()
    assert body["count"] == 1 and body["perQueue"]["email"] == 1


def test_retry_job_moves_it_to_waiting(client, manager):
    (job_id,) = make_failed(manager, "sync", 1)
    body = post(client, {"action": "retry-job", "queue": "sync", "jobId": job_id}).get_json()
    assert body == {"ok": True, "action": "retry-job", "queue": "sync", "jobId": job_id,
                    "count": 1}
    assert manager.get_job("sync", job_id)["state"] == "waiting"
    assert_error(post(client, {"action": "retry-job", "queue": "sync", "jobId": job_id}), 409,
                 "jobId")
    assert_error(post(client, {"action": "retry-job", "queue": "sync", "jobId": "nope"}), 404,
                 "jobId")


def test_remove_job(client, manager):
    (job_id,) = make_failed(manager, "sync", 1)
    assert post(client, {"action": "remove-job", "queue": "sync", "jobId": job_id}).status_code \
        == 200
    assert manager.get_job("sync", job_id) is None
    assert_error(post(client, {"action": "remove-job", "queue": "sync", "jobId": job_id}), 404)
    make_jobs("sync", 1)
    lease = manager.storage("sync").lease(block=False)
    assert_error(post(client, {"action": "remove-job", "queue": "sync", "jobId": lease.id}), 409)


@pytest.mark.parametrize("state", ["waiting", "delayed", "failed"])
def test_clear_queue_by_state(client, manager, state):
    if state == "failed":
        make_failed(manager, "sync", 3)
    else:
        make_jobs("sync", 3, delay=60 if state == "delayed" else None)
    make_jobs("email", 1)
    body = post(client, {"action": "clear-queue", "queue": "sync", "jobState": state})
    assert body.get_json()["count"] == 3
    assert manager.counts("sync")[state] == 0 and manager.counts("email")["waiting"] == 1


def test_pause_and_resume(client, manager):
    assert post(client, {"action": "pause", "queue": "email"}).get_json()["paused"] is True
    assert manager.is_paused("email")
    overview = client.get(URL, headers=ADMIN).get_json()
    assert next(q for q in overview["queues"] if q["name"] == "email")["paused"] is True
    assert post(client, {"action": "resume", "queue": "email"}).get_json()["paused"] is False
    assert not manager.is_paused("email")


def test_promote_runs_a_delayed_job_now(client, manager):
    (job_id,) = make_jobs("sync", 1, delay=3600)
    assert post(client, {"action": "promote", "queue": "sync", "jobId": job_id}).status_code \
        == 200
    assert manager.get_job("sync", job_id)["state"] == "waiting"
    assert_error(post(client, {"action": "promote", "queue": "sync", "jobId": job_id}), 409)
    assert_error(post(client, {"action": "promote", "queue": "sync", "jobId": "gone"}), 404)


@pytest.mark.parametrize("body, field", [
    ({}, "action"),
    ({"action": 3}, "action"),
    ({"action": "explode", "queue": "sync"}, "action"),
    ({"action": "pause"}, "queue"),
    ({"action": "pause", "queue": 7}, "queue"),
    ({"action": "pause", "queue": "all"}, "queue"),
    ({"action": "pause", "queue": "sync", "extra": 1}, "extra"),
    ({"action": "retry-job", "queue": "sync"}, "jobId"),
    ({"action": "retry-job", "queue": "sync", "jobId": 12}, "jobId"),
    ({"action": "retry-job", "queue": "sync", "jobId": "x" * 201}, "jobId"),
    ({"action": "clear-queue", "queue": "sync"}, "jobState"),
    ({"action": "clear-queue", "queue": "sync", "jobState": "active"}, "jobState"),
    ({"action": "retry-failed"}, "queue"),
])
def test_bad_mutations_are_400_naming_the_field(client, body, field):
    assert_error(post(client, body), 400, field)


def test_body_must_be_a_json_object(client):
    assert_error(client.post(URL, data="action=pause", headers=ADMIN,
                             content_type="application/x-www-form-urlencoded"), 415)
    assert_error(client.post(URL, data="{not json", headers=ADMIN,
                             content_type="application/json"), 400, "body")
    assert_error(post(client, ["pause"]), 400, "body")


def test_oversized_body_is_413(client):
    assert_error(client.post(URL, data=json.dumps({"action": "x" * 2_000_000}), headers=ADMIN,
                             content_type="application/json"), 413)


# -- auth ------------------------------------------------------------------------------------

def test_no_key_or_wrong_key_is_401(client):
    body = assert_error(client.get(URL), 401)
    assert body["error"] == "unauthorized"
    assert client.get(URL).headers["WWW-Authenticate"].startswith("Bearer")
    assert_error(client.get(URL, headers={"Authorization": "Bearer wrong-key-0123456789"}), 401)
    assert_error(client.get(URL, headers={"Authorization": "Basic b3BzOnB3"}), 401)
    assert_error(post(client, {"action": "pause", "queue": "sync"}, headers={}), 401)


def test_read_only_and_producer_keys_may_not_mutate(client, manager):
    assert_error(post(client, {"action": "pause", "queue": "sync"}, headers=READONLY), 403)
    assert_error(client.get(URL, headers=PRODUCER), 403)
    assert not manager.is_paused("sync")


def test_rotated_key_works_alongside_the_old_one(client):
    from tests.admin.helpers import ROTATED_KEY

    assert client.get(URL, headers={"Authorization": f"Bearer {ROTATED_KEY}"}).status_code == 200


def test_every_mutation_is_audited_without_the_key(client, manager, caplog):
    import logging

    from tests.admin.helpers import ADMIN_KEY, READONLY_KEY

    caplog.set_level(logging.INFO, logger="clarity.audit")
    post(client, {"action": "pause", "queue": "sync"})
    post(client, {"action": "pause", "queue": "sync"}, headers=READONLY)
    post(client, {"action": "retry-job", "queue": "sync", "jobId": "nope"})
    post(client, {"action": "pause", "queue": "sync"}, headers={})
    entries = [json.loads(x) for x in manager.redis.lrange(
        f"{manager.settings.redis_key_prefix}:audit", 0, -1)]
    assert [(e["who"], e["action"], e["result"], e["status"]) for e in reversed(entries)] == [
        ("ops", "pause", "ok", 200),
        ("grafana", "pause", "denied", 403),
        ("ops", "retry-job", "rejected", 404),
    ]  # the anonymous call is logged, not stored (anyone can send one)
    assert entries[-1]["target"] == {"queue": "sync"} and entries[-1]["at"].endswith("Z")
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name == "clarity.audit")
    assert logged.count('"action":"pause"') == 3
    assert '"result":"unauthorized"' in logged
    assert ADMIN_KEY not in logged and READONLY_KEY not in logged
    for entry in entries:
        assert ADMIN_KEY not in json.dumps(entry) and READONLY_KEY not in json.dumps(entry)


def test_rate_limit_429_with_retry_after(admin_env, monkeypatch):
    from app.admin import create_app
    from app.admin.config import reset_admin_settings_cache

    monkeypatch.setenv("ADMIN_RATE_LIMIT", "3 per 15 minutes")
    reset_admin_settings_cache()
    client = create_app().test_client()
    for _ in range(3):
        assert client.get(URL, headers=READONLY).status_code == 200
    limited = client.get(URL, headers=READONLY)
    assert_error(limited, 429)
    assert 0 < int(limited.headers["Retry-After"]) <= 900
    # Each key (client) has its own budget; unauthenticated callers are counted by address.
    assert client.get(URL, headers=ADMIN).status_code == 200


def test_errors_are_json_never_html(client):
    assert_error(client.get("/no/such/page"), 404)
    assert_error(client.delete(URL, headers=ADMIN), 405)
    assert client.get("/api/admin/openapi.json").is_json


def test_unexpected_exception_is_a_json_500_without_traceback(app, monkeypatch):
    from app.admin import actions

    def explode():
        raise RuntimeError("secret internals")

    monkeypatch.setattr(actions, "overview_json", explode)
    response = app.test_client().get(URL, headers=ADMIN)
    body = assert_error(response, 500)
    assert "secret internals" not in response.get_data(as_text=True)
    assert "Traceback" not in response.get_data(as_text=True) and "ref" in body["message"]


def test_redis_down_is_a_json_503(app, monkeypatch):
    import redis

    from app.admin import actions

    def down():
        raise redis.ConnectionError("refused")

    monkeypatch.setattr(actions.QueueManager, "counts", lambda *a: down())
    assert_error(app.test_client().get(URL + "?action=stats&queue=sync", headers=ADMIN), 503)


def test_proxy_fix_trusts_exactly_one_hop(client, manager):
    headers = {**ADMIN, "X-Forwarded-For": "203.0.113.9, 198.51.100.7",
               "X-Forwarded-Proto": "https"}
    post(client, {"action": "pause", "queue": "sync"}, headers=headers)
    entry = json.loads(manager.redis.lindex(f"{manager.settings.redis_key_prefix}:audit", 0))
    assert entry["client"] == "198.51.100.7"


def test_metrics_need_a_key_and_count_requests(client):
    assert client.get("/metrics").status_code == 401
    client.get(URL, headers=READONLY)
    text = client.get("/metrics", headers=READONLY).get_data(as_text=True)
    assert "clarity_admin_requests_total" in text and 'endpoint="api.queue_get"' in text


def test_jobs_written_into_redis_by_hand_are_shown_never_a_500(client, manager):
    import uuid

    from worker.storage import WireJob

    planted = []
    for body in (b'd{"task":"record"}', b"[1, 2]", b"\x00\xff garbage",
                 b"v2.deadbeef." + b"A" * 43 + b".[1]", b"v1." + b"0" * 64 + b".[1]"):
        job_id = str(uuid.uuid4())
        manager.storage("sync").enqueue_jobs([WireJob(job_id, body, 3, task="record")])
        planted.append(job_id)
    for job_id in planted:
        response = client.get(URL + f"?action=job&queue=sync&id={job_id}", headers=READONLY)
        assert response.status_code == 200 and response.get_json()["state"] == "waiting"
    listed = client.get(URL + "?action=jobs&queue=sync&state=waiting", headers=READONLY)
    assert listed.status_code == 200 and len(listed.get_json()["jobs"]) == len(planted)
    assert client.get(URL + "?action=overview", headers=READONLY).status_code == 200
