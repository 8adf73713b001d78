"""POST /api/jobs: strict validation naming the field, 201 created, 200 on a replayed key."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from tests.admin.helpers import ADMIN, PRODUCER, READONLY
from tests.admin.test_api import assert_error

URL = "/api/jobs"


def test_producer_key_enqueues_and_gets_201_with_the_job(client, manager):
    response = client.post(URL, json={"queue": "sync", "task": "record", "payload": {"n": 1},
                                      "priority": "high"}, headers=PRODUCER)
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body["created"] is True and body["state"] == "waiting" and body["queue"] == "sync"
    job = manager.get_job("sync", body["id"])
    assert job["priority"] == 5 and job["payload"] == {"n": 1}
    assert response.headers["Location"].endswith(f"id={body['id']}")


def test_same_idempotency_key_returns_the_first_job_with_200(client, manager):
    body = {"queue": "email", "task": "record", "payload": {"n": 2}}
    headers = {**PRODUCER, "Idempotency-Key": "order-42-receipt"}
    first = client.post(URL, json=body, headers=headers)
    again = client.post(URL, json=body, headers=headers)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.get_json()["id"] == again.get_json()["id"]
    assert again.get_json()["created"] is False
    assert manager.counts("email")["waiting"] == 1


def test_priority_by_number_delay_and_scheduled_at(client, manager):
    r = client.post(URL, json={"queue": "sync", "task": "record", "payload": {},
                               "priority": 9, "delay": 30}, headers=ADMIN)
    assert r.status_code == 201 and r.get_json()["state"] == "delayed"
    at = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    r = client.post(URL, json={"queue": "sync", "task": "record", "payload": {},
                               "scheduledAt": at}, headers=ADMIN)
    assert r.status_code == 201
    assert manager.counts("sync")["delayed"] == 2


@pytest.mark.parametrize("body, field", [
    ({"task": "record", "payload": {}}, "queue"),
    ({"queue": "nope", "task": "record", "payload": {}}, "queue"),
    ({"queue": 1, "task": "record", "payload": {}}, "queue"),
    ({"queue": "sync", "payload": {}}, "task"),
    ({"queue": "sync", "task": "no_such_task", "payload": {}}, "task"),
    ({"queue": "sync", "task": "record"}, "payload"),
    ({"queue": "sync", "task": "record", "payload": [1]}, "payload"),
    ({"queue": "sync", "task": "record", "payload": {}, "priority": "urgent"}, "priority"),
    ({"queue": "sync", "task": "record", "payload": {}, "priority": 11}, "priority"),
    ({"queue": "sync", "task": "record", "payload": {}, "priority": True}, "priority"),
    ({"queue": "sync", "task": "record", "payload": {}, "priority": 2.5}, "priority"),
    ({"queue": "sync", "task": "record", "payload": {}, "delay": -1}, "delay"),
    ({"queue": "sync", "task": "record", "payload": {}, "delay": "soon"}, "delay"),
    ({"queue": "sync", "task": "record", "payload": {}, "delay": 1,
      "scheduledAt": "2026-12-01T00:00:00Z"}, "delay"),
    ({"queue": "sync", "task": "record", "payload": {}, "scheduledAt": "tomorrow"},
     "scheduledAt"),
    ({"queue": "sync", "task": "record", "payload": {}, "scheduledAt": "2026-12-01T00:00:00"},
     "scheduledAt"),
    ({"queue": "sync", "task": "record", "payload": {}, "scheduledAt": 5}, "scheduledAt"),
    ({"queue": "sync", "task": "record", "payload": {}, "extra": 1}, "extra"),
])
def test_invalid_requests_are_400_naming_the_field(client, body, field):
    assert_error(client.post(URL, json=body, headers=PRODUCER), 400, field)


def test_bad_idempotency_key_is_400(client):
    body = {"queue": "sync", "task": "record", "payload": {}}
    assert_error(client.post(URL, json=body, headers={**PRODUCER, "Idempotency-Key": "x" * 201}),
                 400, "Idempotency-Key")


def test_oversized_payload_is_413_naming_payload(client, manager):
    body = {"queue": "sync", "task": "record", "payload": {"blob": "x" * (64 * 1024)}}
    assert_error(client.post(URL, json=body, headers=PRODUCER), 413, "payload")
    assert manager.counts("sync")["waiting"] == 0


def test_payload_limit_is_configurable(admin_env, monkeypatch):
    from app.admin import create_app
    from app.admin.config import reset_admin_settings_cache

    monkeypatch.setenv("ENQUEUE_MAX_PAYLOAD_BYTES", "1024")
    reset_admin_settings_cache()
    client = create_app().test_client()
    body = {"queue": "sync", "task": "record", "payload": {"blob": "x" * 2000}}
    assert_error(client.post(URL, json=body, headers=PRODUCER), 413, "payload")


def test_body_must_be_json(client):
    assert_error(client.post(URL, data="queue=sync", headers=PRODUCER,
                             content_type="text/plain"), 415)
    assert_error(client.post(URL, data=b"{", headers=PRODUCER,
                             content_type="application/json"), 400, "body")
    assert_error(client.post(URL, data=json.dumps([1]), headers=PRODUCER,
                             content_type="application/json"), 400, "body")


def test_auth_read_only_key_cannot_enqueue(client):
    body = {"queue": "sync", "task": "record", "payload": {}}
    assert_error(client.post(URL, json=body), 401)
    assert_error(client.post(URL, json=body, headers=READONLY), 403)
