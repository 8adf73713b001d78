"""Bearer API keys, dashboard sessions and CSRF tokens.

Keys are compared in constant time: the presented key and every configured key are hashed
to 32 bytes and *all* of them are compared with `hmac.compare_digest`, so neither the
length of a key nor which entry matched shows in the response time.

A dashboard session stores the key's name, kind and an HMAC fingerprint of the key (never
the key): removing or rotating a key in the configuration ends its sessions.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from flask import current_app, g, request, session

from app.admin.config import ApiKey
from app.admin.errors import ApiError

# What each endpoint needs -> the key kinds that may call it.
ALLOWED = {
    "read": ("admin", "readonly"),
    "admin": ("admin",),
    "enqueue": ("admin", "producer"),
    "metrics": ("admin", "readonly", "metrics"),
    "payload": ("admin",),  # see a job's payload (others get it redacted: app.admin.redact)
}


@dataclass(frozen=True)
class Principal:
    name: str
    kind: str
    via: str  # api | dashboard

    def can(self, need: str) -> bool:
        return self.kind in ALLOWED[need]


class KeyRing:
    def __init__(self, keys: list[ApiKey], session_secret: bytes):
        self._session_secret = session_secret
        self._entries = [(k.name, k.kind, hashlib.sha256(k.secret.encode()).digest(),
                          self._fingerprint(k.secret)) for k in keys]

    def __len__(self) -> int:
        return len(self._entries)

    def _fingerprint(self, secret: str) -> str:
        return hmac.new(self._session_secret, b"session-key:" + secret.encode(),
                        hashlib.sha256).hexdigest()

    def lookup(self, presented: str) -> tuple[str, str, str] | None:
        """(name, kind, fingerprint) of the matching key, or None. Constant time."""
        digest = hashlib.sha256(presented.encode("utf-8", "surrogatepass")).digest()
        found = None
        for name, kind, stored, fingerprint in self._entries:
            if hmac.compare_digest(digest, stored) and found is None:
                found = (name, kind, fingerprint)
        return found

    def check_fingerprint(self, name: str, fingerprint: str) -> str | None:
        """The kind of the key `name` if `fingerprint` still matches it, else None."""
        kind = None
        for entry_name, entry_kind, _stored, stored_fp in self._entries:
            if hmac.compare_digest(stored_fp.encode(), fingerprint.encode()) and \
                    entry_name == name:
                kind = entry_kind
        return kind


def keyring() -> KeyRing:
    return current_app.extensions["clarity_keyring"]


def bearer_principal() -> Principal | None:
    """The caller named by `Authorization: Bearer <key>`, cached per request."""
    if "clarity_bearer" in g:
        return g.clarity_bearer
    principal = None
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        match = keyring().lookup(token.strip())
        if match is not None:
            principal = Principal(match[0], match[1], "api")
    g.clarity_bearer = principal
    return principal


def may_see_payloads() -> bool:
    principal = g.get("clarity_principal")
    return principal is not None and principal.can("payload")


def presented_bearer() -> bool:
    return bool(request.headers.get("Authorization"))


def require(need: str):
    """Decorator for API views: 401 without a valid key, 403 for a key of the wrong kind."""

    def decorator(view):
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            authorize(need)
            return view(*args, **kwargs)

        return wrapper

    return decorator


def authorize(need: str) -> Principal:
    principal = bearer_principal()
    if principal is None:
        message = ("missing API key: send Authorization: Bearer <key>"
                   if not presented_bearer() else "invalid API key")
        raise ApiError(401, message, headers={"WWW-Authenticate": 'Bearer realm="clarity"'})
    if not principal.can(need):
        raise ApiError(403, f"the {principal.kind} key {principal.name!r} may not do this "
                            f"(needs a key of kind: {' or '.join(ALLOWED[need])})")
    g.clarity_principal = principal
    return principal


# -- dashboard sessions ------------------------------------------------------------------

def login_session(presented: str) -> Principal | None:
    match = keyring().lookup(presented)
    if match is None or match[1] not in ALLOWED["read"]:
        return None
    name, kind, fingerprint = match
    session.clear()
    session.permanent = True
    session["who"] = name
    session["fp"] = fingerprint
    session["csrf"] = secrets.token_urlsafe(32)
    return Principal(name, kind, "dashboard")


def session_principal() -> Principal | None:
    name, fingerprint = session.get("who"), session.get("fp")
    if not isinstance(name, str) or not isinstance(fingerprint, str):
        return None
    kind = keyring().check_fingerprint(name, fingerprint)
    if kind is None or kind not in ALLOWED["read"]:
        return None
    principal = Principal(name, kind, "dashboard")
    g.clarity_principal = principal
    return principal


def csrf_token() -> str:
    token = session.get("csrf")
    if not token:
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def check_csrf() -> None:
    """Forms carry `csrf_token`; fetch() sends X-CSRF-Token. Either must match the session."""
    expected = session.get("csrf")
    sent = request.headers.get("X-CSRF-Token") or request.form.get("csrf_token") or ""
    if not expected or not hmac.compare_digest(str(sent).encode(), str(expected).encode()):
        raise ApiError(403, "missing or invalid CSRF token; reload the page", field="csrf_token",
                       code="csrf_failed")
