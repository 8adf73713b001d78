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
    # Others may only pass through (TLS on in the scenarios' inventory: the redis user reads
    # /etc/clarity/tls/), never list it or read a file in it.
    assert config.mode == 0o751
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


# --- SSH -------------------------------------------------------------------------------
def sshd_effective(host, addr: str, user: str = "root") -> dict[str, str]:
    """sshd's effective settings (`sshd -T`) for a connection from `addr` as `user`."""
    out = host.run(f"sshd -T -C user={user},host=client.example,addr={addr}")
    assert out.rc == 0, out.stderr
    return dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)


def test_sshd_takes_keys_only_and_modern_algorithms(host):
    config = sshd_effective(host, "192.0.2.7")
    assert config["passwordauthentication"] == "no"
    assert config["kbdinteractiveauthentication"] == "no"
    assert config["authenticationmethods"] == "publickey"
    assert config["permitemptypasswords"] == "no"
    # The converge connects as root: root keeps its key, never a password.
    assert config["permitrootlogin"] == "without-password"
    weak = ("cbc", "sha1", "md5", "nistp", "3des", "umac-64", "group1-", "group14", "group-exchange")
    for key in ("ciphers", "macs", "kexalgorithms", "hostkeyalgorithms"):
        for algorithm in config[key].split(","):
            assert not [w for w in weak if w in algorithm], (key, algorithm)
            assert algorithm != "ssh-rsa", key
    assert config["ciphers"].startswith("chacha20-poly1305@openssh.com,")
    assert config["kexalgorithms"].startswith("sntrup761x25519-sha512@openssh.com,")


def test_sshd_drops_idle_clients_and_forwards_nothing(host):
    config = sshd_effective(host, "192.0.2.7")
    assert (config["clientaliveinterval"], config["clientalivecountmax"]) == ("300", "2")
    assert config["maxauthtries"] == "3"
    assert config["logingracetime"] == "30"
    for key in ("x11forwarding", "allowagentforwarding", "allowtcpforwarding",
                "allowstreamlocalforwarding", "permittunnel", "permituserenvironment"):
        assert config[key] == "no", key
    assert config["banner"] == "/etc/issue.net"
    assert host.file("/etc/issue.net").contains("^Authorised access only")


def test_sshd_refuses_every_user_outside_the_ssh_sources(host):
    """converge.yml allows SSH from the monitoring group (2001:db8:c1a::10), 192.0.2.0/24 and
    2001:db8:ff::/48: sshd refuses everyone else, as the firewall does."""
    for allowed in ("192.0.2.7", "2001:db8:ff::5", "2001:db8:c1a::10"):
        assert "denyusers" not in sshd_effective(host, allowed), allowed
    for other in ("203.0.113.5", "10.0.2.2", "2001:db8:c1a::11"):
        assert sshd_effective(host, other)["denyusers"] == "*", other


def ssh_to_self(host, *options: str):
    """The container's own ssh client against its sshd: what the running sshd answers."""
    return host.run(
        "ssh -v -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
        f"-o ConnectTimeout=20 {' '.join(options)} root@127.0.0.1 true")


def test_the_running_sshd_offers_keys_only_and_refuses_weak_algorithms(host):
    assert host.service("ssh").is_running
    assert host.file("/etc/ssh/sshd_config").mode == 0o600
    offered = ssh_to_self(host)
    assert offered.rc != 0
    methods = [line.rsplit(":", 1)[1].strip() for line in offered.stderr.splitlines()
               if "Authentications that can continue:" in line]
    assert methods and set(methods) == {"publickey"}, offered.stderr
    assert "no matching cipher found" in ssh_to_self(host, "-c aes128-cbc").stderr
    assert "no matching MAC found" in ssh_to_self(host, "-c aes256-ctr -m hmac-sha1").stderr
    assert "no matching key exchange method found" in ssh_to_self(
        host, "-o KexAlgorithms=diffie-hellman-group14-sha1").stderr


