"""Alert rules, their promtool unit tests, the example scrape config and the dashboard."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import yaml

from app.devstack import REPO

MONITORING = REPO / "monitoring"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool missing: apt-get install prometheus (Debian ships it)")


def promtool(*args, cwd=MONITORING):
    result = subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, check=False,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@needs_promtool
def test_alert_rules_pass_promtool_check():
    rule_files = sorted(str(p) for p in (MONITORING / "alerts").glob("*.yml"))
    assert rule_files
    assert "SUCCESS" in promtool("check", "rules", *rule_files)


@needs_promtool
def test_alert_rules_pass_their_promtool_unit_tests():
    assert "SUCCESS" in promtool("test", "rules", "alerts_test.yml")


@needs_promtool
def test_example_prometheus_config_is_valid():
    promtool("check", "config", "--syntax-only", "prometheus.yml")


def _anchors(markdown: str) -> set[str]:
    """GitHub's anchors of a document's headings."""
    return {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.+)$", markdown, flags=re.MULTILINE)}


def test_every_alert_has_a_unit_test_severity_fix_and_runbook_section():
    alerts = [r for path in sorted((MONITORING / "alerts").glob("*.yml"))
              for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"]
              if "alert" in r]
    tests = yaml.safe_load((MONITORING / "alerts_test.yml").read_text())
    tested = {case["alertname"] for t in tests["tests"] for case in t.get("alert_rule_test", [])
              if case.get("exp_alerts")}
    runbook = (REPO / "docs" / "troubleshooting.md").read_text()
    anchors = _anchors(runbook)
    for rule in alerts:
        assert rule["alert"] in tested, f"{rule['alert']} has no firing unit test"
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        path, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert path == "docs/troubleshooting.md" and anchor in anchors, rule["alert"]
    names = {r["alert"] for r in alerts}
    assert {"ClarityQueueBacklog", "ClarityJobFailureRate", "ClarityWorkerDown",
            "ClarityRedisDown", "ClarityRedisMemoryHigh", "ClarityBackupStale",
            "ClarityExpiredLeasesPilingUp", "ClarityCompletionRateLow",
            "ClarityProcessingTimeHigh", "ClarityWorkerUptimeLow"} <= names
    # The guide's symptoms and ours each have a section.
    for section in ("high-memory", "jobs-stuck-in-waiting", "connection-issues", "debug-mode",
                    "slow-redis", "slow-database", "expired-leases", "bad-signatures",
                    "abandoned-jobs", "circuit-breaker-open", "failover"):
        assert section in anchors, section


def _dashboard_exprs():
    dash = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    return dash, [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path):
    _, exprs = _dashboard_exprs()
    assert len(exprs) > 15
    # Substitute Grafana's variables, then let promtool parse every query as a rule.
    rules = [{"record": f"dashboard:query_{i}",
              "expr": e.replace("$__rate_interval", "1m").replace("$queue", ".*")}
             for i, e in enumerate(exprs)]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    promtool("check", "rules", str(path), cwd=tmp_path)


def test_dashboard_uses_only_documented_metrics():
    dash, exprs = _dashboard_exprs()
    assert dash["uid"] == "clarity-jobs"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    documented = (REPO / "docs" / "metrics.md").read_text()
    for expr in exprs:
        for name in set(re.findall(r"\b(clarity_[a-z_]+)", expr)):
            base = re.sub(r"_(bucket|count|sum)$", "", name)
            assert f"`{base}" in documented, f"{name} (dashboard) is not in docs/metrics.md"
