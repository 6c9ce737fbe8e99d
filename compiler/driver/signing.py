"""Signed artifacts: sign an artifact with an EC private key, and check it against a trust policy
of public keys, through OpenSSF's ``model-signing`` (key-based signing, offline).

What is signed is the manifest's bytes as stored in the artifact. The manifest lists every
payload file's sha256 and ``read_artifact`` checks each one against it, so a valid signature over
the manifest vouches for the whole file. The signature is the Sigstore bundle that model-signing
writes (a DSSE envelope over an in-toto statement), kept inside the artifact as the zip entry
``artifact.SIGNATURE_NAME``: one file to ship. model-signing signs and verifies the files of a
directory, so the manifest bytes are written as ``manifest.json`` into a private temporary
directory for it to hash.

The bundle names its key by a hint, the sha256 of the public key's PEM (the bytes ``openssl ec
-pubout`` writes, so ``sha256sum pub.pem`` shows it). The hint only picks which trusted key to
verify with and names keys in messages; it proves nothing by itself.

A trust policy is a list of public key files (PEM; an X.509 certificate is accepted too, and
refused outside its validity dates): ``load(path, trusted_keys=[...])``, or
``$AOT_COMPILER_TRUSTED_KEYS`` (paths separated by ``os.pathsep``) when ``trusted_keys`` is not
given. An empty policy is refused: it would trust nothing.

model-signing and cryptography (the ``sign`` extra) are imported only when signing or verifying
is asked; ``describe`` (for ``compiler info``) needs neither.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable

from compiler.driver.artifact import SIGNATURE_NAME, add_entry, read_artifact, read_signed_parts
from compiler.errors import ArtifactError, one_line

TRUSTED_KEYS_ENV = "AOT_COMPILER_TRUSTED_KEYS"
INSTALL_HINT = "pip install 'aot-compiler[sign]'"
MAKE_KEY_PAIR = ("openssl ecparam -name prime256v1 -genkey -noout -out key.pem && "
                 "openssl ec -in key.pem -pubout -out pub.pem")
_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}  # those model-signing supports
_MAX_KEY_FILE = 1 << 20
_PEM_LABEL = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")
_SIGNED_FILE = "manifest.json"  # the one file of the directory model-signing hashes


@dataclass(frozen=True)
class TrustedKey:
    """A public key of the trust policy: the file it came from and its PEM (SubjectPublicKeyInfo)."""

    path: str
    pem: bytes

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.pem).hexdigest()

    def __str__(self) -> str:
        return f"{self.path} (sha256 {self.fingerprint[:16]})"


@dataclass(frozen=True)
class Policy:
    """The keys an artifact's signature must come from, and where the policy was set (for messages)."""

    source: str
    keys: tuple[TrustedKey, ...]


# -- the libraries ---------------------------------------------------------------------------------
def _libraries():
    """(model_signing.signing, model_signing.verifying, cryptography's pieces), or the one-line
    error saying how to install them."""
    try:
        from cryptography import exceptions, x509
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from model_signing import signing, verifying
    except ImportError as e:
        missing = getattr(e, "name", None) or one_line(e, 120)
        raise ArtifactError(f"signing and verifying artifacts need the 'sign' extra ({missing} is not "
                            f"installed): {INSTALL_HINT}") from None
    return signing, verifying, exceptions, x509, serialization, ec


