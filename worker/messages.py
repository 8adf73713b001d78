"""Signed JSON messages: what travels through Redis.

Huey pickles its messages; unpickling bytes from Redis would let anyone with write access to
Redis run code in a worker. Ours are JSON, and each carries an HMAC-SHA256 over its bytes with
the shared JOB_SIGNING_SECRET, so a forged or altered message is refused before it is decoded.

Wire form of a job:

    b"v2." + key id (8 hex) + b"." + HMAC-SHA256 (first 128 bits, 22 base64url) + b"."
    + JSON body

The key id names the secret that signed it, so that secrets rotate without parking the
backlog: a worker verifies with JOB_SIGNING_SECRET or any of JOB_SIGNING_PREVIOUS_SECRETS
and signs with the first (docs/deploy.md, "Rotating the signing secret"). The body holds
a JSON array: [task, payload] or [task, payload, {options that differ from the defaults}]
(retries, retry_delay, eta, timeout, expires, expires_at). The queue, the job's id and its
priority are not in it: the id and the priority are stored beside the message in the job
hash, and the queue and the id are part of what is signed. Every byte counts: a queue holds
millions of these (bench/memory_bench.py). The older form
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
SIG_LEN = 22  # HMAC-SHA256 truncated to 128 bits (RFC 2104 allows it), unpadded base64url
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
        # Keyed once: a copy per message skips the key schedule (and OpenSSL's look-up of
        # the digest by name) that hmac.digest() does on every call.
        self._keyed = hmac.new(self.key, digestmod=hashlib.sha256)

    def mac(self, body: bytes) -> bytes:
        h = self._keyed.copy()
        h.update(body)
        return h.digest()

    def sign(self, queue: str, job_id: str, body: bytes) -> bytes:
        # The queue and the job id are signed, not stored in the body: a message copied to
        # another queue, or to another job id (a replay), no longer verifies.
        signed = b"clarity-v2\0" + queue.encode() + b"\0" + job_id.encode() + b"\0" + body
        return base64.urlsafe_b64encode(self.mac(signed)[:16]).rstrip(b"=")


class SignedJSONSerializer(Serializer):
    """Signs with the first secret; verifies with any of them (rotation)."""

    def __init__(self, secret: str, queue: str, previous: tuple[str, ...] = ()):
        super().__init__()
        self.current = SigningKey(secret)
        self.keys = {k.kid: k for k in (self.current, *(SigningKey(p) for p in previous))}
        self.queue = queue

    def seal(self, job_id: str, body: bytes) -> bytes:
        return (JOB_MAGIC + self.current.kid + b"." + self.current.sign(self.queue, job_id, body)
                + b"." + body)

    def serialize(self, data) -> bytes:
        if isinstance(data, Message):
            if data.on_complete or data.on_error or data.chord_config:
                raise ValueError("pipelines and chords are not supported: enqueue the next "
                                 "job from the handler instead")
            if data.kwargs or len(data.args or ()) > 1:
                raise ValueError("a task takes one payload argument (a JSON object)")
            options = {
                "eta": _encode_time(data.eta),
                "retries": data.retries or None,
                "retry_delay": data.retry_delay or None,
                "expires": data.expires if isinstance(data.expires, int | float) else None,
                "expires_at": _encode_time(data.expires_resolved),
                "timeout": data.timeout,
            }
            body = [data.name, *(data.args or ())]
            options = {k: v for k, v in options.items() if v is not None}
            if options:
                body += [None] * (2 - len(body)) + [options]
            return self.seal(data.id, dumps(body))
        return DATA_MAGIC + dumps(data)

    def encode_new_job(self, job_id: str, task: str, payload_json: bytes, priority: int,
                       eta, retries: int, retry_delay: float, timeout) -> bytes:
        """The same wire form as serialize(Message(...)) for a fresh job, without building
        Huey's Task and Message objects: the producer's hot path (bulk enqueue). `priority`
        goes into the job hash, not the message."""
        # Formatted by hand: json.dumps is most of an enqueue's CPU time. Every value is a
        # number or a JSON-escaped string; decode_job reads it back as JSON.
        options = []
        if eta is not None:
            options.append(f'"eta":"{eta.isoformat()}"')
        if retries:
            options.append(f'"retries":{int(retries)},"retry_delay":{float(retry_delay)!r}')
        if timeout is not None:
            options.append(f'"timeout":{float(timeout)!r}')
        tail = (",{" + ",".join(options) + "}]") if options else "]"
        body = b"[" + json.dumps(task).encode() + b"," + payload_json + tail.encode()
        return self.seal(job_id, body)

    def deserialize(self, data: bytes):
        if data[:1] == DATA_MAGIC:
            return json.loads(data[1:])
        raise BadMessage("a job decodes with its id: decode_job(data, job_id)")

    def verify(self, data: bytes, job_id: str) -> bytes:
        """The body of the job stored as `job_id`, if its signature holds (checked in constant
        time before any of it is parsed); raises BadSignature otherwise."""
        if data.startswith(JOB_MAGIC) and len(data) > HEADER_LEN:
            kid = data[len(JOB_MAGIC):len(JOB_MAGIC) + KID_LEN]
            sig = data[len(JOB_MAGIC) + KID_LEN + 1:HEADER_LEN - 1]
            body = data[HEADER_LEN:]
            key = self.keys.get(kid)
            if key is None:
                raise BadSignature(f"signed with an unknown key ({kid.decode(errors='replace')}"
                                   "): not JOB_SIGNING_SECRET nor a previous secret")
            if not hmac.compare_digest(sig, key.sign(self.queue, job_id, body)):
                raise BadSignature("signature does not match (altered, or copied from another "
                                   "job or queue)")
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

    def resign(self, data: bytes, job_id: str) -> bytes | None:
        """`data` sealed with the current key, if it verifies with any known key and is not
        sealed with the current one already; None otherwise (a forged message stays as it
        is, and is refused when it is leased)."""
        if self.key_id(data) == self.current.kid.decode():
            return None
        try:
            body = self.verify(data, job_id)
        except BadSignature:
            return None
        if data.startswith(V1_MAGIC):  # the old body: an object naming queue and id inside
            doc = json.loads(body)
            options = {k: v for k, v in doc.items()
                       if k not in ("q", "id", "task", "args", "kwargs", "priority")
                       and v is not None}
            body = dumps([doc["task"], *(doc.get("args") or [None])[:1],
                          *([options] if options else [])])
        return self.seal(job_id, body)

    def key_id(self, data: bytes) -> str | None:
        """The id of the key a message says signed it (not verified); None for v1."""
        if data.startswith(JOB_MAGIC):
            return data[len(JOB_MAGIC):len(JOB_MAGIC) + KID_LEN].decode(errors="replace")
        return None

    def decode_job(self, data: bytes, job_id: str, priority: int | None = None) -> Message:
        """The verified job stored as `job_id` (its `priority` is kept in the job hash)."""
        body = self.verify(data, job_id)
        try:
            doc = _body_doc(json.loads(body))
            if doc is None:
                raise BadMessage("the signed body is not a job")
            if data.startswith(V1_MAGIC) and doc.get("q") != self.queue:
                raise BadMessage(f"message was signed for queue {doc.get('q')!r}")
            return Message(
                id=job_id, name=doc["task"], eta=_decode_time(doc.get("eta")),
                retries=doc.get("retries") or 0, retry_delay=doc.get("retry_delay") or 0,
                priority=doc.get("priority", priority), args=tuple(doc.get("args") or ()),
                kwargs=doc.get("kwargs") or {}, expires=doc.get("expires"),
                expires_resolved=_decode_time(doc.get("expires_at")),
                timeout=doc.get("timeout"))
        except BadMessage:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise BadMessage(f"undecodable message: {exc}") from None


def _body_doc(body) -> dict | None:
    """A job body as a dict (task, args, options): v2's array, or v1's object; None when it
    is neither."""
    if isinstance(body, dict):
        return body
    if (isinstance(body, list) and 1 <= len(body) <= 3 and isinstance(body[0], str)
            and (len(body) < 3 or isinstance(body[2], dict))):
        doc = dict(body[2]) if len(body) == 3 else {}
        doc.update(task=body[0], args=body[1:2])
        return doc
    return None


def peek_job(data: bytes) -> dict:
    """The body of a job as a dict (task, args, options) without checking its signature (for
    display only); {} for anything that is not a signed job's body."""
    if data.startswith(JOB_MAGIC):
        body = data[HEADER_LEN:]
    elif data.startswith(V1_MAGIC):
        body = data[len(V1_MAGIC) + V1_SIG_LEN + 1:]
    else:
        return {}
    try:
        return _body_doc(json.loads(body)) or {}
    except (ValueError, UnicodeDecodeError):
        return {}
