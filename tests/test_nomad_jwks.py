"""Workload identity JWTs verified against Nomad's JWKS by our own RS256
code, with tokens and JWKs made by an independent implementation (PyJWT
with cryptography), so that both sides do not share one mistake."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from jwt.algorithms import OKPAlgorithm, RSAAlgorithm
from support.jwt_issuer import b64url, new_issuer

from nomad_secrets.agent.nomad_jwks import JwksError, TokenRejected, load_jwks, verified_claims

NOW = 1_700_000_000.0
FIX = "save Nomad's https://<nomad>:4646/.well-known/jwks.json there"
BAD_SIGNATURE = "its signature does not verify with its key in the JWKS file"
NOT_RS256 = "it is not signed with RS256, the only algorithm Nomad signs identities with"
NOT_PARTS = "it is not a JWT (three dot-separated parts, at most 16 KiB)"
NOT_BASE64URL = "it is not a JWT: a part is not base64url"
WRONG_SIZE = "its signature is not the size of its key"
BAD_EXPONENT = "has an exponent that is not odd, between 3 and 2^31-1"
UNKNOWN_KID = (
    "its signing key (kid) is not in the JWKS file: after a Nomad key rotation,"
    " save /.well-known/jwks.json again; else the token is from another cluster"
)


@pytest.fixture(scope="module")
def key_a() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def key_b() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    """The JWK as Nomad serves it: PyJWT's encoding of the public key."""
    return {**RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid, "alg": "RS256", "use": "sig"}


def write(tmp_path: Path, document: object) -> str:
    path = tmp_path / "jwks.json"
    path.write_bytes(document if isinstance(document, bytes) else json.dumps(document).encode())
    return str(path)


@pytest.fixture
def keys(tmp_path: Path, key_a: rsa.RSAPrivateKey) -> dict[str, tuple[int, int]]:
    return load_jwks(write(tmp_path, {"keys": [jwk(key_a, "a")]}))


def claims(**changes: object) -> dict[str, object]:
    body: dict[str, object] = {
        "iss": "nomad",
        "aud": "vault.io",
        "iat": int(NOW) - 60,
        "nbf": int(NOW) - 60,
        "exp": int(NOW) + 300,
        "nomad_namespace": "default",
        "nomad_job_id": "web",
        "nomad_task": "app",
    }
    body.update(changes)
    return {name: value for name, value in body.items() if value is not None}


def sign(key: Any, body: dict[str, object], kid: str = "a", alg: str = "RS256") -> str:
    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid})


def rejection(token: str, keys: dict[str, tuple[int, int]], audience: str | None = None) -> str:
    with pytest.raises(TokenRejected) as info:
        verified_claims(token, keys, NOW, audience)
    assert token not in str(info.value)
    return info.value.reason


def test_valid_token_returns_its_claims(key_a: rsa.RSAPrivateKey, keys: dict[str, tuple[int, int]]) -> None:
    assert verified_claims(sign(key_a, claims()), keys, NOW) == claims()


def test_jwks_keys_are_the_public_numbers(key_a: rsa.RSAPrivateKey, keys: dict[str, tuple[int, int]]) -> None:
    numbers = key_a.public_key().public_numbers()
    assert keys == {"a": (numbers.n, 65537)} == {"a": (numbers.n, numbers.e)}


def test_token_signed_by_another_key(key_b: rsa.RSAPrivateKey, keys: dict[str, tuple[int, int]]) -> None:
    assert rejection(sign(key_b, claims()), keys) == BAD_SIGNATURE


def test_unknown_kid(key_a: rsa.RSAPrivateKey, keys: dict[str, tuple[int, int]]) -> None:
    assert rejection(sign(key_a, claims(), kid="b"), keys) == UNKNOWN_KID


def test_no_kid(key_a: rsa.RSAPrivateKey, keys: dict[str, tuple[int, int]]) -> None:
    assert rejection(jwt.encode(claims(), key_a, algorithm="RS256"), keys) == UNKNOWN_KID


def test_tampered_payload_keeps_no_signature(
    key_a: rsa.RSAPrivateKey, keys: dict[str, tuple[int, int]]
) -> None:
    header, _, signature = sign(key_a, claims()).split(".")
    forged = b64url(json.dumps(claims(nomad_job_id="admin")).encode())
    assert rejection(f"{header}.{forged}.{signature}", keys) == BAD_SIGNATURE


