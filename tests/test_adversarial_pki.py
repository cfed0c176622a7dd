"""Hostile names given to `ugafl pki` (issue 16): a node name cannot write outside --dir, the
SuperLink's names must be host names or IP addresses, a long but valid host name works, and a
refusal writes nothing (so a corrected retry is not refused for files a failed run left)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

UGAFL = Path(sys.executable).with_name("ugafl")


def ugafl(*args) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(UGAFL), "pki", *map(str, args)], capture_output=True, text=True, timeout=120)


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


NODE_NAMES = ["../../x", "../x", "a/b", "/tmp/x", ".", "..", "", "-rf", "x" * 65, "umcu\n.pub", "umcu\n"]
HOST_NAMES = ["fl example.org", "fl_example.org", "-fl.example.org", "fl..example.org", "../etc", "*.example.org",
              "a" * 64 + ".org", "not a host", "x" * 250 + ".example.org", ""]


def test_node_and_host_names_are_checked() -> None:
    from ugafl.common.pki import is_host, is_node_name

    assert [n for n in NODE_NAMES if is_node_name(n)] == []
    assert all(is_node_name(n) for n in ("umcu", "hospital-rst", "RUMC_2", "a.b", "x" * 64))
    assert [n for n in HOST_NAMES if is_host(n)] == []
    assert all(is_host(n) for n in ("fl.example.org", "localhost", "127.0.0.1", "::1", "FL.Example.org", "a" * 63))


def test_a_node_name_cannot_escape_its_folder(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b" / "keys"
    done = ugafl("node-keys", "--dir", out, "--name", "../../x")
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith("error: --name") and "letters, digits" in done.stderr and "Traceback" not in done.stderr
    assert files(tmp_path) == []


def test_superlink_names_must_be_host_names_or_addresses(tmp_path: Path) -> None:
    done = ugafl("init-coordinator", "--dir", tmp_path / "c", "--names", "fl.example.org,not a host")
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith("error: --names") and "not a host name or IP address" in done.stderr
    assert files(tmp_path) == []


def test_a_long_valid_host_name_and_addresses_work_and_a_retry_after_a_refusal_is_not_refused(tmp_path: Path) -> None:
    long_name = ".".join(["a" * 60, "b" * 60, "example", "org"])  # 133 characters: more than a CN may hold
    assert ugafl("init-coordinator", "--dir", tmp_path / "c", "--names", f"{long_name},not a host").returncode == 2
    done = ugafl("init-coordinator", "--dir", tmp_path / "c", "--names", f"{long_name},127.0.0.1,::1,FL.Example.org")
    assert done.returncode == 0, done.stderr
    cert = x509.load_pem_x509_certificate((tmp_path / "c" / "superlink.pem").read_bytes())
    alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert alt.get_values_for_type(x509.DNSName) == [long_name, "FL.Example.org", "localhost"]  # loopback names always added
    assert [str(a) for a in alt.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [
        "ca.key", "ca.pem", "model-signing.key", "model-signing.pub", "superlink.key", "superlink.pem"]


# ---------------------------------------------------------------- the coordinator's own certificates

def _coordinator(tmp_path: Path, address: str = "127.0.0.1:9092") -> Path:
    """A coordinator config over a fresh `pki init-coordinator` set for 127.0.0.1 and localhost."""
    assert ugafl("init-coordinator", "--dir", tmp_path / "pki", "--names", "127.0.0.1,localhost").returncode == 0
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    path = tmp_path / "coordinator.toml"
    path.write_text(f'[coordinator]\nstate = "state"\npki = "pki"\napp = "app"\naddress = "{address}"\n')
    return path


def _cert(tmp_path: Path, *, days: float = 30, start_days: float = -1, names=("127.0.0.1",), other_ca: bool = False,
          other_key: bool = False) -> None:
    """Replace pki/superlink.pem (and .key) with a certificate made as asked."""
    import datetime as dt
    import ipaddress

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    pki = tmp_path / "pki"
    if other_ca:
        ca_key = ec.generate_private_key(ec.SECP384R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "another CA")])
    else:
        ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None)
        ca_name = x509.load_pem_x509_certificate((pki / "ca.pem").read_bytes()).subject
    key = ec.generate_private_key(ec.SECP384R1())
    now = dt.datetime.now(dt.timezone.utc)
    alt = [x509.IPAddress(ipaddress.ip_address(n)) if n[0].isdigit() else x509.DNSName(n) for n in names]
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "s")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now + dt.timedelta(days=start_days)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False).sign(ca_key, hashes.SHA384()))
    (pki / "superlink.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if not other_key:
        (pki / "superlink.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                              serialization.PrivateFormat.PKCS8,
                                                              serialization.NoEncryption()))


CASES = {
    "another CA": (dict(other_ca=True), "superlink.pem: not signed by the CA .*ca.pem"),
    "expired": (dict(days=-1, start_days=-30), "superlink.pem: expired on "),
    "not yet valid": (dict(start_days=2, days=30), "superlink.pem: not valid before "),
    "name missing": (dict(names=("10.0.0.7", "fl.example.org")),
                     r"superlink.pem: not valid for 127.0.0.1 \(\[coordinator\] address\); it names 10.0.0.7, fl.example.org"),
    "key mismatch": (dict(other_key=True), "superlink.key: does not match superlink.pem"),
    # a certificate made before the proxy: the public name only, not where nginx and `flwr` reach it
    "loopback missing": (dict(names=("127.0.0.1",)),
                         r"superlink.pem: does not name localhost, where the coordinator's proxy and commands reach "
                         r"the SuperLink; `ugafl pki renew --dir .*pki` adds them"),
}


def test_the_coordinator_refuses_its_own_bad_certificate_before_starting_anything(tmp_path: Path) -> None:
    import re

    from ugafl.common.errors import UgaflError
    from ugafl.server.coordinator import CoordinatorConfig, preflight

    config = _coordinator(tmp_path)
    good = {n: (tmp_path / "pki" / n).read_bytes() for n in ("superlink.pem", "superlink.key")}
    assert preflight(CoordinatorConfig.load(config)) == []
    for case, (make, message) in CASES.items():
        _cert(tmp_path, **make)
        with pytest.raises(UgaflError) as refused:
            preflight(CoordinatorConfig.load(config))
        assert re.search(message, str(refused.value)), (case, str(refused.value))
        for name, data in good.items():
            (tmp_path / "pki" / name).write_bytes(data)
    _cert(tmp_path, other_ca=True)  # through the command: one line, exit 2, nothing started or made
    done = subprocess.run([str(UGAFL), "server", "start", "--config", str(config)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "not signed by the CA" in lines[0], done.stderr
    assert not (tmp_path / "state").exists()


def test_a_certificate_about_to_expire_is_a_warning_not_a_refusal(tmp_path: Path) -> None:
    from ugafl.common.pki import check_server_pki

    config = _coordinator(tmp_path)
    _cert(tmp_path, days=10, names=("127.0.0.1", "localhost"))
    warnings = check_server_pki(tmp_path / "pki" / "ca.pem", tmp_path / "pki" / "superlink.pem",
                                tmp_path / "pki" / "superlink.key", "127.0.0.1")
    assert len(warnings) == 1 and "superlink.pem expires in 9 days" in warnings[0] and "ugafl pki renew" in warnings[0]
    assert config.is_file()
    assert check_server_pki(tmp_path / "pki" / "ca.pem", tmp_path / "pki" / "superlink.pem",
                            tmp_path / "pki" / "superlink.key", "LOCALHOST") == warnings  # DNS names: any case


def test_renewing_a_certificate_made_before_the_proxy_adds_the_loopback_names(tmp_path: Path) -> None:
    from ugafl.common.pki import check_server_pki, missing_loopback_names

    _coordinator(tmp_path)
    pki = tmp_path / "pki"
    _cert(tmp_path, names=("fl.example.org",))
    assert missing_loopback_names(pki / "superlink.pem") == ["localhost", "127.0.0.1"]
    assert ugafl("renew", "--dir", pki).returncode == 0
    assert missing_loopback_names(pki / "superlink.pem") == []
    assert check_server_pki(pki / "ca.pem", pki / "superlink.pem", pki / "superlink.key", "fl.example.org") == []


def test_renew_makes_a_new_server_certificate_from_the_same_ca(tmp_path: Path) -> None:
    from ugafl.common.pki import check_server_pki

    _coordinator(tmp_path)
    _cert(tmp_path, days=10, names=("127.0.0.1", "localhost"))
    pki = tmp_path / "pki"
    old = (pki / "superlink.pem").read_bytes()
    ca = (pki / "ca.pem").read_bytes()
    done = ugafl("renew", "--dir", pki)
    assert done.returncode == 0, done.stderr
    assert (pki / "superlink.pem").read_bytes() != old and (pki / "ca.pem").read_bytes() == ca
    assert [p.read_bytes() for p in pki.glob("superlink.pem.old-*")] == [old]
    assert len(list(pki.glob("superlink.key.old-*"))) == 1
    assert check_server_pki(pki / "ca.pem", pki / "superlink.pem", pki / "superlink.key", "localhost") == []
    assert ugafl("renew", "--dir", pki, "--names", "not a host").returncode == 2
    assert ugafl("renew", "--dir", tmp_path / "nothing").returncode == 2
