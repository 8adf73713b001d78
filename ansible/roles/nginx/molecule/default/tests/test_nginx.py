"""The nginx role: TLS in front of the admin app, the app's auth, nginx's rate limit."""

from conftest import MAX_EXPOSURE, http, http_once, unit_exposure

KEY = "molecule-admin-key-0123456789abcdef"
HEALTH = "https://127.0.0.1/api/admin/queue?action=health"


def test_nginx_runs_with_a_valid_configuration(host):
    assert host.service("nginx").is_running
    assert host.service("nginx").is_enabled
    assert host.run("nginx -t").rc == 0


def test_http_redirects_to_https(host):
    status, headers, _ = http_once(host, "http://127.0.0.1/api/admin/queue")
    assert status == 301
    assert headers["Location"].startswith("https://")


def test_api_without_a_key_is_401(host):
    status, _, body = http_once(host, HEALTH)
    assert status == 401, body


def test_api_with_the_key_is_200(host):
    status, headers, body = http_once(host, HEALTH, headers={"Authorization": f"Bearer {KEY}"})
    assert status == 200, body
    assert headers["Strict-Transport-Security"].startswith("max-age=")


def test_past_the_rate_limit_nginx_answers_429(host):
    # 10 r/s with a burst of 20: 40 back-to-back requests must overflow it.
    statuses = [s for s, _, _ in http(host, HEALTH, count=40)]
    assert 429 in statuses
    assert statuses[0] != 429


def test_self_signed_certificate_and_private_key_mode(host):
    assert host.file("/etc/nginx/tls/clarity-admin.key").mode == 0o600
    subject = host.run("openssl x509 -noout -subject -in /etc/nginx/tls/clarity-admin.crt")
    assert "clarity-nginx" in subject.stdout


def test_default_site_is_disabled(host):
    assert not host.file("/etc/nginx/sites-enabled/default").exists
    assert host.file("/etc/nginx/sites-enabled/clarity-admin").is_symlink


def test_nginx_unit_is_hardened_and_still_serves_and_reloads(host):
    assert host.file("/etc/systemd/system/nginx.service.d/60-hardening.conf").exists
    assert unit_exposure(host, "nginx.service") <= MAX_EXPOSURE
    # The master keeps what it needs: workers run as www-data, a reload replaces them.
    workers = host.run("ps -o user= --ppid $(cat /run/nginx.pid)").stdout.split()
    assert workers and set(workers) == {"www-data"}, workers
    assert host.run("systemctl reload nginx").rc == 0
    status, _, _ = http_once(host, HEALTH, headers={"Authorization": f"Bearer {KEY}"})
    assert status == 200