def test_a_config_sshd_refuses_never_replaces_the_working_one(host):
    before = host.file("/etc/ssh/sshd_config").sha256sum
    result = subprocess.run(
        ["ansible-playbook", "--inventory", os.path.dirname(os.environ["MOLECULE_INVENTORY_FILE"]),
         os.path.join(os.environ["MOLECULE_SCENARIO_DIRECTORY"], "converge.yml"),
         "--tags", "ssh", "-e", '{"common_ssh_ciphers": ["no-such-cipher"]}'],
        capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode != 0, result.stdout[-3000:]
    # The failure is printed on stderr where the callback shows failures there.
    assert "failed to validate" in result.stdout + result.stderr, result.stderr[-3000:]
    assert host.file("/etc/ssh/sshd_config").sha256sum == before
    assert host.service("ssh").is_running


# --- updates ---------------------------------------------------------------------------
def apt_config(host, key: str) -> list[str]:
    out = host.run(f"apt-config dump {key}").stdout
    return [line.split(" ", 1)[1].rstrip(";").strip('"') for line in out.splitlines()
            if line.startswith(f"{key}:: ")]


def test_unattended_upgrades_take_the_security_pocket_only(host):
    assert host.package("unattended-upgrades").is_installed
    assert apt_config(host, "Unattended-Upgrade::Origins-Pattern") == [
        "origin=Debian,codename=${distro_codename}-security,label=Debian-Security"]
    assert apt_config(host, "Unattended-Upgrade::Package-Blacklist") == [
        "redis-server", "redis-sentinel", "postgresql-[0-9]+$"]
    dump = host.run("apt-config dump").stdout
    assert 'APT::Periodic::Unattended-Upgrade "1";' in dump
    assert 'APT::Periodic::Update-Package-Lists "1";' in dump
    assert 'Unattended-Upgrade::Automatic-Reboot "false";' in dump
    assert host.service("apt-daily-upgrade.timer").is_enabled
    # The image's apt sources lack the security pocket: the role added it.
    assert host.file("/etc/apt/sources.list.d/clarity-security.sources").contains(
        "^Suites: bookworm-security$")
    # ... from the mirror the host already uses, "-security" appended (no mirror in the role).
    mirror = host.run("grep -m1 -oE '^deb [^ ]+' /etc/apt/sources.list").stdout.split()[1]
    assert host.file("/etc/apt/sources.list.d/clarity-security.sources").contains(
        f"^URIs: {mirror.rstrip('/')}-security$")


def test_unattended_upgrade_reads_that_configuration(host):
    """unattended-upgrade's own dry run: the origins and the held-back packages it applies."""
    result = host.run("unattended-upgrade --dry-run --debug 2>&1")
    assert result.rc == 0, result.stdout[-3000:]
    assert ("Allowed origins are: origin=Debian,codename=bookworm-security,label=Debian-Security"
            in result.stdout), result.stdout[:3000]
    assert "Initial blacklist: redis-server redis-sentinel postgresql-[0-9]+$" in result.stdout


# --- host hardening ----------------------------------------------------------------------
def test_unneeded_kernel_modules_core_dumps_and_idle_shells_are_off(host):
    blocked = host.file("/etc/modprobe.d/90-clarity-blocked.conf")
    assert blocked.contains("^install dccp /bin/true$")
    assert blocked.contains("^install usb-storage /bin/true$")
    assert host.file("/etc/security/limits.d/90-clarity-nocore.conf").contains(r"^\* hard core 0$")
    assert host.run("bash -lc 'echo $TMOUT'").stdout.strip() == "900"
    assert host.file("/etc/login.defs").contains("^PASS_MAX_DAYS\t365$")
    dropin = host.file("/etc/sysctl.d/90-clarity.conf")
    assert dropin.contains("^kernel.kptr_restrict = 2$") and dropin.contains("^fs.suid_dumpable = 0$")
