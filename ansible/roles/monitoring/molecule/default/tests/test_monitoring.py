"""The monitoring role: node_exporter everywhere, Prometheus scraping it on the monitoring host."""

import json
import time

from conftest import MAX_EXPOSURE, http_once, unit_exposure


def test_node_exporter_serves_metrics_with_the_textfile_collector(host):
    assert host.service("prometheus-node-exporter").is_running
    host.run("echo 'clarity_probe 1' > /var/lib/prometheus/node-exporter/probe.prom")
    status, _, body = http_once(host, "http://127.0.0.1:9100/metrics")
    assert status == 200
    assert "node_load1" in body
    assert "clarity_probe 1" in body


def test_prometheus_config_is_valid(host):
    assert host.run("promtool check config /etc/prometheus/prometheus.yml").rc == 0


def test_prometheus_shows_its_targets_up(host):
    deadline = time.monotonic() + 60
    while True:
        status, _, body = http_once(host, "http://127.0.0.1:9090/api/v1/targets")
        targets = json.loads(body)["data"]["activeTargets"] if status == 200 else []
        health = {t["labels"]["job"]: t["health"] for t in targets}
        if health.get("node") == "up" and health.get("prometheus") == "up":
            break
        assert time.monotonic() < deadline, health
        time.sleep(2)


def test_alertmanager_runs_with_a_config_amtool_accepts(host):
    assert host.service("prometheus-alertmanager").is_running
    check = host.run("amtool check-config /etc/prometheus/alertmanager.yml")
    assert check.rc == 0, check.stdout + check.stderr
    config = host.file("/etc/prometheus/alertmanager.yml")
    assert (config.user, config.group, config.mode) == ("root", "prometheus", 0o640)
    # The receivers of the inventory: email through the relay and a webhook.
    assert config.contains("email_configs:") and config.contains("webhook_configs:")
    assert config.contains('to: "ops@clarity.test"')
    # One Alertmanager, no gossip port.
    assert not host.socket("tcp://0.0.0.0:9094").is_listening


def test_prometheus_sends_alerts_to_alertmanager(host):
    deadline = time.monotonic() + 60
    while True:
        status, _, body = http_once(host, "http://127.0.0.1:9090/api/v1/alertmanagers")
        active = json.loads(body)["data"]["activeAlertmanagers"] if status == 200 else []
        if active:
            break
        assert time.monotonic() < deadline, body
        time.sleep(2)
    assert [a["url"] for a in active] == ["http://localhost:9093/api/v2/alerts"]


def test_prometheus_loads_every_alert_rule(host):
    status, _, body = http_once(host, "http://127.0.0.1:9090/api/v1/rules")
    assert status == 200
    names = {r["name"] for g in json.loads(body)["data"]["groups"] for r in g["rules"]}
    assert {"ClarityNodeDown", "ClarityAdminDown", "ClarityBackupMissing",
            "ClarityRedisPersistenceFailing", "ClarityClockDrift"} <= names


def test_blackbox_exporter_listens_on_localhost_only(host):
    assert host.service("prometheus-blackbox-exporter").is_running
    assert host.socket("tcp://127.0.0.1:9115").is_listening
    assert not host.socket("tcp://0.0.0.0:9115").is_listening


def test_every_prometheus_unit_is_hardened_and_still_works(host):
    units = ["prometheus-node-exporter", "prometheus", "prometheus-alertmanager",
             "prometheus-blackbox-exporter"]
    for unit in units:
        assert host.file(f"/etc/systemd/system/{unit}.service.d/60-hardening.conf").exists
        assert host.service(unit).is_running, unit
        assert unit_exposure(host, f"{unit}.service") <= MAX_EXPOSURE, unit
    # The sandbox leaves node_exporter what its collectors read: systemd over D-Bus, /proc,
    # the file systems.
    _, _, body = http_once(host, "http://127.0.0.1:9100/metrics")
    assert 'node_systemd_unit_state{name="prometheus.service",state="active"' in body
    assert "node_filesystem_avail_bytes{" in body
    assert "node_memory_MemAvailable_bytes" in body
    # Prometheus still writes its TSDB (under ProtectSystem=strict): its head has samples.
    _, _, body = http_once(host, "http://127.0.0.1:9090/api/v1/status/tsdb")
    assert json.loads(body)["data"]["headStats"]["numSeries"] > 0
