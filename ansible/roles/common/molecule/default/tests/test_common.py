"""The common role on a systemd host: user, kernel settings (as files), firewall, journald."""


def test_clarity_is_a_system_user_without_login(host):
    user = host.user("clarity")
    assert user.group == "clarity"
    assert user.uid < 1000
    assert user.shell == "/usr/sbin/nologin"


def test_config_dir_is_closed_to_other_users(host):
    config = host.file("/etc/clarity")
    assert config.is_directory
    assert config.mode == 0o750
    assert config.group == "clarity"


def test_sysctl_drop_in_is_installed_but_not_loaded_in_a_container(host):
    dropin = host.file("/etc/sysctl.d/90-clarity.conf")
    assert dropin.contains("^net.ipv4.tcp_keepalive_time = 300$")
    # Loading it here would change the CI host's kernel: the role skips that in containers.
    assert host.run("systemd-detect-virt --container").rc == 0


def test_firewall_ruleset_drops_by_default_and_parses(host):
    ruleset = host.file("/etc/nftables.conf")
    assert ruleset.mode == 0o600
    assert ruleset.contains("policy drop;")
    # Only the monitoring group may reach Prometheus; SSH stays open.
    assert ruleset.contains('ip saddr { .* } tcp dport 9090 accept comment "prometheus"')
    assert ruleset.contains('^ *tcp dport 22 accept comment "ssh"')
    assert not ruleset.contains("dport 6379")


def test_journald_is_bounded(host):
    assert host.file("/etc/systemd/journald.conf.d/90-clarity.conf").contains("^SystemMaxUse=1G$")
    assert host.service("systemd-journald").is_running


def test_system_boots_to_a_running_state(host):
    state = host.run("systemctl is-system-running --wait").stdout.strip()
    assert state in ("running", "degraded"), state
    failed = host.run("systemctl --failed --no-legend --plain").stdout.strip()
    assert failed == "", failed
