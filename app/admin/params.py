"""What the admin API accepts, written once as JSON Schema: the validator checks requests
against these schemas, and the OpenAPI document (`app.admin.openapi`) serves the same
dicts. So the document says exactly what the API takes, and a client generated from it
works.

GET /api/admin/queue takes its query parameters as one object, discriminated by `action`
(each action names its required and allowed parameters; any other parameter, a repeated
one or a bad value is a 400 naming it). POST /api/admin/queue takes a JSON object
discriminated by `action` the same way.
"""

from __future__ import annotations

import functools
import re

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from app.admin.errors import ApiError
from worker.management import CLEARABLE_STATES, MAX_PAGE
from worker.queues import QUEUE_NAMES

QUEUES = list(QUEUE_NAMES)
LIST_STATES = ("waiting", "delayed", "active", "failed")
WINDOWS = ("hour", "day")
MAX_SELECTION = 500

# "Contains no control character", said without anchors: `$` differs between regex
# engines (Python lets it match before a final newline), an unanchored search does not.
NO_CONTROL = {"not": {"pattern": "[\\x00-\\x1f\\x7f-\\x9f]"}}
JOB_ID = {"type": "string", "minLength": 1, "maxLength": 200, **NO_CONTROL,
          "description": "a job id, as enqueue returned it"}
QUEUE = {"type": "string", "enum": QUEUES}

READ_PARAMS = {
    "queue": QUEUE,
    "state": {"type": "string", "enum": list(LIST_STATES)},
    "id": JOB_ID,
    "limit": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 50},
    "offset": {"type": "integer", "minimum": 0, "maximum": 10**9},
    "cursor": {"type": "string", "pattern": "^[0-9]{1,10}$",
               "description": "nextCursor of the previous page"},
    "task": {"type": "string", "minLength": 1, "maxLength": 100, **NO_CONTROL,
             "description": "only jobs of this task"},
    "errorType": {"type": "string", "minLength": 1, "maxLength": 100, **NO_CONTROL,
                  "description": "only failed jobs with this error type (exception class, "
                                 "or the reason: abandoned, bad signature, ...)"},
    "window": {"type": "string", "enum": list(WINDOWS), "default": "hour",
               "description": "last hour (per minute) or last day (per 15 minutes)"},
}
PAGE = ("limit", "offset", "cursor", "task", "errorType")
# action: (required parameters, optional parameters, what it answers)
READ_ACTIONS = {
    "overview": ((), (), "every queue's counts, workers, Redis, migration"),
    "health": ((), (), "ok / degraded / down (503)"),
    "stats": (("queue",), (), "one queue's counts and workers"),
    "failed-jobs": (("queue",), PAGE, "failed jobs, newest first"),
    "jobs": (("queue", "state"), PAGE, "a page of jobs in one state"),
    "job": (("id",), ("queue",), "one job: state, attempts, times, payload"),
    "series": ((), ("queue", "window"), "per-minute throughput, depth and pickup latency"),
}


def _read_branch(action: str) -> dict:
    required, optional, summary = READ_ACTIONS[action]
    props = {"action": {"type": "string", "const": action}}
    props.update({name: READ_PARAMS[name] for name in (*required, *optional)})
    branch = {"type": "object", "title": action, "description": summary,
              "properties": props, "required": ["action", *required],
              "additionalProperties": False}
    if action == "overview":  # the default action: `action` may be left out
        branch["required"] = []
    if "cursor" in optional:
        branch["not"] = {"required": ["offset", "cursor"]}
    return branch


READ_BRANCHES = {action: _read_branch(action) for action in READ_ACTIONS}
READ_QUERY = {"oneOf": list(READ_BRANCHES.values())}

