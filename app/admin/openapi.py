"""The OpenAPI 3 document of the HTTP API, served at /api/admin/openapi.json.

Written as data next to the code it describes; tests/admin/test_openapi.py runs schemathesis
against it, so a response the document does not describe fails the build.
"""

from __future__ import annotations

import copy

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
            "payload": {"description": "the full payload (single-job view only)"},
        },
        "additionalProperties": True,
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
        },
    },
    "Mutation": {
        "type": "object",
        "required": ["action", "queue"],
        "additionalProperties": False,
        "description": "retry-failed: queue (a name or `all`); retry-job, remove-job, "
                       "promote: queue + jobId; clear-queue: queue + jobState; "
                       "pause, resume: queue. Fields an action does not take are refused.",
        "properties": {
            "action": {"type": "string", "enum": ["retry-failed", "retry-job", "remove-job",
                                                  "clear-queue", "pause", "resume",
                                                  "promote"]},
            "queue": {"type": "string", "enum": [*QUEUES, "all"]},
            "jobId": {"type": "string", "minLength": 1, "maxLength": 200},
            "jobState": {"type": "string", "enum": ["waiting", "delayed", "failed"]},
        },
    },
    "MutationResult": {
        "type": "object",
        "required": ["ok", "action", "queue"],
        "properties": {
            "ok": {"type": "boolean"}, "action": {"type": "string"},
            "queue": {"type": "string"}, "count": {"type": "integer"},
            "jobId": {"type": "string"}, "jobState": {"type": "string"},
            "paused": {"type": "boolean"},
            "perQueue": {"type": "object", "additionalProperties": {"type": "integer"}},
        },
    },
    "EnqueueRequest": {
        "type": "object",
        "required": ["queue", "task", "payload"],
        "additionalProperties": False,
        "properties": {
            "queue": {"type": "string", "enum": QUEUES},
            "task": {"type": "string", "minLength": 1},
            "payload": {"type": "object", "description": "JSON object, at most 64 KiB "
                                                        "encoded (ENQUEUE_MAX_PAYLOAD_BYTES)"},
            "priority": {"oneOf": [
                {"type": "string", "enum": ["low", "normal", "high", "critical",
                                            "LOW", "NORMAL", "HIGH", "CRITICAL"]},
                {"type": "integer", "minimum": 1, "maximum": 10}]},
            "delay": {"type": "number", "minimum": 0, "maximum": 31622400,
                      "description": "seconds from now"},
            "scheduledAt": {"type": "string", "format": "date-time",
                            "description": "ISO 8601 with a UTC offset; not with delay"},
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
    read_params = [
        _param("action", "query", {"type": "string", "enum": ["overview", "health", "stats",
                                                             "failed-jobs", "jobs", "job"],
                                   "default": "overview"}, "what to read"),
        _param("queue", "query", {"type": "string", "enum": QUEUES},
               "queue (stats, failed-jobs, jobs; optional for job)"),
        _param("state", "query", {"type": "string",
                                  "enum": ["waiting", "delayed", "active", "failed"]},
               "job state (jobs)"),
        _param("id", "query", {"type": "string", "minLength": 1, "maxLength": 200},
               "job id (job)"),
        _param("limit", "query", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE,
                                  "default": 50}, "page size"),
        _param("offset", "query", {"type": "integer", "minimum": 0}, "page start"),
        _param("cursor", "query", {"type": "string"}, "nextCursor of the previous page"),
    ]
    ok_read = _json({"anyOf": [_ref("Overview"), _ref("Health"), _ref("Stats"),
                               _ref("JobPage"), _ref("Job")]},
                    "overview → Overview, health → Health, stats → Stats, failed-jobs and "
                    "jobs → JobPage, job → Job")
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
            "schemas": SCHEMAS,
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
                        "404": _error("No such job"),
                        "409": _error("The job is not in a state the action applies to"),
                        "413": _error("Body too large"),
                        "415": _error("The body is not application/json"),
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
