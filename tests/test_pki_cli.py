"""`ugafl pki` through the console script: a coordinator's set, a hospital's own key pair,
fingerprints that match, 0600 private keys, and refusals that change nothing."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

UGAFL = Path(sys.executable).with_name("ugafl")


def ugafl(*args) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(UGAFL), "pki", *map(str, args)], capture_output=True, text=True, timeout=120)


def test_coordinator_and_hospital_keys(tmp_path: Path) -> None:
    coord, hospital = tmp_path / "coordinator", tmp_path / "hospital"
    made = ugafl("init-coordinator", "--dir", coord, "--names", "fl.example.org,127.0.0.1")
    assert made.returncode == 0, made.stderr
    for key in ("ca.key", "superlink.key", "model-signing.key"):
        assert stat.S_IMODE((coord / key).stat().st_mode) == 0o600
    node = ugafl("node-keys", "--dir", hospital, "--name", "umcu")
    assert node.returncode == 0 and "Send umcu.pub to the coordinator" in node.stdout
    # The fingerprints printed at creation are the ones `fingerprint` shows later.
    for path, printed in ((coord / "ca.pem", made.stdout), (coord / "model-signing.pub", made.stdout),
                          (hospital / "umcu.pub", node.stdout)):
        shown = ugafl("fingerprint", path)
        assert shown.returncode == 0 and shown.stdout.split()[-1] in printed, (path, shown.stdout)

    before = {p.name: p.read_bytes() for p in coord.iterdir()}
    again = ugafl("init-coordinator", "--dir", coord, "--names", "x")
    assert again.returncode == 2 and again.stderr.startswith("error: ") and "refusing to overwrite" in again.stderr
    assert {p.name: p.read_bytes() for p in coord.iterdir()} == before
    (coord / "ca.pem").rename(tmp_path / "moved.pem")  # one file missing: still refused, nothing made
    assert ugafl("init-coordinator", "--dir", coord, "--names", "x").returncode == 2
    assert not (coord / "ca.pem").exists()
    bad = ugafl("fingerprint", coord / "ca.key")
    assert bad.returncode == 2 and "not a PEM certificate, an OpenSSH public key or a PEM public key" in bad.stderr
