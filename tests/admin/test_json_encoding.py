"""The admin's JSON provider (orjson, Flask's own where orjson refuses): every response is
the document Flask's provider would have written, whatever the payload holds."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import json

from flask import Flask
from flask.json.provider import DefaultJSONProvider

from app.admin.json_encoding import AdminJSONProvider
from tests.admin.helpers import ADMIN
from worker.producer import enqueue


@dataclasses.dataclass
class Point:
    x: int
    label: str


DOCUMENTS = [
    {"jobs": [{"id": "a", "payload": {"n": 1, "ok": True, "none": None, "f": 0.25}}]},
    {"text": "Zoë paid 12 € — “thanks” ✓", "nested": [[1, 2], {"k": "v"}]},
    {"big": 2**70, "negative": -(2**64)},  # past 64 bits: orjson refuses, Flask encodes
    {1: "int key", "b": 2},  # a non-string key: the json module's rules
    {"when": dt.datetime(2026, 1, 31, 9, 0, tzinfo=dt.UTC), "day": dt.date(2026, 2, 1)},
    {"amount": decimal.Decimal("12.30"), "point": Point(3, "p")},
]


def test_every_document_decodes_as_flasks_own_provider_wrote_it():
    app = Flask(__name__)
    ours, flasks = AdminJSONProvider(app), DefaultJSONProvider(app)
    flasks.sort_keys = False
    for document in DOCUMENTS:
        assert json.loads(ours.dumps(document)) == json.loads(flasks.dumps(document)), document
    # Flask's forms kept: a datetime as an HTTP date, a Decimal as its text.
    assert json.loads(ours.dumps(DOCUMENTS[4]))["when"] == "Sat, 31 Jan 2026 09:00:00 GMT"
    assert json.loads(ours.dumps(DOCUMENTS[5]))["amount"] == "12.30"


def test_compact_and_in_the_order_built_outside_debug_mode():
    app = Flask(__name__)
    with app.app_context():
        body = AdminJSONProvider(app).response({"z": 1, "a": [1, 2]}).get_data(as_text=True)
    assert body == '{"z":1,"a":[1,2]}\n'


def test_a_job_whose_payload_holds_an_integer_past_64_bits_is_served(client, manager):
    # A payload orjson cannot encode must not cost the job's page a 500.
    job = enqueue("sync", "record", {"n": 2**70, "note": "Zoë"})
    response = client.get(f"/api/admin/queue?action=job&queue=sync&id={job.id}",
                          headers=ADMIN)
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    assert response.get_json()["payload"] == {"n": 2**70, "note": "Zoë"}
    listing = client.get("/api/admin/queue?action=jobs&queue=sync&state=waiting",
                         headers=ADMIN)
    assert listing.status_code == 200 and listing.get_json()["total"] == 1
    assert isinstance(client.application.json, AdminJSONProvider)
