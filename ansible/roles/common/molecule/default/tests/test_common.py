"""The common role on a systemd host: user, kernel settings (as files), firewall, journald."""

import os
import subprocess


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


def test_kernel_settings_that_drifted_show_in_check_mode(host):
    """Where kernel settings are applied, the role compares the live values with the
    inventory's. Here (a container) it must not write them: run its sysctl tasks in check
    mode as if on a real host. The drop-in file already holds the inventory's values, so a
    change can only come from the live value (the container's, not 300)."""
    live = host.run("sysctl -n net.ipv4.tcp_keepalive_time").stdout.strip()
    assert live != "300"
    result = subprocess.run(
        ["ansible-playbook", "--inventory", os.path.dirname(os.environ["MOLECULE_INVENTORY_FILE"]),
         os.path.join(os.environ["MOLECULE_SCENARIO_DIRECTORY"], "converge.yml"),
         "--check", "--tags", "sysctl", "-e", "common_apply_kernel_settings=true"],
        capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "changed: [clarity-common] => (item=net.ipv4.tcp_keepalive_time)" in result.stdout
    assert host.run("sysctl -n net.ipv4.tcp_keepalive_time").stdout.strip() == live


def test_firewall_ruleset_is_loaded_and_drops_by_default(host):
    ruleset = host.file("/etc/nftables.conf")
    assert ruleset.mode == 0o600
    assert ruleset.contains("policy drop;")
    loaded = host.run("nft list chain inet filter input")
    assert loaded.rc == 0, loaded.stderr
    assert "policy drop;" in loaded.stdout
    assert host.service("nftables").is_enabled
    assert not ruleset.contains("dport 6379")


def test_firewall_rules_take_groups_and_ipv6_peers(host):
    """The monitoring group's member is reached on IPv6 (see converge.yml): its rules are ip6
    rules; SSH sources mix a group name, an IPv4 and an IPv6 network, and a group the
    inventory does not have (no rule: the port stays closed to it)."""
    ruleset = host.file("/etc/nftables.conf")
    assert ruleset.contains(r'^ *ip6 saddr { 2001:db8:c1a::10 } tcp dport 9090 accept comment "prometheus"$')
    assert not ruleset.contains('ip saddr { 2001:db8')
    assert ruleset.contains(r'^ *ip saddr { 192.0.2.0/24 } tcp dport 22 accept comment "ssh"$')
    assert ruleset.contains(
        r'^ *ip6 saddr { 2001:db8:c1a::10, 2001:db8:ff::/48 } tcp dport 22 accept comment "ssh"$')
    assert not ruleset.contains("bastions")
    loaded = host.run("nft list chain inet filter input").stdout
    assert "ip6 saddr 2001:db8:c1a::10 tcp dport 9090 accept" in loaded
    assert "ip saddr 192.0.2.0/24 tcp dport 22 accept" in loaded


def test_an_existing_chrony_is_kept_and_timesyncd_not_installed(host):
    assert host.package("chrony").is_installed
    assert not host.package("systemd-timesyncd").is_installed


def test_the_address_waiter_unit_is_installed(host):
    result = host.run("systemd-analyze verify /etc/systemd/system/clarity-address-online@192.0.2.1.service")
    assert result.rc == 0, result.stderr


def test_journald_is_bounded(host):
    assert host.file("/etc/systemd/journald.conf.d/90-clarity.conf").contains("^SystemMaxUse=1G$")
    assert host.service("systemd-journald").is_running


def test_system_boots_to_a_running_state(host):
    state = host.run("systemctl is-system-running --wait").stdout.strip()
    assert state in ("running", "degraded"), state
    failed = host.run("systemctl --failed --no-legend --plain").stdout.strip()
    assert failed == "", failed
