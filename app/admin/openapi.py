"""The OpenAPI 3 document of the HTTP API, served at /api/admin/openapi.json.

Written as data next to the code it describes; tests/admin/test_openapi.py runs schemathesis
against it, so a response the document does not describe fails the build.
"""

from __future__ import annotations

import copy

from app.admin.params import MUTATION_BRANCHES, READ_QUERY, enqueue_schema
from worker.management import MAX_PAGE
from worker.queues import QUEUE_NAMES

QUEUES = list(QUEUE_NAMES)


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str, headers: dict | None = None) -> dict:
    response = _json(_ref("Error"), description)
    if headers:
        response["headers"] = headers
    return response


RETRY_AFTER = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "string"}}}
AUTH_ERRORS = {
    "401": _error("No API key, or an unknown one", {
        "WWW-Authenticate": {"schema": {"type": "string"}}}),
    "403": _error("The key's kind may not do this (e.g. a read-only key on a mutation)"),
    "429": _error("Rate limit exceeded for this client", RETRY_AFTER),
    "503": _error("Redis is unavailable", RETRY_AFTER),
    "414": _error("The URL is too long (nginx and gunicorn take about 8 KiB)"),
}

NULLABLE_STR = {"type": ["string", "null"]}
COUNTS = {
    "type": "object",
    "required": ["waiting", "waitingByPriority", "delayed", "active", "failed", "paused",
                 "expiredLeases"],
    "properties": {
        "waiting": {"type": "integer", "minimum": 0},
        "waitingByPriority": {
            "type": "object",
            "required": ["critical", "high", "normal", "low", "other"],
            "properties": {p: {"type": "integer", "minimum": 0}
                           for p in ("critical", "high", "normal", "low", "other")},
        },
        "delayed": {"type": "integer", "minimum": 0},
        "active": {"type": "integer", "minimum": 0},
        "failed": {"type": "integer", "minimum": 0},
        "paused": {"type": "boolean"},
        "expiredLeases": {"type": "integer", "minimum": 0},
    },
}
QUEUE_COUNTS = copy.deepcopy(COUNTS)
QUEUE_COUNTS["required"].append("name")
QUEUE_COUNTS["properties"]["name"] = {"type": "string", "enum": QUEUES}

