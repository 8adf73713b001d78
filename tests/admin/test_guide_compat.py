"""The original (BullMQ) guide's calls work as written (issue 18, item 3): `queueName` as
an alias of `queue`, curl's default form content type carrying a JSON object,
ENABLE_BULLMQ as a deprecated alias of ENABLE_QUEUE, DEBUG=<namespace>:* turning on debug
logs. The whole guide's command blocks are replayed against `clarity up` in
tests/observability/test_guide_replay.py."""

from __future__ import annotations

import logging

import pytest

from tests.admin.helpers import ADMIN, make_failed

URL = "/api/admin/queue"
FORM = "application/x-www-form-urlencoded"


def test_queue_name_is_read_as_queue(client, manager):
    make_failed(manager, "sync", 2)
    body = client.post(URL, headers=ADMIN, json={"action": "retry-failed",
                                                 "queueName": "sync"}).get_json()
    assert body["ok"] and body["count"] == 2 and body["queue"] == "sync"
    both = client.post(URL, headers=ADMIN, json={"action": "pause", "queue": "sync",
                                                 "queueName": "sync"})
    assert both.status_code == 400 and both.get_json()["field"] == "queue"


def test_a_json_object_sent_as_curls_default_form_type_is_accepted(client, manager):
    (job_id,) = make_failed(manager, "email", 1)
    body = '{"action":"clear-queue","queueName":"email","jobState":"failed"}'
    response = client.post(URL, headers=ADMIN, data=body, content_type=FORM)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["count"] == 1 and manager.get_job("email", job_id) is None


@pytest.mark.parametrize("body, content_type", [
    ("action=pause&queue=sync", FORM),          # a real form: not JSON
    ('["pause"]', FORM),                         # JSON, but not an object
    ('{"action":"pause","queue":"sync"}', "text/plain"),
])
def test_anything_else_is_still_a_clear_415(client, body, content_type):
    response = client.post(URL, headers=ADMIN, data=body, content_type=content_type)
    assert response.status_code == 415
    assert response.get_json()["field"] == "Content-Type"


def test_enable_bullmq_is_a_deprecated_alias_of_enable_queue(monkeypatch, caplog):
    from app.migration.config import load_migration_settings

    monkeypatch.setenv("CLARITY_ENV_FILE", "/nonexistent.env")
    monkeypatch.delenv("ENABLE_QUEUE", raising=False)
    monkeypatch.setenv("ENABLE_BULLMQ", "true")
    with caplog.at_level(logging.WARNING, logger="clarity.config"):
        assert load_migration_settings().enable_queue is True
    assert "ENABLE_BULLMQ is deprecated" in caplog.text
    monkeypatch.setenv("ENABLE_QUEUE", "false")  # the new name wins
    assert load_migration_settings().enable_queue is False


@pytest.mark.parametrize("value, loggers", [
    ("bullmq:*", [""]), ("*", [""]), ("clarity:*", [""]), ("1", [""]), ("true", [""]),
    ("clarity:worker", ["clarity.worker"]), ("express:*,bullmq:*", [""]),
    ("express:*", None), ("", None), ("0", None), ("false", None),
])
def test_debug_namespaces(value, loggers):
    from worker.logs import debug_loggers

    assert debug_loggers(value) == loggers


def test_debug_bullmq_star_turns_on_debug_lines(monkeypatch, capsys):
    from worker.logs import configure_logging

    monkeypatch.setenv("DEBUG", "bullmq:*")
    configure_logging("info", "text")
    try:
        logging.getLogger("clarity.worker").debug("a debug line")
        assert "a debug line" in capsys.readouterr().err
        monkeypatch.setenv("DEBUG", "clarity:worker")
        configure_logging("INFO", "text")
        logging.getLogger("clarity.worker").debug("worker detail")
        logging.getLogger("clarity.admin").debug("admin detail")
        err = capsys.readouterr().err
        assert "worker detail" in err and "admin detail" not in err
    finally:
        logging.getLogger().handlers[:] = []
        logging.getLogger().setLevel(logging.WARNING)
