"""The dashboard through the test client: login, session cookie, CSRF, actions, refresh."""

from __future__ import annotations

import re

import pytest

from tests.admin.helpers import ADMIN_KEY, READONLY_KEY, make_failed
from tests.admin.test_api import assert_error


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html) or \
        re.search(r'name="csrf-token" content="([^"]+)"', html)
    assert match, html[:500]
    return match.group(1)


def login(client, key=ADMIN_KEY):
    page = client.get("/login")
    assert page.status_code == 200
    return client.post("/login", data={"key": key, "csrf_token": csrf_of(page.text)})


def test_anonymous_visitor_is_sent_to_login(client):
    response = client.get("/")
    assert response.status_code == 302 and response.headers["Location"].endswith("/login")
    assert_error(client.get("/dashboard/panels"), 401)


def test_login_sets_a_hardened_session_cookie_and_shows_the_queues(client, manager):
    make_failed(manager, "sync", 1, error="card declined")
    response = login(client)
    assert response.status_code == 302
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Secure" not in cookie  # plain HTTP here; see the TLS test below
    page = client.get("/")
    assert page.status_code == 200
    for text in ("queue-sync", "queue-webhook", "card declined", "Traceback", "Retry",
                 "ops (admin)", "Recent actions"):
        assert text in page.text
    assert "Content-Security-Policy" in page.headers


def test_session_cookie_is_secure_behind_tls(client):
    page = client.get("/login", headers={"X-Forwarded-Proto": "https"})
    response = client.post("/login", data={"key": ADMIN_KEY, "csrf_token": csrf_of(page.text)},
                           headers={"X-Forwarded-Proto": "https"})
    assert "Secure" in response.headers["Set-Cookie"]


def test_wrong_key_is_refused(client):
    response = login(client, key="not-a-real-key-0123456789")
    assert response.status_code == 401 and "not an admin or read-only key" in response.text
    assert client.get("/").status_code == 302


def test_login_without_csrf_token_is_refused(client):
    client.get("/login")
    assert_error(client.post("/login", data={"key": ADMIN_KEY}), 403, "csrf_token")


def test_action_form_retries_a_failed_job(client, manager):
    (job_id,) = make_failed(manager, "sync", 1)
    login(client)
    token = csrf_of(client.get("/").text)
    response = client.post("/dashboard/action", data={
        "csrf_token": token, "action": "retry-job", "queue": "sync", "jobId": job_id})
    assert response.status_code == 302
    assert manager.get_job("sync", job_id)["state"] == "waiting"
    fetched = client.post("/dashboard/action", headers={"X-CSRF-Token": token,
                                                        "X-Requested-With": "fetch"},
                          data={"action": "pause", "queue": "email"})
    assert fetched.get_json()["paused"] is True
    audit = client.get("/dashboard/panels").text
    assert "retry-job" in audit and "jobId=" + job_id in audit


def test_action_without_csrf_is_refused(client, manager):
    login(client)
    assert_error(client.post("/dashboard/action", data={"action": "pause", "queue": "sync"}),
                 403, "csrf_token")
    assert not manager.is_paused("sync")


def test_read_only_login_sees_no_buttons_and_cannot_act(client, manager):
    make_failed(manager, "sync", 1)
    login(client, READONLY_KEY)
    page = client.get("/").text
    assert "grafana (readonly)" in page and 'data-action="retry-job"' not in page
    token = csrf_of(page)
    assert_error(client.post("/dashboard/action", data={
        "csrf_token": token, "action": "pause", "queue": "sync"}), 403)
    assert not manager.is_paused("sync")


def test_bad_action_from_the_dashboard_is_a_json_400(client):
    login(client)
    token = csrf_of(client.get("/").text)
    assert_error(client.post("/dashboard/action", data={"csrf_token": token,
                                                        "action": "clear-queue",
                                                        "queue": "sync"}), 400, "jobState")


def test_panels_fragment_refreshes_without_the_page_shell(client, manager):
    login(client)
    make_failed(manager, "email", 1, error="smtp timeout")
    fragment = client.get("/dashboard/panels").text
    assert "smtp timeout" in fragment and "<html" not in fragment


def test_payloads_and_errors_are_escaped(client, manager):
    make_failed(manager, "sync", 1, error="<script>alert(1)</script>")
    login(client)
    page = client.get("/").text
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;" in page


def test_logout_ends_the_session(client):
    login(client)
    token = csrf_of(client.get("/").text)
    assert client.post("/logout", data={"csrf_token": token}).status_code == 302
    assert client.get("/").status_code == 302


@pytest.mark.parametrize("setting", ["admin_api_keys"])
def test_removing_a_key_ends_its_sessions(admin_env, monkeypatch, setting):
    from app.admin import create_app
    from app.admin.config import reset_admin_settings_cache
    from tests.admin.helpers import ROTATED_KEY

    client = create_app().test_client()
    login(client)
    assert client.get("/").status_code == 200
    monkeypatch.setenv("ADMIN_API_KEYS", f"ops-next:{ROTATED_KEY}")
    reset_admin_settings_cache()
    rotated = create_app().test_client()
    rotated.set_cookie("clarity_admin_session",
                       client.get_cookie("clarity_admin_session").value)
    assert rotated.get("/").status_code == 302


def test_static_files_are_served(client):
    assert client.get("/static/admin/dashboard.js").status_code == 200
    assert client.get("/static/admin/admin.css").status_code == 200


def test_workers_with_their_last_heartbeat_and_counters(client, manager):
    import json

    key = manager.keys("email").workers
    seconds, micros = manager.redis.time()  # heartbeats are stamped on Redis' clock
    now = seconds + micros / 1e6
    manager.redis.hset(key, "host-a:123", json.dumps({
        "heartbeat": now - 3, "pid": 123, "concurrency": 4, "active": 1,
        "processed": 42, "failed": 2}))
    manager.redis.hset(key, "host-b:9", json.dumps({"heartbeat": now - 300}))
    login(client)
    page = client.get("/").text
    assert "host-a:123" in page and "alive" in page and "silent" in page
    assert 'data-processed="42"' in page and "1 / 4" in page
