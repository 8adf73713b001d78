"""POST /api/webhooks/<provider>: signature first, then the webhook queue at CRITICAL, 202."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from app.admin import create_app
from tests.admin.test_api import assert_error

SECRET = b"provider-secret"


class UnknownProvider(Exception):
    pass


def fake_verify(provider, body, headers):
    """Stand-in with the app.jobs.webhook_signatures contract: raise on anything but a good signature."""
    if provider != "acme":
        raise UnknownProvider(provider)
    expected = hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(headers.get("X-Signature", ""), expected):
        raise ValueError("signature does not match")


def sign(body: bytes) -> dict:
    return {"X-Signature": hmac.new(SECRET, body, hashlib.sha256).hexdigest(),
            "Content-Type": "application/json"}


@pytest.fixture
def hook_client(admin_env):
    return create_app({"CLARITY_WEBHOOK_VERIFIER": (fake_verify, Exception,
                                                    UnknownProvider)}).test_client()


def test_good_delivery_is_queued_at_critical_and_answered_202(hook_client, manager):
    body = json.dumps({"id": "evt_1", "type": "item.updated"}).encode()
    response = hook_client.post("/api/webhooks/acme", data=body, headers=sign(body))
    assert response.status_code == 202, response.get_json()
    job = manager.get_job("webhook", response.get_json()["id"])
    assert job["task"] == "process_webhook" and job["priority"] == 10
    assert job["payload"]["provider"] == "acme"
    assert json.loads(job["payload"]["body"]) == {"id": "evt_1", "type": "item.updated"}
    assert job["payload"]["received_at"] > 0


def test_redelivery_of_the_same_body_is_the_same_job(hook_client, manager):
    body = b'{"id": "evt_2"}'
    first = hook_client.post("/api/webhooks/acme", data=body, headers=sign(body)).get_json()
    again = hook_client.post("/api/webhooks/acme", data=body, headers=sign(body)).get_json()
    assert first["id"] == again["id"] and again["duplicate"] is True
    assert manager.counts("webhook")["waiting"] == 1


def test_bad_signature_is_401_and_nothing_is_stored(hook_client, manager):
    body = b'{"id": "evt_3"}'
    assert_error(hook_client.post("/api/webhooks/acme", data=body,
                                  headers={"X-Signature": "0" * 64}), 401, "signature")
    assert_error(hook_client.post("/api/webhooks/acme", data=body), 401)
    assert manager.counts("webhook")["waiting"] == 0


def test_unknown_provider_is_404(hook_client):
    assert_error(hook_client.post("/api/webhooks/nobody", data=b"{}"), 404, "provider")
    assert_error(hook_client.post("/api/webhooks/Bad..Name", data=b"{}"), 404, "provider")


def test_signed_body_that_is_not_json_is_400(hook_client):
    body = b"not json"
    assert_error(hook_client.post("/api/webhooks/acme", data=body, headers=sign(body)), 400,
                 "body")


def test_oversized_webhook_is_413(hook_client):
    body = b'{"x": "' + b"y" * (300 * 1024) + b'"}'
    assert_error(hook_client.post("/api/webhooks/acme", data=body, headers=sign(body)), 413)


def test_real_verifier_accepts_a_fresh_signature_and_refuses_a_stale_one(admin_env, monkeypatch,
                                                                         manager):
    webhooks = pytest.importorskip("app.jobs.webhook_signatures")
    from app.jobs.settings import reset_handler_settings_cache

    secret = "yodlee-secret-0123456789abcdef"
    monkeypatch.setenv("WEBHOOK_SECRETS", f"yodlee={secret}")
    reset_handler_settings_cache()
    try:
        client = create_app().test_client()
        body = json.dumps({"event": {"name": "REFRESH"}, "id": "e-77"}).encode()
        ok = client.post("/api/webhooks/yodlee", data=body, headers={
            **webhooks.sign(secret, body), "Content-Type": "application/json"})
        assert ok.status_code == 202, ok.get_json()
        job = manager.get_job("webhook", ok.get_json()["id"])
        assert job["priority"] == 10 and job["payload"]["body"] == body.decode()
        assert webhooks.SIGNATURE_HEADER in job["payload"]["headers"]
        stale = client.post("/api/webhooks/yodlee", data=body,
                            headers=webhooks.sign(secret, body, timestamp=1_000_000_000))
        assert_error(stale, 401, "signature")
        assert_error(client.post("/api/webhooks/unknown", data=body,
                                 headers=webhooks.sign(secret, body)), 401)
        assert manager.counts("webhook")["waiting"] == 1
    finally:
        monkeypatch.delenv("WEBHOOK_SECRETS")
        reset_handler_settings_cache()