SCHEMAS = {
    "Error": {
        "type": "object",
        "required": ["error", "message", "status"],
        "properties": {
            "error": {"type": "string", "description": "machine-readable code"},
            "message": {"type": "string"},
            "status": {"type": "integer"},
            "field": {"type": "string", "description": "the request field to blame"},
        },
    },
    "QueueCounts": QUEUE_COUNTS,
    "Counts": COUNTS,
    "Worker": {
        "type": "object",
        "required": ["name", "queue"],
        "properties": {
            "name": {"type": "string"}, "queue": {"type": "string"},
            "secondsSinceHeartbeat": {"type": "number"}, "alive": {"type": "boolean"},
        },
        "additionalProperties": True,
    },
    "Redis": {
        "type": "object",
        "required": ["ok"],
        "properties": {"ok": {"type": "boolean"}, "latencyMs": {"type": "number"},
                       "version": NULLABLE_STR, "error": {"type": "string"}},
        "additionalProperties": True,
    },
    "Overview": {
        "type": "object",
        "required": ["generatedAt", "queues", "totals", "workers", "workersAlive", "redis",
                     "migration"],
        "properties": {
            "generatedAt": {"type": "string", "format": "date-time"},
            "queues": {"type": "array", "items": _ref("QueueCounts")},
            "totals": {"type": "object", "additionalProperties": {"type": "integer"}},
            "workers": {"type": "array", "items": _ref("Worker")},
            "workersAlive": {"type": "integer", "minimum": 0},
            "redis": _ref("Redis"),
            "migration": {"type": ["object", "null"],
                          "description": "legacy migration progress, once that exists"},
        },
    },
    "Health": {
        "type": "object",
        "required": ["status", "checkedAt", "redis"],
        "properties": {
            "status": {"type": "string", "enum": ["ok", "degraded", "down"]},
            "checkedAt": {"type": "string"},
            "redis": _ref("Redis"),
            "workers": {"type": "object"},
            "problems": {"type": "array", "items": {"type": "string"}},
        },
    },
    "Stats": {
        "type": "object",
        "required": ["queue", "generatedAt", "counts", "workers"],
        "properties": {
            "queue": {"type": "string", "enum": QUEUES},
            "generatedAt": {"type": "string"},
            "counts": _ref("Counts"),
            "workers": {"type": "array", "items": _ref("Worker")},
        },
    },
    "Job": {
        "type": "object",
        "required": ["id", "queue"],
        "properties": {
            "id": {"type": "string"}, "queue": {"type": "string"},
            "task": NULLABLE_STR, "state": NULLABLE_STR, "priority": {"type": "integer"},
            "payloadSummary": {"type": "string"}, "enqueuedAt": NULLABLE_STR,
            "deliveries": {"type": "integer"}, "runAt": NULLABLE_STR,
            "error": NULLABLE_STR, "errorType": NULLABLE_STR, "traceback": NULLABLE_STR,
            "reason": NULLABLE_STR, "attempts": {"type": "integer"},
            "payload": {"description": "the payload (single-job view only); values are "
                                       "\"[redacted]\" for a read-only key, and fields the "
                                       "task marks sensitive for everyone"},
            "payloadRedacted": {"type": "boolean"},
            "history": {"type": "array", "description": "failed attempts, oldest first "
                        "(single-job view only)", "items": {
                            "type": "object", "additionalProperties": True,
                            "properties": {"attempt": {"type": ["integer", "null"]},
                                           "errorType": NULLABLE_STR, "error": NULLABLE_STR,
                                           "traceback": NULLABLE_STR, "at": NULLABLE_STR}}},
            "startedAt": NULLABLE_STR, "leaseHolder": NULLABLE_STR, "consumer": NULLABLE_STR,
        },
        "additionalProperties": True,
    },
    "Series": {
        "type": "object",
        "required": ["window", "generatedAt", "queues"],
        "properties": {
            "window": {"type": "string", "enum": ["hour", "day"]},
            "generatedAt": {"type": "string"},
            "queues": {"type": "array", "items": {
                "type": "object", "required": ["queue", "stepMinutes", "points"],
                "properties": {
                    "queue": {"type": "string", "enum": QUEUES},
                    "stepMinutes": {"type": "integer"},
                    "points": {"type": "array", "items": {
                        "type": "object",
                        "required": ["at", "completed", "failed", "depth", "latencyP50Ms",
                                     "latencyP95Ms"],
                        "properties": {
                            "at": {"type": "integer", "description": "unix time of the "
                                                                     "point's first minute"},
                            "completed": {"type": "number"}, "failed": {"type": "number"},
                            "retried": {"type": "number"},
                            "durationMs": {"type": ["number", "null"]},
                            "depth": {"type": ["integer", "null"]},
                            "latencyP50Ms": {"type": ["number", "null"]},
                            "latencyP95Ms": {"type": ["number", "null"]},
                            "samples": {"type": "boolean"}}}}}}},
        },
    },
    "JobPage": {
        "type": "object",
        "required": ["jobs", "total", "offset", "limit", "nextOffset", "nextCursor", "queue",
                     "state"],
        "properties": {
            "jobs": {"type": "array", "items": _ref("Job")},
            "total": {"type": "integer", "minimum": 0},
            "offset": {"type": "integer", "minimum": 0},
            "limit": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
            "nextOffset": {"type": ["integer", "null"]},
            "nextCursor": {"type": ["string", "null"],
                           "description": "pass as `cursor` for the next page"},
            "queue": {"type": "string"},
            "state": {"type": "string"},
            "filtered": {"type": "boolean", "description": "task or errorType given: the "
                         "page holds matches of a bounded scan; follow nextCursor"},
        },
    },
    "MutationResult": {
        "type": "object",
        "required": ["ok", "action", "queue"],
        "properties": {
            "ok": {"type": "boolean"}, "action": {"type": "string"},
            "queue": {"type": "string"}, "count": {"type": "integer"},
            "jobId": {"type": "string"}, "jobState": {"type": "string"},
            "paused": {"type": "boolean"}, "selected": {"type": "integer"},
            "perQueue": {"type": "object", "additionalProperties": {"type": "integer"}},
        },
    },
    "EnqueueResult": {
        "type": "object",
        "required": ["id", "queue", "task", "created", "state"],
        "properties": {
            "id": {"type": "string"}, "queue": {"type": "string"}, "task": {"type": "string"},
            "created": {"type": "boolean"},
            "state": {"type": "string", "enum": ["waiting", "delayed", "duplicate"]},
        },
    },
    "WebhookAccepted": {
        "type": "object",
        "required": ["accepted", "id", "duplicate"],
        "properties": {"accepted": {"type": "boolean"}, "id": {"type": "string"},
                       "duplicate": {"type": "boolean"}},
    },
}


def _param(name, where, schema, description, required=False):
    return {"name": name, "in": where, "required": required, "schema": schema,
            "description": description}


