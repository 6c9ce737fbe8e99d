"""Signed artifacts and the load policy: compile --sign-key / compiler sign, load(trusted_keys=) and
$AOT_COMPILER_TRUSTED_KEYS, compiler verify, the one-time native-code warning.

Keys are made here at test time with ``cryptography``; no key is committed. Most tests use one
tiny ONNX artifact compiled once per module and copies of it; tampered copies are built by hand
(a byte flipped, or an entry rewritten with the archive's hashes made consistent again, as an
attacker would) and each must be refused with one line naming what is wrong, before anything of
the artifact runs.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import types
import warnings
import zipfile

import numpy as np
import pytest
import torch

pytest.importorskip("model_signing")
from cryptography import x509  # noqa: E402  (model-signing brings cryptography)
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, rsa  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

import compiler  # noqa: E402
from compiler.driver import runtime, signing, tool  # noqa: E402
from compiler.driver.artifact import (BLOB_ALIGN, MANIFEST_NAME, SIGNATURE_NAME, MappedEntry,  # noqa: E402
                                      read_artifact, write_artifact)
from compiler.driver.cli import main as compile_main  # noqa: E402
from compiler.errors import ArtifactError  # noqa: E402
from compiler.payload import StoredBlob  # noqa: E402
from conftest import ROOT  # noqa: E402

ENV = signing.TRUSTED_KEYS_ENV


class Small(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(6, 3)

    def forward(self, x):
        return torch.relu(self.fc(x))


# -- keys ------------------------------------------------------------------------------------------
def _write_private(path, key, password: bytes | None = None):
    """The key as openssl writes it: EC keys as -----BEGIN EC PRIVATE KEY-----, others PKCS#8."""
    if password:
        form, encryption = serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(password)
    else:
        traditional = isinstance(key, ec.EllipticCurvePrivateKey)
        form = serialization.PrivateFormat.TraditionalOpenSSL if traditional else serialization.PrivateFormat.PKCS8
        encryption = serialization.NoEncryption()
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, form, encryption))
    return path


def _write_public(path, key):
    path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


