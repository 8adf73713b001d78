"""The monitoring role: node_exporter everywhere, Prometheus scraping it on the monitoring host."""

import json
import time

from conftest import http_once


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