def test_tampered_header_keeps_no_signature(
    key_a: rsa.RSAPrivateKey, keys: dict[str, tuple[int, int]]
) -> None:
    _, payload, signature = sign(key_a, claims()).split(".")
    header = b64url(json.dumps({"alg": "RS256", "kid": "a"}).encode())  # no "typ": other bytes
    assert rejection(f"{header}.{payload}.{signature}", keys) == BAD_SIGNATURE


def test_alg_none(keys: dict[str, tuple[int, int]]) -> None:
    token = jwt.encode(claims(), "", algorithm="none", headers={"kid": "a"})
    assert rejection(token, keys) == NOT_RS256
    assert rejection(token + b64url(b"x" * 256), keys) == NOT_RS256  # with a signature-sized tail too


def test_hs256_keyed_with_the_public_key(key_a: rsa.RSAPrivateKey, keys: dict[str, tuple[int, int]]) -> None:
    """The classic confusion: an HMAC whose secret is the public key, which
    a verifier that lets the header choose the algorithm would accept.
    Built by hand: PyJWT itself refuses a PEM as an HMAC secret."""
    pem = key_a.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for secret in (pem, json.dumps(jwk(key_a, "a")).encode()):
        header = b64url(json.dumps({"alg": "HS256", "kid": "a", "typ": "JWT"}).encode())
        payload = b64url(json.dumps(claims()).encode())
        mac = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        assert rejection(f"{header}.{payload}.{b64url(mac)}", keys) == NOT_RS256


def test_es256(keys: dict[str, tuple[int, int]]) -> None:
    token = sign(ec.generate_private_key(ec.SECP256R1()), claims(), alg="ES256")
    assert rejection(token, keys) == NOT_RS256


def test_rs512_by_the_right_key(key_a: rsa.RSAPrivateKey, keys: dict[str, tuple[int, int]]) -> None:
    assert rejection(sign(key_a, claims(), alg="RS512"), keys) == NOT_RS256


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"exp": int(NOW) - 31}, "it has expired; Nomad renews identities with a ttl: restart the task"),
        ({"exp": None}, "it has no expiry (exp claim); give the identity block a ttl"),
        ({"exp": "tomorrow"}, "its exp claim is not a NumericDate (seconds since 1970)"),
        ({"exp": True}, "its exp claim is not a NumericDate (seconds since 1970)"),
        ({"nbf": int(NOW) + 31}, "it is not valid yet (nbf claim); check this node's clock"),
        ({"iat": int(NOW) + 31}, "it was issued in the future (iat claim); check this node's clock"),
        ({"nomad_namespace": None}, "it has no nomad_namespace claim: it is not a Nomad workload identity"),
        ({"nomad_job_id": ""}, "it has no nomad_job_id claim: it is not a Nomad workload identity"),
        ({"nomad_job_id": ["web"]}, "it has no nomad_job_id claim: it is not a Nomad workload identity"),
    ],
)
def test_claims_refused(
    key_a: rsa.RSAPrivateKey, keys: dict[str, tuple[int, int]], changes: dict[str, object], reason: str
) -> None:
    assert rejection(sign(key_a, claims(**changes)), keys) == reason


