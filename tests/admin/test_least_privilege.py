"""Issue 11.9: least privilege in the admin. Read-only keys see a job's metadata but not
its payload; a task can mark payload fields sensitive (hidden from everyone); Prometheus
gets a metrics-only key kind; CLI mutations are audited like the API's. Against the
session's real redis-server."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from tests.admin.helpers import ADMIN, READONLY, make_failed
from tests.admin.test_dashboard import login
from worker.producer import enqueue

URL = "/api/admin/queue"
METRICS_KEY = "metrics-key-0123456789abcdef"
METRICS = {"Authorization": f"Bearer {METRICS_KEY}"}


def test_read_only_key_sees_job_metadata_but_no_payload_values(client, manager):
    job = enqueue("email", "record", {"n": 7, "to": "ann@example.com",
                                      "nested": {"account": "DE89 3704"}})
    body = client.get(f"{URL}?action=job&queue=email&id={job.id}", headers=READONLY).get_json()
    assert body["task"] == "record" and body["state"] == "waiting"  # metadata stays
    assert body["payload"] == {"n": "[redacted]", "to": "[redacted]",
                               "nested": {"account": "[redacted]"}}
    assert body["payloadRedacted"] is True
    page = client.get(f"{URL}?action=jobs&queue=email&state=waiting", headers=READONLY)
    text = page.get_data(as_text=True)
    assert job.id in text and "ann@example.com" not in text and "DE89" not in text


def test_read_only_key_sees_no_payload_in_failed_lists_or_the_dashboard(client, manager):
    make_failed(manager, "sync", 1, error="card declined")  # payload {"n": 0}
    enqueue("sync", "record", {"n": "secret-account-42"}, delay=600)
    failed = client.get(f"{URL}?action=failed-jobs&queue=sync", headers=READONLY).get_json()
    assert failed["jobs"][0]["payloadSummary"] == '{"n":"[redacted]"}'
    assert failed["jobs"][0]["error"] == "card declined"  # errors are metadata
    from tests.admin.helpers import READONLY_KEY

    login(client, READONLY_KEY)
    page = client.get("/").get_data(as_text=True)
    assert "card declined" in page and "secret-account-42" not in page


def test_admin_sees_the_payload_but_never_a_field_its_task_marks_sensitive(client):
    job = enqueue("sync", "login_link", {"n": 1, "email": "bo@example.com",
                                         "token": "tok-9f8e7d", "deep": [{"token": "x2"}]})
    body = client.get(f"{URL}?action=job&id={job.id}", headers=ADMIN).get_json()
    assert body["payload"] == {"n": 1, "email": "bo@example.com", "token": "[redacted]",
                               "deep": [{"token": "[redacted]"}]}
    listed = client.get(f"{URL}?action=jobs&queue=sync&state=waiting", headers=ADMIN)
    assert "tok-9f8e7d" not in listed.get_data(as_text=True)


@pytest.fixture
def metrics_app(admin_env, monkeypatch):
    from app.admin import create_app
    from app.admin.config import reset_admin_settings_cache

    monkeypatch.setenv("METRICS_API_KEYS", f"prometheus:{METRICS_KEY}")
    reset_admin_settings_cache()
    yield create_app({"TESTING": True})
    reset_admin_settings_cache()


def test_a_metrics_key_reads_metrics_and_nothing_else(metrics_app):
    client = metrics_app.test_client()
    assert client.get("/metrics", headers=METRICS).status_code == 200
    assert client.get(URL, headers=METRICS).status_code == 403
    assert client.get(f"{URL}?action=failed-jobs&queue=sync", headers=METRICS).status_code == 403
    assert client.post(URL, json={"action": "pause", "queue": "sync"},
                       headers=METRICS).status_code == 403
    assert client.post("/api/jobs", json={"queue": "sync", "task": "record", "payload": {}},
                       headers=METRICS).status_code == 403
    # nginx's auth_request: workers' metrics yes, their health (and anything else) no.
    assert client.get("/api/admin/auth", headers={
        **METRICS, "X-Original-URI": "/workers/w1/sync/metrics"}).status_code == 204
    assert client.get("/api/admin/auth", headers={
        **METRICS, "X-Original-URI": "/workers/w1/sync/health"}).status_code == 403
    assert client.get("/api/admin/auth", headers=METRICS).status_code == 403
    # ...and it opens no dashboard session.
    assert login(client, METRICS_KEY).status_code == 401
    assert client.get("/").status_code == 302


def test_cli_mutations_are_audited_like_the_apis(admin_env, manager):
    from app.cli import main

    ids = make_failed(manager, "sync", 3)
    runner = CliRunner()
    for args in (["failed", "retry", "sync", ids[0]], ["failed", "remove", "sync", ids[1]],
                 ["queue", "pause", "email"], ["queue", "resume", "email"],
                 ["failed", "retry", "sync", "--all"],
                 ["queue", "clear", "sync", "--state", "waiting", "--yes"],
                 ["failed", "retry", "sync", "no-such-job"]):
        result = runner.invoke(main, args)
        assert result.exit_code in (0, 1), result.output
    entries = [json.loads(e) for e in manager.redis.lrange(
        f"{manager.settings.redis_key_prefix}:audit", 0, -1)][::-1]
    assert [(e["via"], e["action"], e["result"], e["target"].get("queue")) for e in entries] == [
        ("cli", "retry-job", "ok", "sync"), ("cli", "remove-job", "ok", "sync"),
        ("cli", "pause", "ok", "email"), ("cli", "resume", "ok", "email"),
        ("cli", "retry-failed", "ok", "sync"), ("cli", "clear-queue", "ok", "sync"),
        ("cli", "retry-job", "rejected", "sync")]
    assert entries[0]["target"]["jobId"] == ids[0] and entries[0]["who"]
    assert entries[4]["detail"] == "count=1" and entries[5]["detail"] == "count=2"


def test_the_apps_cli_mutations_are_audited_too(admin_env, manager):
    from app.cli import main

    runner = CliRunner()
    for args in (["migrate", "rollback", "--yes"], ["migrate", "set-mode", "gradual"],
                 ["migrate", "resume"]):
        result = runner.invoke(main, args)
        assert result.exit_code == 0, result.output
    entries = [json.loads(e) for e in manager.redis.lrange(
        f"{manager.settings.redis_key_prefix}:audit", 0, -1)][::-1]
    assert [(e["via"], e["action"], e["result"]) for e in entries] == [
        ("cli", "migrate rollback", "ok"), ("cli", "migrate set-mode", "ok"),
        ("cli", "migrate resume", "ok")]
    assert entries[1]["target"] == {"mode": "gradual"}