MUTATION_FIELDS = {
    "queue": QUEUE,
    "jobId": JOB_ID,
    "jobIds": {"type": "array", "items": JOB_ID, "minItems": 1, "maxItems": MAX_SELECTION,
               "uniqueItems": True, "description": "a selection of jobs"},
    "jobState": {"type": "string", "enum": list(CLEARABLE_STATES)},
}
# action: (required fields besides the queue, what it does)
MUTATIONS = {
    "retry-failed": ((), "every failed job of the queue (or of all queues) back to waiting"),
    "retry-job": (("jobId",), "one failed job back to waiting"),
    "retry-jobs": (("jobIds",), "a selection of failed jobs back to waiting"),
    "remove-job": (("jobId",), "remove one job that is not running"),
    "remove-jobs": (("jobIds",), "remove a selection of failed jobs"),
    "promote": (("jobId",), "run a delayed job now"),
    "clear-queue": (("jobState",), "remove every job of the queue in that state"),
    "pause": ((), "start no new job on the queue"),
    "resume": ((), "resume a paused queue"),
}
QUEUE_ALIAS = "queueName"  # the original guide's spelling of `queue`


def _mutation_branch(action: str) -> dict:
    fields, summary = MUTATIONS[action]
    queue = dict(QUEUE)
    if action == "retry-failed":
        queue = {"type": "string", "enum": [*QUEUES, "all"]}
    props = {"action": {"type": "string", "const": action}, "queue": queue,
             QUEUE_ALIAS: {**queue, "deprecated": True,
                           "description": "the original guide's name for queue"}}
    props.update({name: MUTATION_FIELDS[name] for name in fields})
    return {"type": "object", "title": action, "description": summary + ". Give `queue` "
            "(or its alias `queueName`, not both).", "properties": props,
            "required": ["action", *fields], "additionalProperties": False,
            "oneOf": [{"required": ["queue"]}, {"required": [QUEUE_ALIAS]}]}


MUTATION_BRANCHES = {action: _mutation_branch(action) for action in MUTATIONS}

_validators: dict[int, Draft202012Validator] = {}


def _validator(schema: dict) -> Draft202012Validator:
    found = _validators.get(id(schema))
    if found is None:
        found = _validators[id(schema)] = Draft202012Validator(schema)
    return found


def _problem(error: ValidationError, what: str) -> ApiError:
    """One ApiError naming the field, from the most relevant schema error."""
    field = str(error.path[0]) if error.path else None
    validator = error.validator
    if validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        name = extra[0] if extra else "?"
        return ApiError(400, f"unknown {what} {name!r}" + (f" for action "
                        f"{error.instance.get('action', 'overview')}"
                        if isinstance(error.instance, dict) else ""), field=name)
    if validator == "required":
        name = re.search(r"'([^']+)'", error.message)
        name = name.group(1) if name else "?"
        return ApiError(400, f"{name} is required", field=name)
    if validator == "oneOf" and not error.path and isinstance(error.instance, dict) and \
            "task" in error.instance:
        return ApiError(400, f"unknown task {error.instance.get('task')!r:.80} on queue "
                             f"{error.instance.get('queue')!r}", field="task")
    if validator == "oneOf" and not error.path:  # queue and queueName
        return ApiError(400, f"give queue or its alias {QUEUE_ALIAS} (one of them)",
                        field="queue")
    if validator == "not" and not error.path and "delay" in error.validator_value.get(
            "required", ()):
        return ApiError(400, "give either delay or scheduledAt, not both", field="delay")
    if validator == "not" and not error.path:
        return ApiError(400, "give either offset or cursor, not both", field="cursor")
    if validator == "not":
        return ApiError(400, f"{field} must not contain control characters", field=field)
    if validator == "enum":
        allowed = ", ".join(str(v) for v in error.validator_value)
        return ApiError(400, f"{field} must be one of {allowed} (got {error.instance!r:.60})",
                        field=field)
    return ApiError(400, f"{field or what}: {error.message[:200]}", field=field)