def spec(server_url: str = "") -> dict:
    read_params = [{
        "name": "params", "in": "query", "style": "form", "explode": True,
        "required": False, "schema": READ_QUERY,
        "description": "The query parameters, one object discriminated by `action` (default "
                       "overview): each action takes its own parameters and no other; an "
                       "unknown, repeated or invalid parameter is a 400 naming it."}]
    ok_read = _json({"anyOf": [_ref("Overview"), _ref("Health"), _ref("Stats"),
                               _ref("JobPage"), _ref("Job"), _ref("Series")]},
                    "overview → Overview, health → Health, stats → Stats, failed-jobs and "
                    "jobs → JobPage, job → Job, series → Series")
    schemas = dict(SCHEMAS)
    mapping = {}
    for action, branch in MUTATION_BRANCHES.items():
        name = "Mutation" + "".join(part.title() for part in action.split("-"))
        schemas[name] = branch
        mapping[action] = f"#/components/schemas/{name}"
    schemas["Mutation"] = {"oneOf": [{"$ref": ref} for ref in mapping.values()],
                           "discriminator": {"propertyName": "action", "mapping": mapping}}
    schemas["EnqueueRequest"] = enqueue_schema()
    doc = {
        "openapi": "3.1.0",
        "info": {
            "title": "Clarity job system admin API",
            "version": "1.0.0",
            "description": "Queue administration, job enqueueing for non-Python producers "
                           "and provider webhooks. Authenticate with `Authorization: Bearer "
                           "<key>`: admin keys may do everything, read-only keys GET only, "
                           "producer keys POST /api/jobs only. Errors are always JSON "
                           "(`Error`), naming the offending `field` when there is one.",
        },
        "servers": [{"url": server_url or "/"}],
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": {
            "/api/admin/queue": {
                "get": {
                    "operationId": "readQueues",
                    "summary": "Read queue state (admin or read-only key)",
                    "parameters": read_params,
                    "responses": {
                        "200": ok_read,
                        "400": _error("A parameter is invalid; `field` names it"),
                        "404": _error("No such job"),
                        **AUTH_ERRORS,
                    },
                },
                "post": {
                    "operationId": "mutateQueues",
                    "summary": "Change queue state (admin key); every call is audited",
                    "requestBody": {"required": True, "content": {
                        "application/json": {"schema": _ref("Mutation")}}},
                    "responses": {
                        "200": _json(_ref("MutationResult"), "Done"),
                        "400": _error("A field is missing, unknown or invalid"),
                        "415": _error("The body is neither application/json nor a JSON "
                                      "object sent as curl's default form type"),
                        "404": _error("No such job"),
                        "409": _error("The job is not in a state the action applies to"),
                        "413": _error("Body too large"),
                        **AUTH_ERRORS,
                    },
                },
            },
            "/api/admin/auth": {
                "get": {
                    "operationId": "checkKey",
                    "summary": "204 when the key is an admin or read-only key (nginx "
                               "auth_request for /queue/health and /workers/...)",
                    "responses": {"204": {"description": "The key is valid"},
                                  "401": AUTH_ERRORS["401"], "403": AUTH_ERRORS["403"],
                                  "414": AUTH_ERRORS["414"], "429": AUTH_ERRORS["429"]},
                },
            },
            "/api/admin/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "security": [],
                    "responses": {"200": _json({"type": "object"}, "OpenAPI 3 document"),
                                  "414": AUTH_ERRORS["414"], "429": AUTH_ERRORS["429"]},
                },
            },
            "/api/jobs": {
                "post": {
                    "operationId": "enqueueJob",
                    "summary": "Enqueue one job (admin or producer key)",
                    "parameters": [_param(
                        "Idempotency-Key", "header",
                        {"type": "string", "minLength": 1, "maxLength": 200,
                         "pattern": "^[\\x20-\\x7e]+$"},
                        "the same key returns the first job (200) instead of a new one")],
                    "requestBody": {"required": True, "content": {
                        "application/json": {"schema": _ref("EnqueueRequest")}}},
                    "responses": {
                        "201": _json(_ref("EnqueueResult"), "Created"),
                        "200": _json(_ref("EnqueueResult"),
                                     "Idempotency-Key seen before: the first job"),
                        "400": _error("A field is missing, unknown or invalid"),
                        "413": _error("Payload or body too large"),
                        "422": _error("scheduledAt is well formed but more than a day in the "
                                      "past or a year ahead"),
                        "415": _error("The body is not application/json"),
                        **AUTH_ERRORS,
                    },
                },
            },
            "/api/webhooks/{provider}": {
                "post": {
                    "operationId": "receiveWebhook",
                    "summary": "Provider webhook; authenticated by the provider's signature",
                    "security": [],
                    "parameters": [_param("provider", "path",
                                          {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]*$",
                                           "maxLength": 32},
                                          "provider name, e.g. plaid or stripe", True)],
                    "requestBody": {"required": True, "content": {
                        "application/json": {"schema": {"type": "object"}}}},
                    "responses": {
                        "202": _json(_ref("WebhookAccepted"), "Queued for processing"),
                        "400": _error("The body is not JSON"),
                        "401": _error("Missing, bad or stale signature"),
                        "404": _error("Unknown provider"),
                        "413": _error("Body too large"),
                        "414": AUTH_ERRORS["414"],
                        "429": AUTH_ERRORS["429"],
                        "503": _error("Redis unavailable or webhook processing not set up",
                                      RETRY_AFTER),
                    },
                },
            },
        },
    }
    return doc