def test_infinite_exp_refused(key_a: rsa.RSAPrivateKey, keys: dict[str, tuple[int, int]]) -> None:
    """1e999 parses as infinity: a token that would never expire."""
    header = b64url(json.dumps({"alg": "RS256", "kid": "a"}).encode())
    payload = b64url(json.dumps(claims()).replace(str(int(NOW) + 300), "1e999").encode())
    assert math.isinf(json.loads(json.dumps(claims()).replace(str(int(NOW) + 300), "1e999"))["exp"])
    signature = key_a.sign(f"{header}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256())
    token = f"{header}.{payload}.{b64url(signature)}"
    assert rejection(token, keys) == "its exp claim is not a NumericDate (seconds since 1970)"


@pytest.mark.parametrize("changes", [{"exp": int(NOW) - 30}, {"nbf": int(NOW) + 30, "iat": int(NOW) + 30}])
def test_clock_skew_within_the_leeway(
    key_a: rsa.RSAPrivateKey, keys: dict[str, tuple[int, int]], changes: dict[str, object]
) -> None:
    assert verified_claims(sign(key_a, claims(**changes)), keys, NOW) == claims(**changes)


@pytest.mark.parametrize("aud", ["vault.io", ["aws", "vault.io"]])
def test_audience_accepted(key_a: rsa.RSAPrivateKey, keys: dict[str, tuple[int, int]], aud: object) -> None:
    assert verified_claims(sign(key_a, claims(aud=aud)), keys, NOW, "vault.io") == claims(aud=aud)


@pytest.mark.parametrize("aud", ["aws", ["aws", "sts"], None, "vault.io.evil"])
def test_wrong_audience(key_a: rsa.RSAPrivateKey, keys: dict[str, tuple[int, int]], aud: object) -> None:
    reason = rejection(sign(key_a, claims(aud=aud)), keys, "vault.io")
    assert reason == "its audience (aud claim) does not include 'vault.io'"


@pytest.mark.parametrize("cut", [-1, 1])
def test_signature_of_the_wrong_length(
    key_a: rsa.RSAPrivateKey, keys: dict[str, tuple[int, int]], cut: int
) -> None:
    """One byte short (a leading zero dropped, as some signers do) or one long."""
    header, payload, signature = sign(key_a, claims()).split(".")
    raw = jwt.utils.base64url_decode(signature)
    changed = raw[:-1] if cut < 0 else b"\x00" + raw
    assert rejection(f"{header}.{payload}.{b64url(changed)}", keys) == WRONG_SIZE


def test_signature_not_below_the_modulus(key_a: rsa.RSAPrivateKey, keys: dict[str, tuple[int, int]]) -> None:
    header, payload, _ = sign(key_a, claims()).split(".")
    signature = b64url(bytes([0xFF]) * 256)
    assert rejection(f"{header}.{payload}.{signature}", keys) == BAD_SIGNATURE


def test_signature_plus_the_modulus(key_a: rsa.RSAPrivateKey, keys: dict[str, tuple[int, int]]) -> None:
    """s + n raised to e is s raised to e, modulo n: the same signature in
    other bytes, unless the verifier refuses a representative >= n."""
    n = key_a.public_key().public_numbers().n
    for jti in range(5000):  # s is below 2^2048 - n for a fair share of messages
        header, payload, signature = sign(key_a, claims(jti=str(jti))).split(".")
        s = int.from_bytes(jwt.utils.base64url_decode(signature), "big")
        if s + n < 1 << 2048:
            break
    else:
        raise AssertionError("no signature small enough to add the modulus to")
    assert verified_claims(f"{header}.{payload}.{signature}", keys, NOW) == claims(jti=str(jti))
    other = b64url((s + n).to_bytes(256, "big"))
    assert rejection(f"{header}.{payload}.{other}", keys) == BAD_SIGNATURE


def test_signature_spelled_two_ways(key_a: rsa.RSAPrivateKey, keys: dict[str, tuple[int, int]]) -> None:
    """256 bytes end in a 2-character group whose last 4 bits are padding:
    a lenient decoder reads the same signature from another spelling."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    token = sign(key_a, claims())
    other = token[:-1] + alphabet[alphabet.index(token[-1]) ^ 1]
    assert jwt.utils.base64url_decode(other.split(".")[2]) == jwt.utils.base64url_decode(token.split(".")[2])
    assert rejection(other, keys) == NOT_BASE64URL


def test_repeated_claim_refused_even_when_signed(
    key_a: rsa.RSAPrivateKey, keys: dict[str, tuple[int, int]]
) -> None:
    """Parsers differ on which of two nomad_job_id claims wins."""
    header = b64url(json.dumps({"alg": "RS256", "kid": "a"}).encode())
    body = json.dumps(claims())[:-1] + ', "nomad_job_id": "admin"}'
    payload = b64url(body.encode())
    signature = key_a.sign(f"{header}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256())
    assert rejection(f"{header}.{payload}.{b64url(signature)}", keys) == "its payload repeats a member name"


def test_bleichenbacher_e3_forgery(tmp_path: Path) -> None:
    """A signature forged without the private key for an e=3 key: its cube
    is 00 01 FF 00 DigestInfo hash, then garbage, which a verifier that
    parses the padding and ignores what follows the hash accepts."""
    key = rsa.generate_private_key(public_exponent=3, key_size=2048)
    keys = load_jwks(write(tmp_path, {"keys": [jwk(key, "a")]}))
    header = b64url(json.dumps({"alg": "RS256", "kid": "a"}).encode())
    payload = b64url(json.dumps(claims()).encode())
    digest = hashlib.sha256(f"{header}.{payload}".encode()).digest()
    prefix = bytes.fromhex("0001ff00") + bytes.fromhex("3031300d060960864801650304020105000420") + digest
    target = int.from_bytes(prefix + b"\xff" * (256 - len(prefix)), "big")
    root = _cube_root(target)
    assert (root**3).to_bytes(256, "big").startswith(prefix)  # the forgery a lax verifier takes
    assert rejection(f"{header}.{payload}.{b64url(root.to_bytes(256, 'big'))}", keys) == BAD_SIGNATURE


def _cube_root(value: int) -> int:
    """The largest integer whose cube is at most ``value`` (Newton's method)."""
    root = 1 << ((value.bit_length() + 2) // 3)
    while True:
        better = (2 * root + value // (root * root)) // 3
        if better >= root:
            return root
        root = better


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("a.b", NOT_PARTS),
        ("e30.e30.YQ.YQ", NOT_PARTS),
        ("e30.e30." + "Y" * (16 * 1024), NOT_PARTS),
        ("e30.e30.a+b", NOT_BASE64URL),  # base64's alphabet, not base64url's
        ("e30.e30.YQ==", NOT_BASE64URL),  # padded
        ("ZW.e30.YQ", NOT_BASE64URL),  # stray low bits
        ("e30.e30.Y", NOT_BASE64URL),  # no such length
        ("e30.e30.\u00e9", NOT_BASE64URL),
    ],
)
def test_not_a_jwt(keys: dict[str, tuple[int, int]], token: str, reason: str) -> None:
    assert rejection(token, keys) == reason


def test_header_not_json(keys: dict[str, tuple[int, int]]) -> None:
    assert rejection(f"{b64url(b'{alg')}.e30.YQ", keys) == "it is not a JWT: its header is not JSON"


def test_header_critical_extension(key_a: rsa.RSAPrivateKey, keys: dict[str, tuple[int, int]]) -> None:
    token = jwt.encode(claims(), key_a, algorithm="RS256", headers={"kid": "a", "crit": ["exp"]})
    assert rejection(token, keys) == "its header lists critical extensions (crit), which Nomad never sets"


def test_key_rotation(tmp_path: Path, key_a: rsa.RSAPrivateKey, key_b: rsa.RSAPrivateKey) -> None:
    keys = load_jwks(write(tmp_path, {"keys": [jwk(key_a, "a"), jwk(key_b, "b")]}))
    assert sorted(keys) == ["a", "b"]
    assert verified_claims(sign(key_a, claims(), kid="a"), keys, NOW) == claims()
    assert verified_claims(sign(key_b, claims(nomad_job_id="api"), kid="b"), keys, NOW) == claims(
        nomad_job_id="api"
    )
    assert rejection(sign(key_b, claims(), kid="a"), keys) == BAD_SIGNATURE  # each kid its own key


def test_the_openbao_tests_issuer(tmp_path: Path) -> None:
    """The token form that the real OpenBao accepts in tests/support/openbao.py."""
    issuer = new_issuer()
    keys = load_jwks(write(tmp_path, issuer.jwks()))
    token = issuer.sign(nomad_namespace="default", nomad_job_id="web")
    assert verified_claims(token, keys, time.time(), "vault.io")["nomad_job_id"] == "web"


# The JWKS file


def jwks_error(path: str) -> str:
    with pytest.raises(JwksError) as info:
        load_jwks(path)
    return str(info.value)


def test_jwks_skips_nomad_16_eddsa_keys(tmp_path: Path, key_a: rsa.RSAPrivateKey) -> None:
    """An upgraded cluster still serves its old root keys' EdDSA keys."""
    okp = {**OKPAlgorithm.to_jwk(ed25519.Ed25519PrivateKey.generate().public_key(), as_dict=True)}
    okp.update(kid="old", alg="EdDSA", use="sig")
    encryption = {**jwk(key_a, "enc"), "use": "enc"}
    keys = load_jwks(write(tmp_path, {"keys": [okp, encryption, jwk(key_a, "a")]}))
    assert keys == {"a": (key_a.public_key().public_numbers().n, 65537)}


def test_jwks_of_eddsa_keys_only(tmp_path: Path) -> None:
    okp = {**OKPAlgorithm.to_jwk(ed25519.Ed25519PrivateKey.generate().public_key(), as_dict=True)}
    path = write(tmp_path, {"keys": [{**okp, "kid": "old", "alg": "EdDSA", "use": "sig"}]})
    assert (
        jwks_error(path) == f"the JWKS file {path} has no RSA RS256 signing key (Nomad 1.7 or newer); {FIX}"
    )


def test_jwks_1024_bit_key(tmp_path: Path) -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    path = write(tmp_path, {"keys": [jwk(small, "weak")]})
    assert jwks_error(path) == (
        f"key 'weak' of the JWKS file {path} is a 1024-bit RSA key, shorter than 2048 bits:"
        f" too weak to trust; Nomad's are 2048-bit, {FIX}"
    )


def test_jwks_weak_key_beside_a_good_one(tmp_path: Path, key_a: rsa.RSAPrivateKey) -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    path = write(tmp_path, {"keys": [jwk(key_a, "a"), jwk(small, "weak")]})
    assert jwks_error(path).startswith(f"key 'weak' of the JWKS file {path} is a 1024-bit RSA key")


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        (b"<html>502 Bad Gateway</html>", "is not JSON"),
        (b"", "is not JSON"),
        (b"\xff\xfe{}", "is not JSON"),
        (b'{"keys": [], "keys": []}', "repeats a member name"),
        ({"keys": []}, "has no RSA RS256 signing key (Nomad 1.7 or newer)"),
        ({}, 'is not a JWK set (an object with a "keys" list)'),
        ([{"kty": "RSA"}], 'is not a JWK set (an object with a "keys" list)'),
        ({"keys": ["RSA"]}, "has a key that is not a JSON object"),
        ({"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB"}]}, "has an RSA key without a kid"),
    ],
)
def test_jwks_unusable(tmp_path: Path, document: object, problem: str) -> None:
    path = write(tmp_path, document)
    assert jwks_error(path) == f"the JWKS file {path} {problem}; {FIX}"


