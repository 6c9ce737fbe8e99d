"""``compiler bundle OUTDIR``: a directory that runs artifacts on a machine with only Python and
numpy: our runtime (``compiler.load`` and the runners, found by import analysis from
``compiler.driver.runtime``; no torch), TVM's runtime libraries and tvm-ffi for one Python version
and platform (from the official wheels, without ``libtvm_compiler.so``, sources and headers),
optionally artifacts, a launcher ``run.py``, a README and ``bundle.json`` (what it was built for,
checked where it runs). onnxruntime is not bundled: the deploy machine installs it for onnx
artifacts (``--with-onnxruntime`` adds its wheel).
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from importlib import metadata
from pathlib import Path

from compiler import __version__
from compiler.errors import InputError

TVM_WHEEL = ("apache-tvm", "0.27.0.post1")
TVM_FFI_WHEEL = ("apache-tvm-ffi", "0.1.14.post0")
DEFAULT_PLATFORM = "manylinux_2_28_x86_64"
OUR_PACKAGES = ("compiler", "backends")
# Entry points of running: load() and the command-line runner; the runners load() imports by name.
ROOTS = ("compiler.driver.runtime", "compiler.driver.tool", "backends.onnx.runtime", "backends.tvm.runtime",
         "backends.hls.runtime")
# Imported inside a guard for artifacts from before requirements were recorded; compile side only.
COMPILE_ONLY = {"backends.tvm.emit"}
# Parts of the wheels that running never reads (verified: the bundle's tests run artifacts without them).
_DROPPED_DIRS = {"3rdparty", "src", "include", "relax", "s_tir", "topi", "web", "testing", "__pycache__",
                 "cmake", "stub", "cython"}
_DROPPED_FILES = {"libtvm_compiler.so"}
_DROPPED_SUFFIXES = (".h", ".pyi", ".pxd", ".pyx", ".cc", ".cu")


def runtime_modules(repo: Path) -> list[str]:
    """Our modules that running artifacts imports: the closure of ``ROOTS`` over every import
    statement (top level or inside functions) that names one of ``OUR_PACKAGES``, package
    ``__init__`` files included."""
    seen: set[str] = set()
    todo = list(ROOTS)
    while todo:
        name = todo.pop()
        if name in seen or name in COMPILE_ONLY:
            continue
        path = _module_file(repo, name)
        if path is None:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # the packages above it
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        todo += _imports(path, package, repo)
    return sorted(seen)


def _module_file(repo: Path, name: str) -> Path | None:
    base = repo.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path, package: str, repo: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append(module)
            found += [f"{module}.{a.name}" for a in node.names if _module_file(repo, f"{module}.{a.name}")]
    return [m for m in found if m.split(".")[0] in OUR_PACKAGES]


def build(outdir: str, python: str | None = None, platform_tag: str | None = None,
          artifacts: list[str] | None = None, tarball: bool = False, with_onnxruntime: bool = False) -> Path:
    """Write the bundle to ``outdir`` (which must not exist or be empty); returns its path."""
    python = python or f"{sys.version_info.major}.{sys.version_info.minor}"
    platform_tag = platform_tag or DEFAULT_PLATFORM
    if not python.replace(".", "").isdigit() or python.count(".") != 1:
        raise InputError(f"--python must look like 3.12, got {python!r}")
    out = Path(outdir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out} exists and is not an empty directory; give a new OUTDIR")
    for a in artifacts or []:
        if not os.path.isfile(a):
            raise InputError(f"artifact not found: {a}")
    repo = Path(__file__).resolve().parents[2]
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for name in runtime_modules(repo):
            src = _module_file(repo, name)
            dst = tmp / src.relative_to(repo)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
        source = _add_tvm(tmp, python, platform_tag)
        _add_pure_python_dependencies(tmp)
        if with_onnxruntime:
            _download(["onnxruntime"], python, platform_tag, tmp / "wheels")
        for a in artifacts or []:
            (tmp / "artifacts").mkdir(exist_ok=True)
            shutil.copy2(a, tmp / "artifacts" / os.path.basename(a))
        info = {"python": python, "platform": platform_tag, "compiler": __version__,
                "apache-tvm": TVM_WHEEL[1], "apache-tvm-ffi": TVM_FFI_WHEEL[1], "tvm_source": source,
                "artifacts": sorted(os.path.basename(a) for a in artifacts or [])}
        (tmp / "bundle.json").write_text(json.dumps(info, indent=2) + "\n")
        shutil.copy2(Path(__file__).with_name("bundle_run.py"), tmp / "run.py")
        (tmp / "README.md").write_text(README.format(python=python, platform=platform_tag))
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if tarball:
        with tarfile.open(f"{out}.tar.gz", "w:gz") as tar:
            tar.add(out, arcname=out.name)
    return out


def _add_tvm(dest: Path, python: str, platform_tag: str) -> str:
    """Put the runtime parts of tvm and tvm_ffi in ``dest``: from this Python's installed packages
    when they are the pinned versions for this Python, else from the wheels."""
    running = python == f"{sys.version_info.major}.{sys.version_info.minor}" and platform_tag.endswith(
        os.uname().machine) and sys.platform == "linux"
    if running and all(_installed(name) == version for name, version in (TVM_WHEEL, TVM_FFI_WHEEL)):
        import tvm_ffi

        site = Path(tvm_ffi.__file__).resolve().parents[1]
        for package in ("tvm", "tvm_ffi"):
            shutil.copytree(site / package, dest / package, ignore=_ignore)
        return "installed packages"
    wheels = _download([f"{n}=={v}" for n, v in (TVM_WHEEL, TVM_FFI_WHEEL)], python, platform_tag, wheel_cache())
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as z:
            for member in z.namelist():
                parts = member.split("/")
                if ".dist-info" in parts[0] or _dropped(parts):
                    continue
                z.extract(member, dest)
                mode = z.getinfo(member).external_attr >> 16
                if mode:
                    os.chmod(dest / member, mode & 0o777 | 0o600)
    return "wheels " + ", ".join(w.name for w in wheels)


def _add_pure_python_dependencies(dest: Path) -> None:
    """tvm_ffi imports typing_extensions (one pure-Python file, any Python 3): copied from this
    interpreter, so the deploy machine needs only numpy. (A same-Python bundle test cannot see it
    missing: the test's interpreter has it installed; found running a 3.12 bundle from 3.11.)"""
    import typing_extensions

    shutil.copy2(typing_extensions.__file__, dest / "typing_extensions.py")


def _installed(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _dropped(parts: list[str]) -> bool:
    return (any(p in _DROPPED_DIRS for p in parts[:-1]) or parts[-1] in _DROPPED_FILES
            or parts[-1].endswith(_DROPPED_SUFFIXES))


def _ignore(directory: str, names: list[str]) -> set[str]:
    return {n for n in names if n in _DROPPED_DIRS or n in _DROPPED_FILES or n.endswith(_DROPPED_SUFFIXES)}


def wheel_cache() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "aot-compiler" / "wheels"


def _download(requirements: list[str], python: str, platform_tag: str, directory: Path) -> list[Path]:
    """The wheels of ``requirements`` for that Python and platform, downloaded by pip into
    ``directory`` (pip reuses wheels already there)."""
    directory.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "--python-version", python, "--implementation", "cp", "--platform", platform_tag,
           "-d", str(directory), *requirements]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise InputError(f"cannot get the wheels {', '.join(requirements)} for Python {python} on {platform_tag}: "
                         f"{last}")
    tag = "cp" + python.replace(".", "")
    wheels = []
    for req in requirements:
        name = req.split("==")[0].replace("-", "_")
        version = req.partition("==")[2]
        matches = [w for w in directory.glob(f"{name}-{version}*.whl")
                   if f"-{tag}-" in w.name or "-abi3-" in w.name or "py3-none" in w.name]
        if not matches:
            raise InputError(f"pip gave no {req} wheel for Python {python} in {directory}")
        wheels.append(sorted(matches)[-1])
    return wheels


README = """# Runtime bundle (Python {python}, {platform})

Runs artifacts written by `compile` on a machine with only Python {python} and numpy: no torch, no
TVM install, no compiler library. Copy this directory (or its .tar.gz) to the machine, then:

    python3 run.py ARTIFACT.aot --input x.npy -o out.npz     # run once, save the outputs
    python3 run.py ARTIFACT.aot                              # random inputs, summary
    PYTHONPATH=. python3 -c 'import compiler, numpy as np; m = compiler.load("ARTIFACT.aot"); print(m(np.load("x.npy")))'

Targets: llvm and cuda artifacts run with the TVM runtime inside this bundle (cuda needs an NVIDIA
driver and the CUDA 13 runtime, libcudart.so.13, on LD_LIBRARY_PATH). onnx artifacts need
onnxruntime, which is not bundled: `pip install onnxruntime` there (a bundle made with
`--with-onnxruntime` holds its wheel in wheels/). bundle.json records the Python and platform this
bundle is for; on another one, loading a TVM artifact stops with a one-line error.
"""