# -- keys ------------------------------------------------------------------------------------------
def _read_key_file(path: str | os.PathLike, role: str) -> tuple[str, bytes, str]:
    """(path, contents, PEM label such as 'PUBLIC KEY') of a key file."""
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise ArtifactError(f"{role} {p} not found" if not os.path.exists(p) else f"{role} {p} is not a file")
    if os.path.getsize(p) > _MAX_KEY_FILE:
        raise ArtifactError(f"{role} {p} is {os.path.getsize(p)} bytes, not a PEM key file")
    try:
        with open(p, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ArtifactError(f"cannot read {role} {p}: {e.strerror or e}") from e
    match = _PEM_LABEL.search(data)
    if match is None:
        raise ArtifactError(f"{role} {p} is not a PEM file (no -----BEGIN ...----- line); make an EC key pair "
                            f"with: {MAKE_KEY_PAIR}")
    return p, data, match.group(1).decode("ascii")


def _check_ec(p: str, role: str, public_key: Any) -> None:
    _, _, _, _, _, ec = _libraries()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        kind = type(public_key).__name__.removeprefix("_").replace("PublicKey", "")
        raise ArtifactError(f"{role} {p} is not an elliptic-curve key ({kind}); artifacts are signed with EC keys "
                            f"on P-256, P-384 or P-521: {MAKE_KEY_PAIR}")
    if public_key.curve.name not in _CURVES:
        raise ArtifactError(f"{role} {p} is on curve {public_key.curve.name}, which model-signing does not "
                            f"support; use P-256, P-384 or P-521: {MAKE_KEY_PAIR}")


def _public_pem(public_key: Any) -> bytes:
    _, _, _, _, serialization, _ = _libraries()
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def check_private_key(path: str | os.PathLike) -> TrustedKey:
    """The public half of the signing key at ``path``, after checking that it is an unencrypted
    PEM EC private key that model-signing can sign with."""
    _, _, exceptions, _, serialization, _ = _libraries()
    role = "signing key"
    p, data, label = _read_key_file(path, role)
    if "PRIVATE KEY" not in label:
        raise ArtifactError(f"{role} {p} is a {label.lower()}, not a private key: signing needs the private key "
                            "(-----BEGIN EC PRIVATE KEY-----); the public key is for verifying")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:  # cryptography's way of saying the key needs a password
        raise ArtifactError(f"{role} {p} is encrypted; signing takes an unencrypted key file: decrypt a copy "
                            f"with `openssl ec -in {p} -out plain.pem` and keep it private") from None
    except (ValueError, exceptions.UnsupportedAlgorithm) as e:
        raise ArtifactError(f"{role} {p} is a malformed private key ({_first_sentence(e)}); make an EC key pair "
                            f"with: {MAKE_KEY_PAIR}") from None
    _check_ec(p, role, key.public_key())
    return TrustedKey(p, _public_pem(key.public_key()))


def load_trusted_key(path: str | os.PathLike) -> TrustedKey:
    """The public key at ``path`` (a PEM public key, or an X.509 certificate within its validity
    dates), checked to be an EC key model-signing can verify with."""
    _, _, exceptions, x509, serialization, _ = _libraries()
    role = "trusted key"
    p, data, label = _read_key_file(path, role)
    if "PRIVATE KEY" in label:
        raise ArtifactError(f"{role} {p} is a private key; a trust policy takes public keys: make one with "
                            f"`openssl ec -in {p} -pubout -out pub.pem` (and never ship the private key)")
    try:
        if label == "CERTIFICATE":
            certificate = x509.load_pem_x509_certificate(data)
            _check_validity(p, role, certificate)
            key = certificate.public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, exceptions.UnsupportedAlgorithm) as e:
        raise ArtifactError(f"{role} {p} is a malformed public key ({_first_sentence(e)}); give the PEM public key "
                            "written by `openssl ec -in key.pem -pubout -out pub.pem`") from None
    _check_ec(p, role, key)
    return TrustedKey(p, _public_pem(key))


def _first_sentence(e: Exception) -> str:
    """cryptography's errors run on with guesses; their first sentence says what failed."""
    return one_line(e, 160).split(". ")[0].rstrip(".")


def _check_validity(p: str, role: str, certificate: Any) -> None:
    now = datetime.now(timezone.utc)
    if certificate.not_valid_after_utc < now:
        raise ArtifactError(f"{role} {p} is a certificate that expired on "
                            f"{certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; trust a current certificate "
                            "or public key")
    if certificate.not_valid_before_utc > now:
        raise ArtifactError(f"{role} {p} is a certificate not valid before "
                            f"{certificate.not_valid_before_utc:%Y-%m-%d %H:%M} UTC; check the clock, or trust "
                            "a current certificate")


def trust_policy(trusted_keys: str | os.PathLike | Iterable[str | os.PathLike] | None = None,
                 source: str = "trusted_keys") -> Policy | None:
    """The trust policy: ``trusted_keys`` (one path or several) when given, else the paths in
    ``$AOT_COMPILER_TRUSTED_KEYS`` when it is set, else None (no policy). Every key is read and
    checked here, before any artifact is."""
    if trusted_keys is None:
        value = os.environ.get(TRUSTED_KEYS_ENV)
        if value is None:
            return None
        paths: list[Any] = [part for part in value.split(os.pathsep) if part.strip()]
        source = f"${TRUSTED_KEYS_ENV}"
    elif isinstance(trusted_keys, (str, bytes, os.PathLike)):
        paths = [trusted_keys]
    else:
        paths = list(trusted_keys)
    if not paths:
        raise ArtifactError(f"{source} names no key: an empty trust policy trusts nothing and would refuse every "
                            "artifact; name the trusted public key files (or set no policy at all)")
    return Policy(source, tuple(load_trusted_key(os.fsdecode(p)) for p in paths))


# -- signing ---------------------------------------------------------------------------------------
def sign_manifest(manifest_bytes: bytes, key_path: str | os.PathLike) -> bytes:
    """model-signing's signature bundle (JSON bytes) over ``manifest_bytes``, with the private key
    at ``key_path``."""
    signing, _, _, _, _, _ = _libraries()
    with tempfile.TemporaryDirectory(prefix="aot-sign-") as tmp:
        model_dir = _materialize(tmp, manifest_bytes)
        bundle = os.path.join(tmp, "signature.json")
        signing.Config().use_elliptic_key_signer(private_key=os.fspath(key_path)).sign(model_dir, bundle)
        with open(bundle, "rb") as f:
            return f.read()