def test_jwks_same_kid_twice(tmp_path: Path, key_a: rsa.RSAPrivateKey, key_b: rsa.RSAPrivateKey) -> None:
    path = write(tmp_path, {"keys": [jwk(key_a, "a"), jwk(key_b, "a")]})
    assert jwks_error(path) == f"the JWKS file {path} has two keys with kid 'a'; {FIX}"


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"n": None}, "has no base64url n and e (modulus, exponent)"),
        ({"e": "AQAB="}, "has no base64url n and e (modulus, exponent)"),
        ({"e": "AQAC"}, BAD_EXPONENT),  # 65538
        ({"e": "AQ"}, BAD_EXPONENT),  # 1
        ({"e": b64url((2**31 + 1).to_bytes(4, "big"))}, BAD_EXPONENT),
    ],
)
def test_jwks_bad_key(
    tmp_path: Path, key_a: rsa.RSAPrivateKey, changes: dict[str, object], problem: str
) -> None:
    path = write(tmp_path, {"keys": [{**jwk(key_a, "a"), **changes}]})
    assert jwks_error(path) == f"key 'a' of the JWKS file {path} {problem}; {FIX}"


def test_jwks_size_bound(tmp_path: Path, key_a: rsa.RSAPrivateKey) -> None:
    document = json.dumps({"keys": [jwk(key_a, "a")]}).encode()
    exactly = document + b" " * (1024 * 1024 - len(document))
    assert list(load_jwks(write(tmp_path, exactly))) == ["a"]
    path = write(tmp_path, exactly + b" ")
    assert jwks_error(path) == f"the JWKS file {path} is larger than 1 MiB: it is not Nomad's JWKS; {FIX}"


def test_jwks_missing(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.json")
    assert jwks_error(path) == f"cannot open the JWKS file {path}: No such file or directory; {FIX}"


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_jwks_not_a_regular_file(tmp_path: Path, kind: str) -> None:
    """A FIFO with no writer would block a plain open() for ever."""
    path = str(tmp_path / "jwks.json")
    if kind == "fifo":
        os.mkfifo(path)
    else:
        os.mkdir(path)
    assert jwks_error(path) == f"the JWKS file {path} is not a regular file; {FIX}"
