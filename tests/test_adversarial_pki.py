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


@pytest.mark.parametrize("name", ["../../x", "../x", "a/b", "/tmp/x", ".", "..", "", "-rf", "x" * 65, "umcu\n.pub"])
def test_a_node_name_cannot_escape_its_folder_or_be_odd(tmp_path: Path, name: str) -> None:
    out = tmp_path / "a" / "b" / "keys"
    done = ugafl("node-keys", "--dir", out, "--name", name)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith("error: --name") and "letters, digits" in done.stderr and "Traceback" not in done.stderr
    assert files(tmp_path) == []


@pytest.mark.parametrize("names", ["fl example.org", "fl_example.org", "-fl.example.org", "fl..example.org",
                                   "../etc", "*.example.org", "a" * 64 + ".org", "fl.example.org,not a host",
                                   "x" * 250 + ".example.org"])
def test_superlink_names_must_be_host_names_or_addresses(tmp_path: Path, names: str) -> None:
    done = ugafl("init-coordinator", "--dir", tmp_path / "c", "--names", names)
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
    assert alt.get_values_for_type(x509.DNSName) == [long_name, "FL.Example.org"]
    assert [str(a) for a in alt.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [
        "ca.key", "ca.pem", "model-signing.key", "model-signing.pub", "superlink.key", "superlink.pem"]