def sign_artifact(path: str | os.PathLike, key_path: str | os.PathLike, output: str | os.PathLike | None = None,
                  check_hashes: bool = True) -> TrustedKey:
    """Sign the artifact at ``path`` with the private key at ``key_path``, writing the signed file to
    ``output`` (default: in place, atomically; an earlier signature is replaced). The artifact's
    hashes are checked first (unless ``check_hashes`` is False: the caller just wrote it), so a
    damaged artifact is refused, not signed. Returns the signing key's public half."""
    key = check_private_key(key_path)
    if check_hashes:
        read_artifact(path)
    manifest_bytes, _ = read_signed_parts(path)
    add_entry(path, SIGNATURE_NAME, sign_manifest(manifest_bytes, key.path), output)
    return key


def _materialize(tmp: str, manifest_bytes: bytes) -> str:
    """A directory in ``tmp`` holding the manifest bytes as its only file: what model-signing hashes."""
    model_dir = os.path.join(tmp, "aot-artifact")
    os.mkdir(model_dir)
    with open(os.path.join(model_dir, _SIGNED_FILE), "wb") as f:
        f.write(manifest_bytes)
    return model_dir


# -- verifying -------------------------------------------------------------------------------------
def verify_artifact(path: str | os.PathLike, policy: Policy) -> tuple[TrustedKey, dict[str, Any], dict[str, Any]]:
    """(the trusted key that signed it, manifest, payload) of the artifact at ``path``: its
    signature is checked against ``policy``, then every hash (``read_artifact``). Nothing of the
    artifact runs here. Raises ``ArtifactError`` naming what is wrong."""
    p = os.fspath(path)
    manifest_bytes, signature = read_signed_parts(p)
    key = check_signature(p, manifest_bytes, signature, policy)
    manifest, payload = read_artifact(p)
    try:
        signed = json.loads(manifest_bytes)
    except ValueError:
        signed = None
    if manifest != signed:  # the file was replaced between the two reads
        raise ArtifactError(f"{p} changed while it was being checked; check it again once nothing writes it")
    return key, manifest, payload


def check_signature(p: str, manifest_bytes: bytes, signature: bytes | None, policy: Policy) -> TrustedKey:
    """The key of ``policy`` that made ``signature`` over ``manifest_bytes``, checked by model-signing."""
    if signature is None:
        raise ArtifactError(f"{p} is not signed, and the trust policy ({policy.source}) accepts only artifacts "
                            f"signed by a trusted key; sign it with `compiler sign {p} --key KEY.pem`")
    hint = _key_hint(signature)
    if hint is None:
        raise _malformed(p, "not a signature bundle naming its key")
    key = next((k for k in policy.keys if k.fingerprint == hint), None)
    if key is None:
        trusted = ", ".join(str(k) for k in policy.keys)
        raise ArtifactError(f"{p} is signed by another key (sha256 {hint[:16]}), which the trust policy "
                            f"({policy.source}) does not trust: it trusts {trusted}")
    _, verifying, exceptions, _, _, _ = _libraries()
    with tempfile.TemporaryDirectory(prefix="aot-verify-") as tmp:
        model_dir = _materialize(tmp, manifest_bytes)
        bundle, public_key = os.path.join(tmp, "signature.json"), os.path.join(tmp, "key.pem")
        for name, data in ((bundle, signature), (public_key, key.pem)):
            with open(name, "wb") as f:
                f.write(data)
        try:
            verifying.Config().use_elliptic_key_verifier(public_key=public_key).verify(model_dir, bundle)
        except exceptions.InvalidSignature:
            raise ArtifactError(f"{p} has an invalid signature: it does not verify with {key}, the key it "
                                "names (the signature was modified, or forged)") from None
        except ValueError as e:
            if str(e).startswith("Signature mismatch"):
                raise ArtifactError(f"{p} has a signature by {key} over another manifest: the artifact was "
                                    "modified after it was signed, or the signature comes from another "
                                    "artifact") from None
            raise _malformed(p, one_line(e, 160)) from None
        except (KeyError, TypeError, IndexError, AttributeError, UnicodeDecodeError) as e:
            raise _malformed(p, f"{type(e).__name__}: {one_line(e, 120)}") from None
    return key


def _key_hint(signature: bytes) -> str | None:
    """The signing key's fingerprint that a signature bundle names (unverified), or None."""
    try:
        hint = json.loads(signature)["verificationMaterial"]["publicKey"]["hint"]
    except (ValueError, KeyError, TypeError):
        return None
    return hint if isinstance(hint, str) and re.fullmatch(r"[0-9a-f]{64}", hint) else None


def _malformed(p: str, detail: str) -> ArtifactError:
    return ArtifactError(f"{p} has a malformed signature ({detail}): the signature entry was modified or "
                         f"damaged; sign the artifact again")


def describe(path: str | os.PathLike) -> dict[str, Any]:
    """Whether the artifact at ``path`` is signed and by which key's fingerprint, unverified (for
    ``compiler info``; needs neither model-signing nor cryptography)."""
    _, signature = read_signed_parts(path)
    if signature is None:
        return {"signed": False}
    return {"signed": True, "key_sha256": _key_hint(signature)}