def _relevance(error: ValidationError) -> tuple:
    """Unknown and missing fields first, then a field's own error (deepest first), then
    the combinations (queue or queueName, delay or scheduledAt, the task of the queue)."""
    if not error.path and error.validator in ("additionalProperties", "required"):
        return (0, 0)
    return (1, -len(error.path)) if error.path else (2, 0)


def check(schema: dict, instance, what: str) -> None:
    error = min(_validator(schema).iter_errors(instance), key=_relevance, default=None)
    if error is not None:
        raise _problem(error, what)


INTEGER = re.compile(r"-?[0-9]{1,18}")


def parse_read(args) -> tuple[str, dict]:
    """The GET query (a MultiDict) -> (action, typed parameters); ApiError(400) otherwise."""
    for name in args:
        if len(args.getlist(name)) > 1:
            raise ApiError(400, f"parameter {name!r} is given more than once", field=name)
    action = args.get("action", "overview")
    if action not in READ_BRANCHES:
        raise ApiError(400, f"unknown action {action!r}: expected one of "
                            f"{', '.join(READ_ACTIONS)} (GET) or POST a mutation",
                       field="action")
    query = {}
    for name, value in args.items():
        spec = READ_PARAMS.get(name)
        if spec is not None and spec.get("type") == "integer" and INTEGER.fullmatch(value):
            query[name] = int(value)
        else:
            query[name] = value
    check(READ_BRANCHES[action], query, "query parameter")
    query.pop("action", None)
    return action, query


def parse_mutation(body) -> tuple[str, dict]:
    """The POST body -> (action, fields with `queue` resolved); ApiError(400) otherwise."""
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object", field="body")
    action = body.get("action")
    if action is None:
        raise ApiError(400, "action is required", field="action")
    if not isinstance(action, str) or action not in MUTATION_BRANCHES:
        raise ApiError(400, f"unknown action {action!r}: expected one of "
                            f"{', '.join(MUTATIONS)}", field="action")
    check(MUTATION_BRANCHES[action], body, "field")
    fields = dict(body)
    fields.pop("action")
    if QUEUE_ALIAS in fields:
        fields["queue"] = fields.pop(QUEUE_ALIAS)
    return action, fields


PRIORITY_NAMES = ["low", "normal", "high", "critical", "LOW", "NORMAL", "HIGH", "CRITICAL"]
MAX_DELAY_SECONDS = 31_622_400  # 366 days, as worker.producer


@functools.cache
def enqueue_schema() -> dict:
    """POST /api/jobs: the tasks each queue has (as loaded here) are the task's enum, so a
    generated client cannot name one that does not exist."""
    from worker.registry import specs_for

    per_queue = []
    for queue in QUEUES:
        tasks = sorted({s.name for s in specs_for(queue) if not s.periodic})
        if tasks:
            per_queue.append({"properties": {"queue": {"const": queue},
                                             "task": {"enum": tasks}}})
    schema = {
        "type": "object",
        "required": ["queue", "task", "payload"],
        "additionalProperties": False,
        "properties": {
            "queue": QUEUE,
            "task": {"type": "string", "minLength": 1, "maxLength": 200,
                     "description": "a task declared on that queue"},
            "payload": {"type": "object", "description": "JSON object, at most 64 KiB "
                                                        "encoded (ENQUEUE_MAX_PAYLOAD_BYTES)"},
            "priority": {"oneOf": [{"type": "string", "enum": PRIORITY_NAMES},
                                   {"type": "integer", "minimum": 1, "maximum": 10}]},
            "delay": {"type": "number", "minimum": 0, "maximum": MAX_DELAY_SECONDS,
                      "description": "seconds from now; not with scheduledAt"},
            "scheduledAt": {"type": "string", "format": "date-time",
                            "description": "RFC 3339 time with an offset; not with delay. "
                                           "Outside [now - 1 day, now + 366 days]: 422"},
        },
        "not": {"required": ["delay", "scheduledAt"]},
    }
    if per_queue:
        schema["oneOf"] = per_queue
    return schema
