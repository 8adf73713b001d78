"""End to end through the production path: nginx (TLS, limits, headers) → gunicorn → app →
Redis. The stack is the repo's own nginx template and gunicorn.conf.py."""

from __future__ import annotations

import http.server
import json
import threading

import httpx
import pytest

from app.devstack.web import WebStack, have_e2e_tools
from tests.admin.helpers import ADMIN, ADMIN_KEY, KEY_SETTINGS, PRODUCER, READONLY
from tests.helpers import clarity_env

pytestmark = pytest.mark.skipif(have_e2e_tools() is not None,
                                reason=f"needs {have_e2e_tools()} (apt-get install nginx openssl)")

PROBE_KEY = "probe-key-0123456789abcdef"
PROBE = {"Authorization": f"Bearer {PROBE_KEY}"}
APP_LIMIT = 20


class FakeWorkerHealth(http.server.ThreadingHTTPServer):
    """A worker's health endpoint: answers /health with its own name."""

    def __init__(self, name: str):
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = json.dumps({"status": "ok", "worker": name}).encode()
                self.send_response(200 if self.path == "/health" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()


@pytest.fixture(scope="module")
def health_servers():
    servers = [FakeWorkerHealth("w1"), FakeWorkerHealth("w2")]
    yield servers
    for s in servers:
        s.shutdown()
        s.server_close()


@pytest.fixture(scope="module")
def stack(redis_server, tmp_path_factory, health_servers):
    keys = dict(KEY_SETTINGS)
    keys["readonly_api_keys"] += f",probe:{PROBE_KEY}"
    env = clarity_env(redis_server, "e2e", **keys, admin_rate_limit=f"{APP_LIMIT} per 15 minutes")
    targets = [{"host": f"w{i}", "queue": "sync", "address": "127.0.0.1",
                "port": s.server_address[1]} for i, s in enumerate(health_servers, 1)]
    with WebStack(tmp_path_factory.mktemp("stack"), env,
               nginx_vars={"nginx_worker_health_targets": targets,
                           "nginx_client_max_body_size": "256k"}) as running:
        yield running


@pytest.fixture
def web(stack):
    with stack.client() as client:
        yield client


def test_plain_http_redirects_to_https(stack):
    response = httpx.get(stack.http_url + "/api/admin/queue?action=overview")
    assert response.status_code == 301
    assert response.headers["Location"] == f"{stack.url}/api/admin/queue?action=overview"


def test_tls_serves_with_security_headers_once(stack, web):
    response = web.get("/api/admin/queue", headers=READONLY)
    assert response.status_code == 200 and response.http_version in ("HTTP/1.1", "HTTP/2")
    assert response.json()["redis"]["ok"] is True
    for name in ("Strict-Transport-Security", "X-Content-Type-Options", "X-Frame-Options",
                 "Referrer-Policy", "Content-Security-Policy"):
        assert len(response.headers.get_list(name)) == 1, name
    assert "nginx/" not in response.headers.get("Server", "")
    with pytest.raises(httpx.ConnectError):
        httpx.get(stack.url + "/api/admin/openapi.json", verify=True)  # self-signed


def test_auth_through_the_proxy(web):
    assert web.get("/api/admin/queue").status_code == 401
    assert web.get("/api/admin/queue", headers={"Authorization": "Bearer nope"}).status_code \
        == 401
    pause = {"action": "pause", "queue": "cleanup"}
    assert web.post("/api/admin/queue", json=pause, headers=READONLY).status_code == 403
    assert web.post("/api/admin/queue", json=pause, headers=ADMIN).json()["paused"] is True
    assert web.post("/api/admin/queue", json={"action": "resume", "queue": "cleanup"},
                     headers=ADMIN).status_code == 200


def test_enqueue_and_replay_through_the_proxy(web):
    body = {"queue": "sync", "task": "record", "payload": {"n": 1}, "priority": "high"}
    headers = {**PRODUCER, "Idempotency-Key": "e2e-order-1"}
    first = web.post("/api/jobs", json=body, headers=headers)
    again = web.post("/api/jobs", json=body, headers=headers)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    job = web.get(first.headers["Location"], headers=READONLY).json()
    assert job["priority"] == 5 and job["state"] == "waiting"


def test_body_limits_are_json_413(web):
    # Over the app's 64 KiB payload cap, under nginx's body cap: the app names the field.
    body = {"queue": "sync", "task": "record", "payload": {"x": "y" * 70_000}}
    response = web.post("/api/jobs", json=body, headers=PRODUCER)
    assert response.status_code == 413 and response.json()["field"] == "payload"
    # Over nginx's cap: nginx refuses before the app, still in JSON.
    response = web.post("/api/jobs", content=b"x" * 300_000, headers={
        **PRODUCER, "Content-Type": "application/json"})
    assert response.status_code == 413 and response.json()["error"] == "payload_too_large"


def test_client_address_is_nginx_view_not_a_forged_header(web, redis_server):
    web.post("/api/admin/queue", json={"action": "pause", "queue": "email"},
              headers={**ADMIN, "X-Forwarded-For": "203.0.113.66"})
    web.post("/api/admin/queue", json={"action": "resume", "queue": "email"}, headers=ADMIN)
    entry = json.loads(redis_server.client().lindex("e2e:audit", 1))
    assert entry["action"] == "pause" and entry["client"] == "127.0.0.1"
    assert ADMIN_KEY not in json.dumps(entry)


def test_app_rate_limit_429_with_retry_after(web):
    statuses = [web.get("/api/admin/queue?action=health", headers=PROBE).status_code
                for _ in range(APP_LIMIT + 2)]
    assert statuses[:APP_LIMIT] == [200] * APP_LIMIT
    limited = web.get("/api/admin/queue?action=health", headers=PROBE)
    assert limited.status_code == 429 and limited.json()["error"] == "rate_limited"
    assert 0 < int(limited.headers["Retry-After"]) <= 900
    # Shared across both gunicorn workers: the count did not start again in the other one.
    assert all(web.get("/api/admin/queue", headers=PROBE).status_code == 429
               for _ in range(4))


def test_worker_health_is_load_balanced_and_key_gated(web, health_servers):
    assert web.get("/queue/health").status_code == 401
    seen = {web.get("/queue/health", headers=READONLY).json()["worker"] for _ in range(6)}
    assert seen == {"w1", "w2"}
    assert web.get("/workers/w2/sync/health", headers=READONLY).json()["worker"] == "w2"


def test_metrics_merge_every_gunicorn_worker(stack, web):
    for _ in range(6):
        web.get("/api/admin/openapi.json")
    text = web.get("/metrics", headers=READONLY).text
    assert "clarity_admin_requests_total" in text and 'endpoint="api.openapi"' in text
    assert not (stack.dir / "prometheus" / "stale_from_last_run.db").exists()


def test_nginx_limit_req_answers_json_429(redis_server, tmp_path):
    env = clarity_env(redis_server, "e2e-nginx", **KEY_SETTINGS)
    with WebStack(tmp_path, env, nginx_vars={"nginx_api_rate": "1r/s", "nginx_api_burst": 2},
               gunicorn_workers=1) as stack, stack.client() as client:
        statuses = [client.get("/api/admin/openapi.json") for _ in range(8)]
        limited = [r for r in statuses if r.status_code == 429]
        assert limited and limited[0].json()["error"] == "rate_limited"
        assert "Retry-After" in limited[0].headers


def test_dashboard_login_over_tls_sets_a_secure_httponly_cookie(web):
    import re

    from tests.admin.helpers import ADMIN_KEY as KEY

    page = web.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    response = web.post("/login", data={"key": KEY, "csrf_token": token})
    assert response.status_code == 302
    cookie = response.headers["Set-Cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert web.get("/").status_code == 200


def test_overlong_url_is_a_json_414(web):
    response = web.get("/api/admin/queue?id=" + "x" * 9000, headers=READONLY)
    assert response.status_code == 414 and response.json()["error"] == "uri_too_long"


def test_oversized_header_is_a_json_400(web):
    response = web.get("/api/admin/queue", headers={**READONLY, "X-Junk": "j" * 20_000})
    assert response.status_code == 400 and response.json()["error"] == "bad_request"