def _certificate(path, key, days_from: int, days_to: int):
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aot test signer")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now + datetime.timedelta(days=days_from))
            .not_valid_after(now + datetime.timedelta(days=days_to)).sign(key, hashes.SHA256()))
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    a = ec.generate_private_key(ec.SECP256R1())
    b = ec.generate_private_key(ec.SECP384R1())
    return types.SimpleNamespace(
        a=_write_private(d / "a.pem", a), a_pub=_write_public(d / "a.pub.pem", a),
        b=_write_private(d / "b.pem", b), b_pub=_write_public(d / "b.pub.pem", b),
        a_cert=_certificate(d / "a.crt", a, -1, 30), a_expired=_certificate(d / "a.expired.crt", a, -30, -1),
        a_future=_certificate(d / "a.future.crt", a, 10, 30),
        a_encrypted=_write_private(d / "a.enc.pem", a, b"secret"),
        rsa=_write_private(d / "rsa.pem", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        k1=_write_private(d / "k1.pem", ec.generate_private_key(ec.SECP256K1())),
        garbage=_write_text(d / "garbage.pem", "-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----\n"),
        not_pem=_write_text(d / "notes.txt", "hello\n"),
        fingerprint_a=hashlib.sha256((d / "a.pub.pem").read_bytes()).hexdigest())


def _write_text(path, text):
    path.write_text(text)
    return path


# -- artifacts -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def built(tmp_path_factory, keys):
    """One tiny ONNX model compiled twice: signed by key a at compile time, and unsigned."""
    d = tmp_path_factory.mktemp("signed")
    x = torch.randn(2, 6)
    signed = compiler.compile(Small(), (x,), target="onnx", output=d / "signed.aot", sign_key=keys.a)
    plain = compiler.compile(Small(), (x,), target="onnx", output=d / "plain.aot")
    return types.SimpleNamespace(signed=signed.path, plain=plain.path, x=x.numpy(),
                                 want=Small()(x).detach().numpy())


@pytest.fixture
def signed(built, tmp_path):
    return str(shutil.copy(built.signed, tmp_path / "signed.aot"))


@pytest.fixture
def plain(built, tmp_path):
    return str(shutil.copy(built.plain, tmp_path / "plain.aot"))


@pytest.fixture
def nothing_runs(monkeypatch):
    """Fail the test if load() gets as far as importing a runner."""
    def refuse(p, target):
        raise AssertionError(f"load() reached the runner of {p} ({target})")
    monkeypatch.setattr(runtime, "_runner_module", refuse)


@pytest.fixture(autouse=True)
def _no_policy_from_the_environment(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)


def entries(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def repack(path, changed: dict[str, bytes], comment: bytes | None = None) -> None:
    """Rewrite the artifact with some entries replaced, as an attacker would: a consistent zip
    (CRCs right) whose comment is the given one (default: the sha256 of the manifest it holds)."""
    data = {**entries(path), **changed}
    with zipfile.ZipFile(path, "w") as zf:
        zf.comment = comment if comment is not None else hashlib.sha256(data[MANIFEST_NAME]).hexdigest().encode()
        for name, body in data.items():
            zf.writestr(name, body)


def flip_byte_in(path, needle: bytes) -> None:
    """Flip one byte of the file where the stored bytes ``needle`` start (an entry's raw data)."""
    blob = bytearray(open(path, "rb").read())
    at = blob.find(needle)
    assert at >= 0, "the bytes to corrupt are not stored raw in the file"
    blob[at + len(needle) // 2] ^= 0x01
    open(path, "wb").write(bytes(blob))


def refused(path, **kwargs) -> str:
    with pytest.raises(ArtifactError) as e:
        runtime.load(path, **kwargs)
    message = str(e.value)
    assert "\n" not in message
    return message


# -- signing and loading ---------------------------------------------------------------------------
def test_signed_at_compile_time_loads_under_a_policy_and_matches_pytorch_and_the_unsigned_artifact(built, keys):
    model = runtime.load(built.signed, trusted_keys=[keys.a_pub])
    out = model(built.x)
    np.testing.assert_allclose(out, built.want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out, runtime.load(built.plain)(built.x))
    assert runtime.load(built.signed, trusted_keys=keys.a_pub).target == "onnx"  # one path, not a list


def test_the_signature_is_one_extra_entry_over_the_manifest_bytes(built):
    signed, plain = entries(built.signed), entries(built.plain)
    assert set(signed) - set(plain) == {SIGNATURE_NAME}
    assert signed["model.onnx"] == plain["model.onnx"]  # the manifests differ: each records its own compile
    manifest, payload = read_artifact(built.signed)  # the reader accepts the unlisted signature entry
    assert SIGNATURE_NAME not in manifest["payload"] and SIGNATURE_NAME not in payload
    bundle = json.loads(signed[SIGNATURE_NAME])
    assert bundle["mediaType"].startswith("application/vnd.dev.sigstore.bundle")
    assert signing.describe(built.plain) == {"signed": False}


def test_signing_an_existing_artifact_keeps_every_entry_in_place(plain, keys, tmp_path):
    before = open(plain, "rb").read()
    with zipfile.ZipFile(plain) as zf:
        end_of_entries = zf.start_dir
    out = tmp_path / "out.aot"
    key = signing.sign_artifact(plain, keys.a, output=out)
    assert key.fingerprint == keys.fingerprint_a
    assert open(plain, "rb").read() == before  # --output leaves the source alone
    assert open(out, "rb").read()[:end_of_entries] == before[:end_of_entries]
    assert signing.verify_artifact(out, signing.trust_policy([keys.a_pub]))[0].fingerprint == keys.fingerprint_a


def test_a_mapped_blob_stays_aligned_and_verified_after_signing(tmp_path, keys):
    weights = np.arange(3000, dtype=np.float32)
    path = tmp_path / "blob.aot"
    write_artifact(path, {"target": "fake", "inputs": [], "outputs": []},
                   {"weights.bin": StoredBlob([(0, weights)], weights.nbytes), "meta": b"{}"})
    offset = read_artifact(path)[1]["weights.bin"].offset
    signing.sign_artifact(path, keys.a)
    _, manifest, payload = signing.verify_artifact(path, signing.trust_policy([keys.a_pub]))
    entry = payload["weights.bin"]
    assert isinstance(entry, MappedEntry) and entry.offset == offset and entry.offset % BLOB_ALIGN == 0
    assert np.array_equal(np.frombuffer(entry.read(), np.float32), weights)


def test_signing_again_replaces_the_signature(signed, keys):
    signing.sign_artifact(signed, keys.b)
    assert list(entries(signed)).count(SIGNATURE_NAME) == 1
    assert signing.verify_artifact(signed, signing.trust_policy([keys.b_pub]))
    assert "another key" in refused(signed, trusted_keys=[keys.a_pub])


def test_any_key_of_the_policy_may_have_signed(signed, keys):
    assert runtime.load(signed, trusted_keys=[keys.b_pub, keys.a_pub]).target == "onnx"
    assert runtime.load(signed, trusted_keys=[keys.a_cert]).target == "onnx"  # a certificate of the key


# -- refusals under a policy -----------------------------------------------------------------------
def test_unsigned_artifact_is_refused(plain, keys, nothing_runs):
    assert "is not signed" in refused(plain, trusted_keys=[keys.a_pub])


def test_artifact_signed_by_another_key_is_refused_naming_both_keys(signed, keys, nothing_runs):
    message = refused(signed, trusted_keys=[keys.b_pub])
    assert "signed by another key" in message and keys.fingerprint_a[:16] in message and str(keys.b_pub) in message


def test_manifest_changed_after_signing_is_refused_even_with_consistent_hashes(signed, keys, nothing_runs):
    manifest = entries(signed)[MANIFEST_NAME]
    tampered = manifest.replace(b'"model_name": "', b'"model_name": "X', 1)
    assert len(tampered) == len(manifest) + 1
    repack(signed, {MANIFEST_NAME: tampered})
    assert "modified after it was signed" in refused(signed, trusted_keys=[keys.a_pub])


def test_one_byte_flipped_in_the_stored_manifest_is_refused(signed, keys, nothing_runs):
    repack(signed, {})  # entries stored, not deflated, so the byte lands in the manifest's text
    flip_byte_in(signed, b'"format": "aot-artifact"')
    assert f"corrupt (Bad CRC-32 for file '{MANIFEST_NAME}')" in refused(signed, trusted_keys=[keys.a_pub])


def test_one_byte_flipped_in_a_payload_is_refused(signed, keys, nothing_runs):
    repack(signed, {})
    onnx = entries(signed)["model.onnx"]
    flip_byte_in(signed, onnx[len(onnx) // 2:len(onnx) // 2 + 32])
    assert "corrupt (Bad CRC-32 for file 'model.onnx')" in refused(signed, trusted_keys=[keys.a_pub])


def test_payload_swapped_with_manifest_hashes_rewritten_is_refused(signed, keys, nothing_runs):
    """The attacker rewrites the payload's sha256 in the manifest and the manifest's in the zip
    comment: the integrity check passes, the signature does not."""
    files = entries(signed)
    onnx = bytearray(files["model.onnx"])
    onnx[len(onnx) // 2] ^= 0x01
    old, new = hashlib.sha256(files["model.onnx"]).hexdigest(), hashlib.sha256(onnx).hexdigest()
    repack(signed, {"model.onnx": bytes(onnx), MANIFEST_NAME: files[MANIFEST_NAME].replace(old.encode(), new.encode())})
    assert "modified after it was signed" in refused(signed, trusted_keys=[keys.a_pub])


def test_one_byte_changed_in_the_signature_is_refused(signed, keys, nothing_runs):
    bundle = json.loads(entries(signed)[SIGNATURE_NAME])
    sig = bundle["dsseEnvelope"]["signatures"][0]["sig"]
    bundle["dsseEnvelope"]["signatures"][0]["sig"] = ("B" if sig[10] == "A" else "A").join([sig[:10], sig[11:]])
    repack(signed, {SIGNATURE_NAME: json.dumps(bundle).encode()})
    assert "invalid signature" in refused(signed, trusted_keys=[keys.a_pub])


def test_signed_payload_statement_changed_is_refused(signed, keys, nothing_runs):
    """The DSSE payload (the signed statement) edited to the digest of another manifest."""
    bundle = json.loads(entries(signed)[SIGNATURE_NAME])
    statement = base64.b64decode(bundle["dsseEnvelope"]["payload"])
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(statement.replace(b"sha256", b"sha256 ", 1)).decode()
    repack(signed, {SIGNATURE_NAME: json.dumps(bundle).encode()})
    assert "invalid signature" in refused(signed, trusted_keys=[keys.a_pub])


def test_one_raw_byte_flipped_in_the_signature_entry_is_refused(signed, keys, nothing_runs):
    repack(signed, {})
    flip_byte_in(signed, b'"mediaType"')
    assert f"corrupt (Bad CRC-32 for file '{SIGNATURE_NAME}')" in refused(signed, trusted_keys=[keys.a_pub])


def test_garbage_signature_entry_is_refused_as_malformed(signed, keys, nothing_runs):
    repack(signed, {SIGNATURE_NAME: b"not a bundle"})
    assert "malformed signature (not a signature bundle" in refused(signed, trusted_keys=[keys.a_pub])



def test_signature_bundle_without_its_envelope_is_refused_as_malformed(signed, keys, nothing_runs):
    bundle = json.loads(entries(signed)[SIGNATURE_NAME])
    del bundle["dsseEnvelope"]
    repack(signed, {SIGNATURE_NAME: json.dumps(bundle).encode()})
    assert "malformed signature" in refused(signed, trusted_keys=[keys.a_pub])


def test_signature_of_another_artifact_is_refused(signed, plain, keys, tmp_path, nothing_runs):
    other = tmp_path / "other.aot"
    compiler.compile(torch.nn.Linear(6, 3), (torch.randn(2, 6),), target="onnx", output=other, sign_key=keys.a,
                     verify=False)
    repack(plain, {SIGNATURE_NAME: entries(other)[SIGNATURE_NAME]})
    assert "over another manifest" in refused(plain, trusted_keys=[keys.a_pub])


# -- the policy and the keys -----------------------------------------------------------------------
def test_empty_policy_is_refused_saying_it_trusts_nothing(signed, monkeypatch, nothing_runs):
    assert "trusts nothing" in refused(signed, trusted_keys=[])
    monkeypatch.setenv(ENV, os.pathsep)
    message = refused(signed)
    assert "trusts nothing" in message and ENV in message


def test_environment_policy_applies_when_no_keys_are_given(signed, plain, keys, monkeypatch):
    monkeypatch.setenv(ENV, os.pathsep.join([str(keys.b_pub), str(keys.a_pub)]))
    assert runtime.load(signed).target == "onnx"
    assert ENV in refused(plain)
    monkeypatch.setenv(ENV, str(keys.b_pub))
    assert "another key" in refused(signed)
    assert runtime.load(signed, trusted_keys=[keys.a_pub]).target == "onnx"  # the argument wins


@pytest.mark.parametrize("key, words", [
    ("a", "is a private key"),
    ("garbage", "malformed public key"),
    ("not_pem", "not a PEM file"),
    ("a_expired", "expired on"),
    ("a_future", "not valid before"),
    ("missing", "not found"),
])
def test_bad_trusted_key_is_refused_before_the_artifact_is_read(keys, words, key, tmp_path, nothing_runs):
    path = getattr(keys, key) if key != "missing" else tmp_path / "nope.pem"
    message = refused(tmp_path / "no-artifact-needed.aot", trusted_keys=[path])
    assert words in message and str(path) in message


@pytest.mark.parametrize("key, words", [
    ("a_pub", "not a private key"),
    ("a_cert", "not a private key"),
    ("garbage", "not a private key"),
    ("a_encrypted", "is encrypted"),
    ("rsa", "not an elliptic-curve key"),
    ("k1", "secp256k1"),
    ("not_pem", "not a PEM file"),
])
def test_bad_signing_key_is_refused_before_compiling(keys, key, words, tmp_path, monkeypatch):
    def no_compiling(*args, **kwargs):
        raise AssertionError("compile() went on with a bad signing key")
    import compiler.driver.api as api
    monkeypatch.setattr(api, "_load_source", no_compiling)
    path = getattr(keys, key)
    with pytest.raises(ArtifactError) as e:
        compiler.compile(Small(), (torch.randn(2, 6),), output=tmp_path / "x.aot", sign_key=path)
    assert words in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "x.aot").exists()


def test_damaged_artifact_is_not_signed(signed, keys):
    repack(signed, {})
    flip_byte_in(signed, b'"format": "aot-artifact"')
    before = open(signed, "rb").read()
    with pytest.raises(ArtifactError):
        signing.sign_artifact(signed, keys.a)
    assert open(signed, "rb").read() == before


def test_missing_model_signing_says_how_to_install(signed, keys, monkeypatch, nothing_runs):
    monkeypatch.setitem(sys.modules, "model_signing", None)
    assert "pip install 'aot-compiler[sign]'" in refused(signed, trusted_keys=[keys.a_pub])
    with pytest.raises(ArtifactError, match=r"pip install 'aot-compiler\[sign\]'"):
        signing.sign_artifact(signed, keys.a)


# -- no policy -------------------------------------------------------------------------------------
def _fake_runner_module(monkeypatch):
    module = types.ModuleType("tests_fake_native_runner")
    module.load_runner = lambda manifest, payload, threads: (lambda inputs: [])
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(runtime, "_RUNNERS", dict(runtime._RUNNERS))
    monkeypatch.setattr(runtime, "_NATIVE_CODE_TARGETS", set(runtime._NATIVE_CODE_TARGETS))
    monkeypatch.setattr(runtime, "_native_code_warned", False)
    return module.__name__


def test_native_code_artifact_warns_once_per_process_and_onnx_never(tmp_path, built, monkeypatch):
    runtime.register_runner("fake_native", _fake_runner_module(monkeypatch))
    path = tmp_path / "native.aot"
    write_artifact(path, {"target": "fake_native", "inputs": [], "outputs": []}, {"lib.so": b"\x7fELF"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runtime.load(built.plain)
        runtime.load(path)
        runtime.load(path)
    native = [w for w in caught if issubclass(w.category, runtime.NativeCodeWarning)]
    assert len(native) == 1 and "native code" in str(native[0].message) and ENV in str(native[0].message)
    assert native[0].filename == __file__  # points at the caller of load()


def test_a_runner_registered_as_data_only_does_not_warn(tmp_path, monkeypatch):
    runtime.register_runner("fake_data", _fake_runner_module(monkeypatch), native_code=False)
    path = tmp_path / "data.aot"
    write_artifact(path, {"target": "fake_data", "inputs": [], "outputs": []}, {"graph.json": b"{}"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runtime.load(path)
    assert not [w for w in caught if issubclass(w.category, runtime.NativeCodeWarning)]


def test_load_and_info_without_a_policy_do_not_import_model_signing(built):
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        import compiler
        from compiler.driver import tool
        compiler.load({built.signed!r})(__import__("numpy").zeros((2, 6), "float32"))
        assert tool.main(["info", {built.signed!r}]) == 0
        print("imported:", sorted(m for m in sys.modules if m.startswith(("model_signing", "cryptography"))))
    """)
    env = {k: v for k, v in os.environ.items() if k != ENV}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "imported: []" in proc.stdout, proc.stdout


# -- the commands ----------------------------------------------------------------------------------
def run_tool(capsys, *args):
    code = tool.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_compiler_verify_exit_0_when_trusted_and_2_with_one_line_otherwise(signed, plain, keys, capsys):
    code, out, err = run_tool(capsys, "verify", signed, "--key", keys.a_pub)
    assert code == 0 and "verified" in out and keys.fingerprint_a[:16] in out, err
    for args, words in (((plain, "--key", keys.a_pub), "not signed"), ((signed, "--key", keys.b_pub), "another key"),
                        ((signed,), "--key"), ((signed, "--key", keys.a), "is a private key")):
        code, out, err = run_tool(capsys, "verify", *args)
        assert code == 2 and out == "" and err.count("\n") == 1 and words in err, (args, err)


def test_compiler_sign_then_info_and_verify(plain, keys, capsys, monkeypatch):
    code, out, err = run_tool(capsys, "info", plain)
    assert code == 0 and "signature:   none (unsigned)" in out
    code, out, err = run_tool(capsys, "sign", plain, "--key", keys.b)
    assert code == 0 and "signed" in out, err
    code, out, _ = run_tool(capsys, "info", plain)
    assert f"signed by key sha256 {hashlib.sha256(keys.b_pub.read_bytes()).hexdigest()[:16]}" in out
    code, out, _ = run_tool(capsys, "info", plain, "--json")
    assert json.loads(out)["signature"]["signed"] is True
    monkeypatch.setenv(ENV, str(keys.b_pub))
    assert run_tool(capsys, "verify", plain)[0] == 0
    code, _, err = run_tool(capsys, "sign", plain, "--key", keys.b_pub)
    assert code == 2 and err.count("\n") == 1 and "not a private key" in err


def test_compile_command_signs_with_sign_key(tmp_path, keys, capsys):
    net = tmp_path / "net.py"
    net.write_text(textwrap.dedent("""
        import torch
        class Net(torch.nn.Linear):
            def __init__(self):
                super().__init__(4, 2)
            def example_inputs(self):
                return (torch.randn(2, 4),)
    """))
    out_path = tmp_path / "net.aot"
    code = compile_main([f"{net}:Net", "-o", str(out_path), "--sign-key", str(keys.a), "--no-verify"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "signed with" in out
    assert runtime.load(out_path, trusted_keys=[keys.a_pub]).target == "onnx"
    code = compile_main([f"{net}:Net", "-o", str(tmp_path / "bad.aot"), "--sign-key", str(keys.a_pub)])
    _, err = capsys.readouterr()
    assert code == 2 and "not a private key" in err and not (tmp_path / "bad.aot").exists()


@pytest.mark.slow
def test_llvm_artifact_warns_once_without_a_policy_and_not_under_one(tmp_path, keys):
    pytest.importorskip("tvm")
    code = textwrap.dedent(f"""
        import sys, warnings
        sys.path.insert(0, {str(ROOT)!r})
        import numpy as np, compiler
        from models import SeedMLP
        from compiler.driver.runtime import NativeCodeWarning
        m = SeedMLP(in_features=16, hidden=(8, 8))
        art = compiler.compile(m, m.example_inputs(2), target="llvm", output={str(tmp_path / 'mlp.aot')!r},
                               verify=False, sign_key={str(keys.a)!r})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            compiler.load(art.path, trusted_keys=[{str(keys.a_pub)!r}])
            signed_warnings = len([w for w in caught if w.category is NativeCodeWarning])
            x = np.zeros((2, 16), np.float32)
            a = compiler.load(art.path)(x)
            b = compiler.load(art.path)(x)
        print("warnings", signed_warnings, len([w for w in caught if w.category is NativeCodeWarning]))
        np.testing.assert_array_equal(a, b)
    """)
    env = {k: v for k, v in os.environ.items() if k != ENV}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "warnings 0 1" in proc.stdout, proc.stdout



def test_compile_verifies_its_own_artifact_under_a_trust_policy(keys, tmp_path, monkeypatch):
    """A deployment's policy ($AOT_COMPILER_TRUSTED_KEYS) applies to artifacts loaded from
    elsewhere, not to compile()'s verification of the one it just built (signed, if at all, after
    it is verified); loading the unsigned result afterwards is refused, the signed one loads."""
    monkeypatch.setenv(ENV, str(keys.a_pub))
    x = torch.randn(2, 6)
    plain = compiler.compile(Small(), (x,), target="onnx", output=tmp_path / "plain.aot")
    signed = compiler.compile(Small(), (x,), target="onnx", output=tmp_path / "signed.aot", sign_key=keys.a)
    assert plain.report.verification.passed and signed.report.verification.passed
    with pytest.raises(ArtifactError):
        compiler.load(plain.path)
    np.testing.assert_allclose(compiler.load(signed.path)(x.numpy()), Small()(x).detach().numpy(), rtol=1e-5)
