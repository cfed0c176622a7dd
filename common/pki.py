"""Certificates and keys for a federation, with `cryptography` only: the coordinator's CA, the
SuperLink's TLS certificate, and SuperNode authentication key pairs (OpenSSH EC keys, as
Flower's node authentication reads them).

Private keys are written with mode 0600 and never overwritten; every writer refuses an existing
file, so a key in use cannot be replaced by accident. Fingerprints are SHA-256 hex of the DER
public key (certificates: of the DER certificate).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import re
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ugafl.common.atomic import atomic_write_bytes
from ugafl.common.errors import UgaflError

CURVE = ec.SECP384R1()
CA_DAYS, SERVER_DAYS = 3650, 825
# Every SuperLink certificate also names these: the coordinator's proxy (nginx) and its own `flwr`
# commands reach the SuperLink on its loopback (server/fleet_proxy.py).
LOOPBACK_NAMES = ("localhost", "127.0.0.1")


class PkiError(UgaflError):
    """A key or certificate could not be made or read."""


_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def is_host(name: str) -> bool:
    """Whether `name` is an IP address or a host name (RFC 1123: dot-separated labels of 1-63
    letters, digits and inner hyphens, 253 characters at most; no wildcard)."""
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    return 0 < len(name) <= 253 and all(_LABEL.match(label) for label in name.split("."))


def is_node_name(name: str) -> bool:
    """Whether `name` may name a hospital's key files: 1-64 letters, digits, '.', '_' or '-',
    starting with a letter or digit (so never a path, '..' or an option)."""
    return bool(_NODE_NAME.match(name)) and ".." not in name and "\n" not in name


def _refuse_existing(*paths: Path) -> None:
    for path in paths:
        if path.exists():
            raise PkiError(f"{path}: already exists; refusing to overwrite")


def write_private(path: Path, data: bytes) -> None:
    """A private key file, created with mode 0600 (never world- or group-readable, not even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ugafl federation"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def fingerprint_cert(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def create_ca(cert_path: str | Path, key_path: str | Path, name: str = "ugafl coordinator CA") -> str:
    """A self-signed CA; returns its certificate's fingerprint."""
    cert_path, key_path = Path(cert_path), Path(key_path)
    _refuse_existing(cert_path, key_path)
    key = ec.generate_private_key(CURVE)
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA384()))
    write_private(key_path, _pem_key(key))
    atomic_write_bytes(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return fingerprint_cert(cert)


def load_ca(cert_path: str | Path, key_path: str | Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
        key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
    except FileNotFoundError as error:
        raise PkiError(f"{error.filename}: not found") from None
    except ValueError as error:
        raise PkiError(f"{cert_path} / {key_path}: not a PEM certificate and key ({error})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{key_path}: not an EC private key")
    return cert, key


def create_server_cert(cert_path: str | Path, key_path: str | Path, ca_cert: str | Path, ca_key: str | Path,
                       names: Sequence[str]) -> str:
    """The SuperLink's TLS certificate for `names` (DNS names and/or IP addresses) and the
    LOOPBACK_NAMES (where the coordinator's proxy and commands reach it), signed by the CA."""
    cert_path, key_path = Path(cert_path), Path(key_path)
    if not names:
        raise PkiError("a server certificate needs at least one DNS name or IP address")
    names = with_loopback(names)
    _refuse_existing(cert_path, key_path)
    ca, ca_private = load_ca(ca_cert, ca_key)
    alt: list[x509.GeneralName] = []
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    key = ec.generate_private_key(CURVE)
    now = dt.datetime.now(dt.timezone.utc)
    bad = [n for n in names if not is_host(n)]
    if bad:
        raise PkiError(f"{', '.join(map(repr, bad))}: not a host name or IP address")
    common = names[0] if len(names[0]) <= 64 else "ugafl SuperLink"  # a CN holds 64 characters; the SAN holds every name
    cert = (x509.CertificateBuilder().subject_name(_name(common)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_private, hashes.SHA384()))
    write_private(key_path, _pem_key(key))
    atomic_write_bytes(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return fingerprint_cert(cert)


def create_node_keys(private_path: str | Path, public_path: str | Path) -> str:
    """A SuperNode authentication key pair: OpenSSH-format EC private and public keys. A hospital
    makes its own and sends only the public key. Returns the public key's fingerprint."""
    private_path, public_path = Path(private_path), Path(public_path)
    _refuse_existing(private_path, public_path)
    key = ec.generate_private_key(CURVE)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    write_private(private_path, private)
    atomic_write_bytes(public_path, public + b"\n")
    return node_fingerprint(public_path)


def node_fingerprint(public_path: str | Path) -> str:
    """SHA-256 hex of a node's OpenSSH public key (its DER SubjectPublicKeyInfo)."""
    path = Path(public_path)
    try:
        key = serialization.load_ssh_public_key(path.read_bytes().strip())
    except FileNotFoundError:
        raise PkiError(f"{path}: not found") from None
    except (ValueError, TypeError) as error:
        raise PkiError(f"{path}: not an OpenSSH public key ({error})") from None
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


EXPIRY_WARNING_DAYS = 30


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise PkiError(f"{path}: not found") from None
    except ValueError as error:
        raise PkiError(f"{path}: not a PEM certificate ({error})") from None


def _dates(cert: x509.Certificate, path: Path, now: dt.datetime) -> str:
    """'' or why `cert` is not valid at `now`."""
    if now < cert.not_valid_before_utc:
        return f"{path}: not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC (is this machine's clock right?)"
    if now > cert.not_valid_after_utc:
        return f"{path}: expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; make a new one with `ugafl pki renew`"
    return ""


def with_loopback(names: Sequence[str]) -> list[str]:
    """`names`, then those of LOOPBACK_NAMES it lacks."""
    return [*names, *(n for n in LOOPBACK_NAMES if n not in names)]


def missing_loopback_names(cert_path: str | Path) -> list[str]:
    """The LOOPBACK_NAMES the certificate at `cert_path` is not valid for."""
    cert = _load_cert(Path(cert_path))
    return [n for n in LOOPBACK_NAMES if not _names_host(cert, n)]


def names_of(cert: x509.Certificate) -> list[str]:
    """The DNS names and IP addresses a certificate is valid for (its subject alternative names)."""
    try:
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(name.value) for name in alt if isinstance(name, (x509.DNSName, x509.IPAddress))]  # in its order


def _names_host(cert: x509.Certificate, host: str) -> bool:
    try:
        wanted = ipaddress.ip_address(host)
        return any(_same_ip(name, wanted) for name in names_of(cert))
    except ValueError:
        return host.lower().rstrip(".") in {n.lower().rstrip(".") for n in names_of(cert)}


def _same_ip(name: str, wanted: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    try:
        return ipaddress.ip_address(name) == wanted
    except ValueError:
        return False


def check_server_pki(ca_path: str | Path, cert_path: str | Path, key_path: str | Path, host: str,
                     now: dt.datetime | None = None) -> list[str]:
    """Check the SuperLink's TLS files before anything starts: the certificate is signed by the CA,
    both are valid now, it names `host` (how the coordinator's own commands reach it), and the
    key is its key. PkiError naming the file on the first problem; warnings (a certificate that
    expires within EXPIRY_WARNING_DAYS) otherwise."""
    ca_path, cert_path, key_path = Path(ca_path), Path(cert_path), Path(key_path)
    now = now or dt.datetime.now(dt.timezone.utc)
    ca, cert = _load_cert(ca_path), _load_cert(cert_path)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise PkiError(f"{cert_path}: not signed by the CA {ca_path} (issued by {cert.issuer.rfc4514_string()!r})") from None
    for problem in (_dates(ca, ca_path, now), _dates(cert, cert_path, now)):
        if problem:
            raise PkiError(problem)
    if not _names_host(cert, host):
        raise PkiError(f"{cert_path}: not valid for {host} ([coordinator] address); it names "
                       f"{', '.join(names_of(cert)) or 'nothing'}")
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except FileNotFoundError:
        raise PkiError(f"{key_path}: not found") from None
    except (ValueError, TypeError) as error:
        raise PkiError(f"{key_path}: not a PEM private key without a password ({error})") from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
        raise PkiError(f"{key_path}: does not match {cert_path.name} (a key from another certificate)")
    warnings = []
    for path, c in ((ca_path, ca), (cert_path, cert)):
        left = c.not_valid_after_utc - now
        if left < dt.timedelta(days=EXPIRY_WARNING_DAYS):
            warnings.append(f"{path.name} expires in {left.days} days (on {c.not_valid_after_utc:%Y-%m-%d} UTC)"
                            + ("; renew it with `ugafl pki renew`" if path == cert_path else
                               "; a new CA means new certificates for every party"))
    return warnings
