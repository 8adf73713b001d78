"""Redis ACL users for tests and `clarity up`: renders redis/users.acl.j2, the template the
Ansible `redis` role deploys, so that what the tests prove is what runs on the hosts.

The template is rendered as Ansible's `template` module renders it (Jinja2 with
`trim_blocks`; `hash('sha256')` as Ansible's filter of that name)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import jinja2

from app.devstack import REPO

TEMPLATE = REPO / "redis" / "users.acl.j2"

# Every user the template defines, in the order it writes them (`default` is off).
OPERATOR = "clarity-operator"
WORKER = "clarity-worker"
ADMIN = "clarity-admin"
PRODUCER = "clarity-producer"
EXPORTER = "redis-exporter"
BACKUP = "redis-backup"
REPLICATION = "redis-replication"
SENTINEL = "redis-sentinel"
USERS = (OPERATOR, WORKER, ADMIN, PRODUCER, EXPORTER, BACKUP, REPLICATION, SENTINEL)


def test_passwords(tag: str = "") -> dict[str, list[str]]:
    """One password per user, distinct and recognisable (tests only)."""
    return {user: [f"test-{user}-password{tag}"] for user in USERS}


def passwords(given: str | list[str]) -> list[str]:
    """A user's passwords as the template takes them: one, or [current, previous, ...]."""
    return [given] if isinstance(given, str) else list(given)


def _hash(value: str, algorithm: str = "sha1") -> str:
    return hashlib.new(algorithm, str(value).encode()).hexdigest()


def render(passwords: dict[str, str | list[str]], prefix: str = "clarity",
           default_password: str = "") -> str:
    """The ACL file for these passwords (user -> password or [new, old]) and key prefix."""
    missing = [u for u in USERS if not passwords.get(u)]
    if missing:
        raise ValueError(f"no password for Redis user(s) {', '.join(missing)}")
    env = jinja2.Environment(trim_blocks=True, keep_trailing_newline=True,
                             undefined=jinja2.StrictUndefined,
                             autoescape=False)
    env.filters["hash"] = _hash
    template = env.from_string(TEMPLATE.read_text())
    return template.render(redis_acl_users=passwords, redis_acl_key_prefix=prefix,
                           redis_acl_default_user_password=default_password)


def write(path: Path, passwords: dict[str, str | list[str]], prefix: str = "clarity",
          default_password: str = "") -> Path:
    path = Path(path)
    path.write_text(render(passwords, prefix, default_password))
    path.chmod(0o600)
    return path
