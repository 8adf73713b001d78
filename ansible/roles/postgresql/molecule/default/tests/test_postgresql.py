"""The postgresql role: Debian's PostgreSQL 15 on the private address, the app's database and
owner, password logins from the app's hosts only."""

import re
import shlex

from conftest import MAX_EXPOSURE, unit_exposure

PASSWORD = "molecule-postgresql-password-0123456789abcdef"


def private_address(host):
    return host.run("ip -4 -o route get 1.1.1.1").stdout.split("src ")[1].split()[0]


def psql_as_app(host, address, sql, password=PASSWORD):
    return host.run(f"PGPASSWORD={shlex.quote(password)} psql -h {address} -U clarity "
                    f"-d clarity -AtX -c {shlex.quote(sql)}")


def test_the_cluster_runs_and_starts_at_boot(host):
    unit = host.service("postgresql@15-main")
    assert unit.is_running
    assert unit.is_enabled or host.service("postgresql").is_enabled


def test_it_listens_on_localhost_and_the_private_address_only(host):
    address = private_address(host)
    assert host.socket(f"tcp://{address}:5432").is_listening
    assert host.socket("tcp://127.0.0.1:5432").is_listening
    assert not host.socket("tcp://0.0.0.0:5432").is_listening


def test_the_app_user_owns_the_app_database_and_can_create_tables(host):
    address = private_address(host)
    result = psql_as_app(host, address,
                         "CREATE TABLE IF NOT EXISTS probe (id int); DROP TABLE probe; "
                         "SELECT current_user, current_database()")
    assert result.rc == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "clarity|clarity"


def test_a_wrong_password_is_refused(host):
    result = psql_as_app(host, private_address(host), "SELECT 1", password="wrong-password-123")
    assert result.rc != 0
    assert "password authentication failed" in result.stderr


def test_the_app_hosts_reach_only_the_app_database(host):
    address = private_address(host)
    hba = host.file("/etc/postgresql/15/main/pg_hba.conf").content_string
    # Python's re, not File.contains: that is grep's basic regex, where + is a literal.
    assert re.search(rf"^host +clarity +clarity +{re.escape(address)}/32 +scram-sha-256$",
                     hba, re.MULTILINE), hba
    other = host.run(f"PGPASSWORD={PASSWORD} psql -h {address} -U clarity -d postgres -c 'SELECT 1'")
    assert other.rc != 0
    assert "no pg_hba.conf entry" in other.stderr


def test_the_cluster_waits_for_its_address_and_never_stays_failed(host):
    waiter = f"clarity-address-online@{private_address(host)}.service"
    show = host.run("systemctl show -p After,StartLimitIntervalUSec,Restart postgresql@15-main").stdout
    assert waiter in show
    assert "StartLimitIntervalUSec=0" in show
    assert "Restart=always" in show


def test_the_cluster_unit_is_hardened_and_runs_as_postgres(host):
    unit = "postgresql@15-main.service"
    assert host.file(f"/etc/systemd/system/{unit}.d/60-hardening.conf").exists
    assert unit_exposure(host, unit) <= MAX_EXPOSURE
    assert host.run(f"systemctl show -P User {unit}").stdout.strip() == "postgres"
    # Restarts and reloads under the sandbox, and serves the app afterwards.
    assert host.run(f"systemctl restart {unit}").rc == 0
    assert host.run(f"systemctl reload {unit}").rc == 0
    assert host.service("postgresql@15-main").is_running
    assert psql_as_app(host, "127.0.0.1", "SELECT 1").stdout.strip() == "1"
