"""Throwaway certificates for TLS between Clarity and Redis in tests (and anything else run
from a checkout): a certificate authority and the certificates it signs, as PEM files.

What it issues has the shape of the deployed files (/etc/clarity/tls/ca.crt, host.crt,
host.key): one certificate per host, good for both ends of a connection (a Redis server,
and the client Redis' `tls-auth-clients yes` asks for), naming the host's DNS names and IP
addresses, since Sentinel hands out the primary's IP.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOOPBACK = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class TlsFiles:
    """A CA bundle and a certificate with its key: what both a Redis server and a client
    are configured with."""

    ca: Path
    cert: Path
    key: Path

    def redis_args(self, auth_clients: str = "yes") -> tuple[str, ...]:
        """redis-server's (and a sentinel's) TLS settings. Replication and a sentinel's
        links to the servers and the other sentinels go over TLS too: any node can become
        a replica after a failover."""
        return ("--tls-cert-file", str(self.cert), "--tls-key-file", str(self.key),
                "--tls-ca-cert-file", str(self.ca), "--tls-auth-clients", auth_clients,
                "--tls-replication", "yes")

    def client_kwargs(self) -> dict:
        """redis-py's arguments for a client with this certificate."""
        return {"ssl": True, "ssl_ca_certs": str(self.ca), "ssl_certfile": str(self.cert),
                "ssl_keyfile": str(self.key)}

    @property
    def env(self) -> dict[str, str]:
        """Clarity's settings for a client with this certificate."""
        return {"REDIS_TLS": "true", "REDIS_TLS_CA_FILE": str(self.ca),
                "REDIS_TLS_CERT_FILE": str(self.cert), "REDIS_TLS_KEY_FILE": str(self.key)}


class CertificateAuthority:
    """A CA whose key and certificate live in `directory` (ca.key, ca.crt)."""

    def __init__(self, directory: Path, name: str = "Clarity test CA"):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = _name(name)
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        self.certificate = (
            _builder(self.name, self.name, self.key.public_key(), now - _DAY, now + 3650 * _DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(self.key, hashes.SHA256()))
        self.cert_path = _write(self.dir / "ca.crt", self.certificate)
        _write_key(self.dir / "ca.key", self.key)

    def issue(self, name: str, hosts: tuple[str, ...] = LOOPBACK, days: float = 365,
              expired: bool = False) -> TlsFiles:
        """<name>.crt and <name>.key, valid for `days` from now (or expired since
        yesterday), naming `hosts` (DNS names and IP addresses) as subject alternative
        names."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        start, end = (now - 30 * _DAY, now - _DAY) if expired else (
            now - _DAY, now + datetime.timedelta(days=days))
        names = [x509.IPAddress(ipaddress.ip_address(h)) if _is_ip(h) else x509.DNSName(h)
                 for h in hosts]
        certificate = (
            _builder(_name(name), self.name, key.public_key(), start, end)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(self.key, hashes.SHA256()))
        return TlsFiles(self.cert_path, _write(self.dir / f"{name}.crt", certificate),
                        _write_key(self.dir / f"{name}.key", key))


_DAY = datetime.timedelta(days=1)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _builder(subject, issuer, public_key, start, end) -> x509.CertificateBuilder:
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end))


def _write(path: Path, certificate: x509.Certificate) -> Path:
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path


def _write_key(path: Path, key) -> Path:
    path.touch(mode=0o600)
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path
