"""Issue 11.6: an anonymous request cannot fill Redis. Audit entries are bounded in size,
the audit list in bytes; a request without a valid key is logged, never stored; and no
other write an anonymous or read-only caller can cause grows without bound. Against the
session's real redis-server."""

from __future__ import annotations

import json

import pytest

from tests.admin.helpers import ADMIN, READONLY
from tests.admin.test_dashboard import csrf_of
from tests.admin.test_dashboard import login as dashboard_login
from worker.audit import ENTRY_MAX_BYTES

URL = "/api/admin/queue"
BIG = 800_000


def prefix_bytes(client, prefix: str) -> dict[str, int]:
    """Every key under the test's prefix with its MEMORY USAGE."""
    return {key.decode(): client.memory_usage(key) or 0
            for key in client.scan_iter(match=f"{prefix}:*", count=1000)}


def audit_entries(manager) -> list[bytes]:
    return manager.redis.lrange(f"{manager.settings.redis_key_prefix}:audit", 0, -1)


def test_anonymous_800_kb_requests_store_nothing_but_rate_limit_counters(client, manager):
    prefix = manager.settings.redis_key_prefix
    before = prefix_bytes(manager.redis, prefix)
    huge = {"action": "retry-failed", "queue": "x" * BIG}
    assert client.post(URL, json=huge).status_code == 401
    assert client.post(URL, json=huge, headers={"Authorization": "Bearer wrong-key-0123456789"}
                       ).status_code == 401
    # The guide's curl form type, an unknown method, the enqueue API, a dashboard login
    # with a huge key and a dashboard action without a session: all anonymous.
    assert client.post(URL, data=json.dumps(huge), content_type="application/x-www-form-"
                       "urlencoded").status_code == 401
    assert client.post("/api/jobs", json={"queue": "sync", "task": "x" * BIG, "payload": {}}
                       ).status_code == 401
    page = client.get("/login")
    assert client.post("/login", data={"key": "k" * BIG, "csrf_token": csrf_of(page.text)}
                       ).status_code == 401
    assert client.post("/dashboard/action", data={"action": "pause", "queue": "q" * BIG}
                       ).status_code == 401
    assert audit_entries(manager) == []
    after = prefix_bytes(manager.redis, prefix)
    grown = {k: v for k, v in after.items() if v != before.get(k)}
    assert all(":ratelimit" in k for k in grown), grown
    assert sum(grown.values()) < 4096, grown


def test_a_read_only_callers_refused_mutation_is_stored_cut_to_one_kib(client, manager):
    response = client.post(URL, headers=READONLY, json={
        "action": "remove-job", "queue": "q" * 300_000, "jobId": "j" * 300_000,
        "extra": "e" * 300_000})
    assert response.status_code == 403
    (entry,) = audit_entries(manager)
    assert len(entry) <= ENTRY_MAX_BYTES
    stored = json.loads(entry)
    assert (stored["who"], stored["action"], stored["result"]) == ("grafana", "remove-job",
                                                                    "denied")
    assert set(stored["target"]) == {"queue", "jobId"}  # known fields only, each cut short


def test_dashboard_refusal_of_a_read_only_session_is_stored_cut(client, manager):
    from tests.admin.helpers import READONLY_KEY

    dashboard_login(client, READONLY_KEY)
    page = client.get("/")
    response = client.post("/dashboard/action", data={
        "csrf_token": csrf_of(page.text), "action": "a" * 300_000, "queue": "q" * 300_000,
        "jobId": "j" * 300_000})
    assert response.status_code == 403
    entries = audit_entries(manager)
    assert entries and all(len(e) <= ENTRY_MAX_BYTES for e in entries)
    assert json.loads(entries[0])["result"] == "denied"


def test_an_admins_rejected_calls_with_big_fields_are_cut_too(client, manager):
    response = client.post(URL, headers=ADMIN, json={"action": "retry-job", "queue": "sync",
                                                     "jobId": "j" * 300_000})
    assert response.status_code == 400
    (entry,) = audit_entries(manager)
    assert len(entry) <= ENTRY_MAX_BYTES


@pytest.fixture
def small_audit_app(admin_env, monkeypatch):
    from app.admin import create_app
    from worker.settings import reset_settings_cache

    monkeypatch.setenv("AUDIT_MAX_BYTES", str(64 * 1024))
    reset_settings_cache()
    yield create_app({"TESTING": True})
    reset_settings_cache()


def test_the_audit_list_is_bounded_in_bytes(small_audit_app, manager):
    client = small_audit_app.test_client()
    for i in range(90):  # under the admin rate limit (100 per 15 minutes)
        client.post(URL, headers=ADMIN, json={"action": "retry-job", "queue": "sync",
                                              "jobId": f"{i}-" + "é" * 5000})
    entries = audit_entries(manager)
    assert len(entries) == 64 * 1024 // ENTRY_MAX_BYTES
    assert sum(len(e) for e in entries) <= 64 * 1024
    assert json.loads(entries[0])["target"]["jobId"].startswith("89-")  # newest kept


def test_invented_http_methods_add_no_metric_series(client):
    for i in range(20):
        client.open("/api/admin/queue", method=f"BREW{i}")
    metrics = client.get("/metrics", headers=READONLY).get_data(as_text=True)
    assert "BREW" not in metrics
    assert 'method="other"' in metrics

