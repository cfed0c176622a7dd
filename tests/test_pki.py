"""Federation PKI: a CA, a TLS server certificate that verifies against it for the names given,
and SuperNode key pairs in OpenSSH format; private keys 0600; nothing is ever overwritten."""

from __future__ import annotations

import hashlib
import ipaddress
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ugafl.common.pki import PkiError, create_ca, create_node_keys, create_server_cert, node_fingerprint


def test_ca_and_server_certificate_verify_with_ssl(tmp_path: Path) -> None:
    create_ca(tmp_path / "ca.pem", tmp_path / "ca.key")
    fp = create_server_cert(tmp_path / "server.pem", tmp_path / "server.key", tmp_path / "ca.pem", tmp_path / "ca.key",
                            ["localhost", "127.0.0.1", "::1"])
    for key in ("ca.key", "server.key"):
        assert stat.S_IMODE((tmp_path / key).stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate((tmp_path / "server.pem").read_bytes())
    # The fingerprint returned is the SHA-256 of the certificate as written (DER), in hex.
    assert fp == hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert alt.get_values_for_type(x509.DNSName) == ["localhost"]
    assert alt.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    # Python's own TLS stack accepts the pair and trusts the certificate through the CA.
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "server.pem", tmp_path / "server.key")
    client = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    assert client.get_ca_certs()[0]["subject"][-1][0][1] == "ugafl coordinator CA"


def test_node_keys_are_openssh_and_nothing_is_overwritten(tmp_path: Path) -> None:
    fp = create_node_keys(tmp_path / "site.key", tmp_path / "site.pub")
    assert (tmp_path / "site.pub").read_text().startswith("ecdsa-sha2-nistp384 ")
    assert (tmp_path / "site.key").read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert stat.S_IMODE((tmp_path / "site.key").stat().st_mode) == 0o600
    assert node_fingerprint(tmp_path / "site.pub") == fp
    before = (tmp_path / "site.key").read_bytes()
    with pytest.raises(PkiError, match="site.key: already exists; refusing to overwrite"):
        create_node_keys(tmp_path / "site.key", tmp_path / "other.pub")
    assert (tmp_path / "site.key").read_bytes() == before and not (tmp_path / "other.pub").exists()
    create_ca(tmp_path / "ca.pem", tmp_path / "ca.key")
    with pytest.raises(PkiError, match="ca.pem: already exists"):
        create_ca(tmp_path / "ca.pem", tmp_path / "ca2.key")
    (tmp_path / "junk.pub").write_text("hello")
    with pytest.raises(PkiError, match="junk.pub: not an OpenSSH public key"):
        node_fingerprint(tmp_path / "junk.pub")
    with pytest.raises(PkiError, match="at least one DNS name"):
        create_server_cert(tmp_path / "s.pem", tmp_path / "s.key", tmp_path / "ca.pem", tmp_path / "ca.key", [])
