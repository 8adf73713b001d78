"""Signed JSON messages: what travels through Redis.

Huey pickles its messages; unpickling bytes from Redis would let anyone with write access to
Redis run code in a worker. Ours are JSON, and each carries an HMAC-SHA256 over its bytes with
the shared JOB_SIGNING_SECRET, so a forged or altered message is refused before it is decoded.

Wire form of a job:  b"v1." + 64 hex digits of HMAC + b"." + JSON bytes
Other values Huey stores through its serializer (task locks): b"d" + JSON bytes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json

from huey.registry import Message
from huey.serializer import Serializer

JOB_MAGIC = b"v1."
DATA_MAGIC = b"d"
SIG_LEN = 64


class BadMessage(Exception):
    """A message that cannot be decoded; it is parked in the failed set, never run."""


class BadSignature(BadMessage):
    """The HMAC does not match: the message was forged or altered in Redis."""


def _encode_time(value):
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.isoformat()
    raise TypeError(f"unsupported time value {value!r}")


def _decode_time(value):
    return None if value is None else dt.datetime.fromisoformat(value)


def _json_default(value):
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    raise TypeError(f"payload value of type {type(value).__name__} is not JSON data")


def dumps(value) -> bytes:
    return json.dumps(value, separators=(",", ":"), default=_json_default).encode()


class SignedJSONSerializer(Serializer):
    def __init__(self, secret: str, queue: str):
        super().__init__()
        self._key = hmac.new(secret.encode(), b"clarity-job-signing-v1", hashlib.sha256).digest()
        self.queue = queue

    def sign(self, body: bytes) -> bytes:
        return hmac.new(self._key, body, hashlib.sha256).hexdigest().encode()

    def serialize(self, data) -> bytes:
        if isinstance(data, Message):
            if data.on_complete or data.on_error or data.chord_config:
                raise ValueError("pipelines and chords are not supported: enqueue the next "
                                 "job from the handler instead")
            body = dumps({
                "q": self.queue,
                "id": data.id,
                "task": data.name,
                "args": list(data.args or ()),
                "kwargs": data.kwargs or {},
                "eta": _encode_time(data.eta),
                "retries": data.retries,
                "retry_delay": data.retry_delay,
                "priority": data.priority,
                "expires": data.expires if isinstance(data.expires, int | float) else None,
                "expires_at": _encode_time(data.expires_resolved),
                "timeout": data.timeout,
            })
            return JOB_MAGIC + self.sign(body) + b"." + body
        return DATA_MAGIC + dumps(data)

    def encode_new_job(self, job_id: str, task: str, payload_json: bytes, priority: int,
                       eta, retries: int, retry_delay: float, timeout) -> bytes:
        """The same wire form as serialize(Message(...)) for a fresh job, without building
        Huey's Task and Message objects: the producer's hot path (bulk enqueue)."""
        # Formatted by hand: json.dumps of the envelope is most of an enqueue's CPU time. Every
        # value is a number, null, or a JSON-escaped string; decode_job reads it back as JSON.
        eta_json = "null" if eta is None else f'"{eta.isoformat()}"'
        timeout_json = "null" if timeout is None else repr(float(timeout))
        body = (f'{{"q":"{self.queue}","id":{json.dumps(job_id)},"task":{json.dumps(task)},'
                f'"kwargs":{{}},"eta":{eta_json},"retries":{int(retries)},'
                f'"retry_delay":{float(retry_delay)!r},"priority":{int(priority)},'
                f'"expires":null,"expires_at":null,"timeout":{timeout_json},"args":['
                ).encode() + payload_json + b"]}"
        return JOB_MAGIC + self.sign(body) + b"." + body

    def deserialize(self, data: bytes):
        if data[:1] == DATA_MAGIC:
            return json.loads(data[1:])
        return self.decode_job(data)

    def decode_job(self, data: bytes) -> Message:
        if not data.startswith(JOB_MAGIC) or len(data) < len(JOB_MAGIC) + SIG_LEN + 2:
            raise BadSignature("message is not in the signed v1 form")
        sig = data[len(JOB_MAGIC):len(JOB_MAGIC) + SIG_LEN]
        body = data[len(JOB_MAGIC) + SIG_LEN + 1:]
        if not hmac.compare_digest(sig, self.sign(body)):
            raise BadSignature("signature does not match")
        try:
            doc = json.loads(body)
            if doc.get("q") != self.queue:
                raise BadMessage(f"message was signed for queue {doc.get('q')!r}")
            return Message(
                id=doc["id"], name=doc["task"], eta=_decode_time(doc.get("eta")),
                retries=doc.get("retries") or 0, retry_delay=doc.get("retry_delay") or 0,
                priority=doc.get("priority"), args=tuple(doc.get("args") or ()),
                kwargs=doc.get("kwargs") or {}, expires=doc.get("expires"),
                expires_resolved=_decode_time(doc.get("expires_at")),
                timeout=doc.get("timeout"))
        except BadMessage:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise BadMessage(f"undecodable message: {exc}") from None


def peek_job(data: bytes) -> dict:
    """The JSON body of a job without checking its signature (for display only)."""
    if data.startswith(JOB_MAGIC):
        try:
            return json.loads(data[len(JOB_MAGIC) + SIG_LEN + 1:])
        except ValueError:
            pass
    return {}
