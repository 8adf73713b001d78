"""Signed JSON messages: what travels through Redis.

Huey pickles its messages; unpickling bytes from Redis would let anyone with write access to
Redis run code in a worker. Ours are JSON, and each carries an HMAC-SHA256 over its bytes with
the shared JOB_SIGNING_SECRET, so a forged or altered message is refused before it is decoded.

Wire form of a job:

    b"v2." + key id (8 hex) + b"." + HMAC-SHA256 (43 base64url) + b"." + JSON body

The key id names the secret that signed it, so that secrets rotate without parking the
backlog: a worker verifies with JOB_SIGNING_SECRET or any of JOB_SIGNING_PREVIOUS_SECRETS
and signs with the first (docs/deploy.md, "Rotating the signing secret"). The body holds
only what differs from the defaults (`q`, `id`, `task`, `args` always). The older form
b"v1." + 64 hex digits + b"." + body (no key id) is still read, checked against every key.
Other values Huey stores through its serializer (task locks): b"d" + JSON bytes; they are
never read as a job.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json

from huey.registry import Message
from huey.serializer import Serializer

JOB_MAGIC = b"v2."
KID_LEN = 8
SIG_LEN = 43  # 32 bytes, unpadded base64url
HEADER_LEN = len(JOB_MAGIC) + KID_LEN + 1 + SIG_LEN + 1
V1_MAGIC, V1_SIG_LEN = b"v1.", 64
DATA_MAGIC = b"d"


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


class SigningKey:
    def __init__(self, secret: str):
        self.key = hmac.new(secret.encode(), b"clarity-job-signing-v1", hashlib.sha256).digest()
        # Names the key without revealing it: a hash of the derived key, not of the secret.
        self.kid = hashlib.sha256(b"kid:" + self.key).hexdigest()[:KID_LEN].encode()

    def mac(self, body: bytes) -> bytes:
        return hmac.new(self.key, body, hashlib.sha256).digest()

    def sign(self, body: bytes) -> bytes:
        return base64.urlsafe_b64encode(self.mac(body)).rstrip(b"=")


class SignedJSONSerializer(Serializer):
    """Signs with the first secret; verifies with any of them (rotation)."""

    def __init__(self, secret: str, queue: str, previous: tuple[str, ...] = ()):
        super().__init__()
        self.current = SigningKey(secret)
        self.keys = {k.kid: k for k in (self.current, *(SigningKey(p) for p in previous))}
        self.queue = queue

    def seal(self, body: bytes) -> bytes:
        return (JOB_MAGIC + self.current.kid + b"." + self.current.sign(body) + b"." + body)

    def serialize(self, data) -> bytes:
        if isinstance(data, Message):
            if data.on_complete or data.on_error or data.chord_config:
                raise ValueError("pipelines and chords are not supported: enqueue the next "
                                 "job from the handler instead")
            doc = {"q": self.queue, "id": data.id, "task": data.name,
                   "args": list(data.args or ())}
            optional = {
                "kwargs": data.kwargs or None,
                "eta": _encode_time(data.eta),
                "retries": data.retries or None,
                "retry_delay": data.retry_delay or None,
                "priority": data.priority,
                "expires": data.expires if isinstance(data.expires, int | float) else None,
                "expires_at": _encode_time(data.expires_resolved),
                "timeout": data.timeout,
            }
            doc.update((k, v) for k, v in optional.items() if v is not None)
            return self.seal(dumps(doc))
        return DATA_MAGIC + dumps(data)

    def encode_new_job(self, job_id: str, task: str, payload_json: bytes, priority: int,
                       eta, retries: int, retry_delay: float, timeout) -> bytes:
        """The same wire form as serialize(Message(...)) for a fresh job, without building
        Huey's Task and Message objects: the producer's hot path (bulk enqueue)."""
        # Formatted by hand: json.dumps of the envelope is most of an enqueue's CPU time. Every
        # value is a number or a JSON-escaped string; decode_job reads it back as JSON.
        head = (f'{{"q":"{self.queue}","id":{json.dumps(job_id)},"task":{json.dumps(task)},'
                f'"priority":{int(priority)}')
        parts = [head]
        if eta is not None:
            parts.append(f',"eta":"{eta.isoformat()}"')
        if retries:
            parts.append(f',"retries":{int(retries)},"retry_delay":{float(retry_delay)!r}')
        if timeout is not None:
            parts.append(f',"timeout":{float(timeout)!r}')
        parts.append(',"args":[')
        body = "".join(parts).encode() + payload_json + b"]}"
        return self.seal(body)

    def deserialize(self, data: bytes):
        if data[:1] == DATA_MAGIC:
            return json.loads(data[1:])
        return self.decode_job(data)

    def verify(self, data: bytes) -> bytes:
        """The body of a job whose signature holds, checked in constant time before any of
        it is parsed; raises BadSignature otherwise."""
        if data.startswith(JOB_MAGIC) and len(data) > HEADER_LEN:
            kid = data[len(JOB_MAGIC):len(JOB_MAGIC) + KID_LEN]
            sig = data[len(JOB_MAGIC) + KID_LEN + 1:HEADER_LEN - 1]
            body = data[HEADER_LEN:]
            key = self.keys.get(kid)
            if key is None:
                raise BadSignature(f"signed with an unknown key ({kid.decode(errors='replace')}"
                                   "): not JOB_SIGNING_SECRET nor a previous secret")
            if not hmac.compare_digest(sig, key.sign(body)):
                raise BadSignature("signature does not match")
            return body
        if data.startswith(V1_MAGIC) and len(data) > len(V1_MAGIC) + V1_SIG_LEN + 1:
            sig = data[len(V1_MAGIC):len(V1_MAGIC) + V1_SIG_LEN]
            body = data[len(V1_MAGIC) + V1_SIG_LEN + 1:]
            matches = [hmac.compare_digest(sig, k.mac(body).hex().encode())
                       for k in self.keys.values()]
            if any(matches):
                return body
            raise BadSignature("signature does not match")
        raise BadSignature("message is not in the signed form")

    def resign(self, data: bytes) -> bytes | None:
        """`data` sealed with the current key, if it verifies with any known key and is not
        sealed with the current one already; None otherwise (a forged message stays as it
        is, and is refused when it is leased)."""
        if self.key_id(data) == self.current.kid.decode():
            return None
        try:
            return self.seal(self.verify(data))
        except BadSignature:
            return None

    def key_id(self, data: bytes) -> str | None:
        """The id of the key a message says signed it (not verified); None for v1."""
        if data.startswith(JOB_MAGIC):
            return data[len(JOB_MAGIC):len(JOB_MAGIC) + KID_LEN].decode(errors="replace")
        return None

    def decode_job(self, data: bytes) -> Message:
        body = self.verify(data)
        try:
            doc = json.loads(body)
            if not isinstance(doc, dict):
                raise BadMessage("the signed body is not a JSON object")
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
    """The JSON body of a job without checking its signature (for display only); {} for
    anything that is not a signed job holding a JSON object."""
    if data.startswith(JOB_MAGIC):
        body = data[HEADER_LEN:]
    elif data.startswith(V1_MAGIC):
        body = data[len(V1_MAGIC) + V1_SIG_LEN + 1:]
    else:
        return {}
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return {}
    return doc if isinstance(doc, dict) else {}
