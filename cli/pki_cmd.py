"""`ugafl pki`: the federation's certificates and keys (a thin wrapper over common/pki.py and
common/signing.py). Private keys are written 0600 and never overwritten."""

from __future__ import annotations

from pathlib import Path

import click

DIR = click.option("--dir", "out_dir", type=click.Path(path_type=Path), required=True, help="Folder to write into.")


@click.group("pki")
def pki() -> None:
    """Certificates and keys: the coordinator's CA, TLS certificate and model-signing key; hospitals' node keys."""


@pki.command("init-coordinator")
@DIR
@click.option("--names", required=True,
              help="Comma-separated DNS names and IP addresses the SuperLink is reached at, e.g. fl.example.org,127.0.0.1.")
def init_coordinator(out_dir: Path, names: str) -> None:
    """Create the CA, the SuperLink's TLS certificate and the model-signing key pair in DIR."""
    import shutil
    import tempfile

    from ugafl.common.errors import UgaflError
    from ugafl.common.pki import create_ca, create_server_cert, is_host, with_loopback
    from ugafl.common.signing import generate_signing_key

    from ugafl.cli.checks import folder_to_write

    folder_to_write(out_dir, "--dir")
    hosts = [n.strip() for n in names.split(",") if n.strip()]
    files = ["ca.pem", "ca.key", "superlink.pem", "superlink.key", "model-signing.key", "model-signing.pub"]
    existing = [f for f in files if (out_dir / f).exists()]
    if existing:  # checked first, so a refusal leaves no half-made set behind
        raise UgaflError(f"{out_dir}: {', '.join(existing)} already exist(s); refusing to overwrite keys")
    if not hosts:
        raise UgaflError("--names: give at least one DNS name or IP address")
    bad = [h for h in hosts if not is_host(h)]
    if bad:
        raise UgaflError(f"--names: {', '.join(map(repr, bad))}: not a host name or IP address")
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".ugafl-pki-", dir=out_dir))  # all or nothing: made here, then moved
    try:
        ca = create_ca(staging / "ca.pem", staging / "ca.key")
        server = create_server_cert(staging / "superlink.pem", staging / "superlink.key", staging / "ca.pem",
                                    staging / "ca.key", hosts)
        signing = generate_signing_key(staging / "model-signing.key", staging / "model-signing.pub")
        for name in files:
            (staging / name).rename(out_dir / name)
    except BaseException:
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    click.echo(f"CA certificate       {out_dir / 'ca.pem'}  sha256 {ca}")
    click.echo(f"SuperLink TLS        {out_dir / 'superlink.pem'}  sha256 {server}  for {', '.join(with_loopback(hosts))}")
    click.echo(f"model-signing key    {out_dir / 'model-signing.pub'}  {signing}")
    click.echo("Give hospitals ca.pem and model-signing.pub; keep every .key file on this machine.")


@pki.command("renew")
@DIR
@click.option("--names", default=None, help="Comma-separated DNS names and IP addresses [default: those of the "
              "current certificate].")
def renew(out_dir: Path, names: str | None) -> None:
    """A new SuperLink TLS certificate and key from the same CA in DIR (hospitals trust the CA, so
    nothing changes for them); the old pair is kept as superlink.pem.old-DATE. Restart the
    coordinator (`ugafl server start`) to serve it."""
    import datetime as dt
    import shutil
    import tempfile

    from cryptography import x509

    from ugafl.common.errors import UgaflError
    from ugafl.common.pki import create_server_cert, is_host, names_of, with_loopback

    cert_path, key_path = out_dir / "superlink.pem", out_dir / "superlink.key"
    for path in (out_dir / "ca.pem", out_dir / "ca.key", cert_path, key_path):
        if not path.is_file():
            raise UgaflError(f"{path}: not found (made by `ugafl pki init-coordinator --dir {out_dir}`)")
    try:
        current = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except ValueError as error:
        raise UgaflError(f"{cert_path}: not a PEM certificate ({error}); give --names") from None
    hosts = [n.strip() for n in names.split(",") if n.strip()] if names is not None else names_of(current)
    bad = [h for h in hosts if not is_host(h)]
    if not hosts or bad:
        raise UgaflError(f"--names: {', '.join(map(repr, bad)) or 'nothing given'}: not a host name or IP address")
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    backups = [out_dir / f"{p.name}.old-{stamp}" for p in (cert_path, key_path)]
    if any(b.exists() for b in backups):
        raise UgaflError(f"{backups[0]}: already exists; try again in a second")
    staging = Path(tempfile.mkdtemp(prefix=".ugafl-pki-", dir=out_dir))
    try:
        fp = create_server_cert(staging / "superlink.pem", staging / "superlink.key", out_dir / "ca.pem",
                                out_dir / "ca.key", hosts)
        shutil.copy2(cert_path, backups[0])
        shutil.copy2(key_path, backups[1])
        (staging / "superlink.key").rename(key_path)
        (staging / "superlink.pem").rename(cert_path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    click.echo(f"SuperLink TLS        {cert_path}  sha256 {fp}  for {', '.join(with_loopback(hosts))}")
    click.echo(f"the old pair is kept as {backups[0].name} and {backups[1].name}; restart the coordinator to serve "
               "the new one (hospitals need nothing: they trust the same CA)")


@pki.command("node-keys")
@DIR
@click.option("--name", required=True, help="The hospital's name: files NAME.key and NAME.pub.")
def node_keys(out_dir: Path, name: str) -> None:
    """Create a hospital's SuperNode key pair; send only NAME.pub to the coordinator."""
    from ugafl.cli.checks import folder_to_write
    from ugafl.common.errors import UgaflError
    from ugafl.common.pki import create_node_keys, is_node_name

    folder_to_write(out_dir, "--dir")
    if not is_node_name(name):
        raise UgaflError(f"--name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or "
                         "digit (it names the files NAME.key and NAME.pub in --dir)")
    fp = create_node_keys(out_dir / f"{name}.key", out_dir / f"{name}.pub")
    click.echo(f"SuperNode key pair   {out_dir / (name + '.pub')}  sha256 {fp}")
    click.echo(f"Send {name}.pub to the coordinator; {name}.key stays here (mode 0600).")


@pki.command("fingerprint")
@click.argument("path", type=click.Path(path_type=Path))
def fingerprint_cmd(path: Path) -> None:
    """Fingerprint of a certificate, a SuperNode public key or a model-signing public key."""
    from cryptography import x509

    from ugafl.common.errors import UgaflError
    from ugafl.common.pki import fingerprint_cert, node_fingerprint
    from ugafl.common.signing import fingerprint, load_public_key

    if path.is_dir():
        raise UgaflError(f"{path}: is a folder; give a certificate or public key file")
    if not path.is_file():
        raise UgaflError(f"{path}: not found")
    data = path.read_bytes()
    if b"BEGIN CERTIFICATE" in data:
        try:
            cert = x509.load_pem_x509_certificate(data)
        except ValueError as error:
            raise UgaflError(f"{path}: not a readable PEM certificate ({error})") from None
        click.echo(f"certificate sha256 {fingerprint_cert(cert)}")
    elif data.startswith(b"ecdsa-") or data.startswith(b"ssh-"):
        click.echo(f"SuperNode key sha256 {node_fingerprint(path)}")
    elif b"BEGIN PUBLIC KEY" in data:
        click.echo(f"model-signing key {fingerprint(load_public_key(path))}")
    else:
        raise UgaflError(f"{path}: not a PEM certificate, an OpenSSH public key or a PEM public key")
