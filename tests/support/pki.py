"""Throwaway PKI for TLS tests: a server CA and a server certificate for
127.0.0.1, a client CA and a client certificate, and the server's
SSLContext (client certificates optional, so that a client without one
still reaches the login handler)."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def write(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(0o600)
    return str(path)


@dataclass
class Pki:
    server_ca: Path
    client_ca_pem: str
    client_cert: Path
    client_key: Path
    server: ssl.SSLContext


def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool,
    ip: str | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    issuer_name, issuer_key = issuer if issuer is not None else (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name(subject))
        .issuer_name(name(issuer_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
    if ip is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def make_pki(top: Path) -> Pki:
    keys = {name: ec.generate_private_key(ec.SECP256R1()) for name in ("sca", "srv", "cca", "cli")}
    server_ca = cert("test server CA", keys["sca"], None, ca=True)
    server = cert("127.0.0.1", keys["srv"], ("test server CA", keys["sca"]), ca=False, ip="127.0.0.1")
    client_ca = cert("test client CA", keys["cca"], None, ca=True)
    client = cert("nomad-client", keys["cli"], ("test client CA", keys["cca"]), ca=False)
    paths = {
        "server_ca": pem(server_ca),
        "server": pem(server) + pem(server_ca),
        "server_key": key_pem(keys["srv"]),
        "client_ca": pem(client_ca),
        "client": pem(client),
        "client_key": key_pem(keys["cli"]),
    }
    for name, text in paths.items():
        write(top / f"{name}.pem", text)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(top / "server.pem", top / "server_key.pem")
    context.load_verify_locations(top / "client_ca.pem")
    context.verify_mode = ssl.CERT_OPTIONAL  # clients without a certificate reach the handler
    return Pki(
        server_ca=top / "server_ca.pem",
        client_ca_pem=paths["client_ca"],
        client_cert=top / "client.pem",
        client_key=top / "client_key.pem",
        server=context,
    )
