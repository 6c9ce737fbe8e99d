"""Run an HLS artifact: its g++ C-simulation library through ctypes (the batch loop is in C).

The library is extracted once into the cache (``$AOT_COMPILER_CACHE/hls`` or
``~/.cache/aot-compiler/hls``), named by its sha256. When it cannot be loaded here (another
platform, or the artifact was compiled without g++), it is rebuilt from the project in the
artifact, which needs g++ and the ap_types headers (a clear error says so when they are missing).
Inputs are permuted to the channels-last order of the HLS arrays and outputs back, in numpy.
"""

from __future__ import annotations

import ctypes
import io
import json
import os
import re
import tarfile
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from backends.hls import build
from compiler.cache import cached_file
from compiler.errors import ArtifactError, InputError

PROJECT_FILE = "hls_project.tar.gz"
LIB_FILE = build.LIB_NAME
RUNTIME_FILE = "hls_runtime.json"


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def cached_library(payload: dict[str, bytes], proj: str) -> Path:
    """Path of a loadable library: the artifact's own if present, else one rebuilt from its project."""
    cache = build.cache_dir()
    lib = payload.get(LIB_FILE)
    if lib is not None:
        return cached_file(cache, lib)
    return rebuild(payload, proj)


def rebuild(payload: dict[str, bytes], proj: str) -> Path:
    if PROJECT_FILE not in payload:
        raise ArtifactError(f"the HLS artifact has neither {LIB_FILE} nor {PROJECT_FILE}")
    key = build.sha256(payload[PROJECT_FILE])
    path = build.cache_dir() / f"{key}.rebuilt.so"
    if path.exists():
        return path
    problem = build.toolchain_problem()
    if problem:
        raise ArtifactError(f"the HLS artifact's C simulation cannot run here and cannot be rebuilt: {problem}")
    with tempfile.TemporaryDirectory(prefix="aot-hls-") as tmp:
        try:
            with tarfile.open(fileobj=io.BytesIO(payload[PROJECT_FILE]), mode="r:gz") as tar:
                tar.extractall(tmp, filter="data")  # "data": no member lands outside tmp
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise ArtifactError(f"the HLS artifact's {PROJECT_FILE} cannot be unpacked ({exc}); recompile it") from None
        root = Path(tmp) / proj
        build.build_library(root, proj, root / LIB_FILE)
        _atomic_write(path, (root / LIB_FILE).read_bytes())
    return path


def open_library(payload: dict[str, bytes], proj: str) -> ctypes.CDLL:
    path = cached_library(payload, proj)
    try:
        lib = ctypes.CDLL(str(path))
    except OSError:
        if LIB_FILE not in payload:
            raise
        lib = ctypes.CDLL(str(rebuild(payload, proj)))  # built for another machine: rebuild here
    lib.hls_predict.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_void_p), ctypes.c_longlong]
    lib.hls_predict.restype = ctypes.c_int
    return lib


def load_runner(manifest: dict, payload: dict[str, bytes],
                threads: int | None) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
    if RUNTIME_FILE not in payload:
        raise ArtifactError(f"the HLS artifact has no {RUNTIME_FILE}")
    meta = json.loads(payload[RUNTIME_FILE])
    if not isinstance(meta.get("project"), str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", meta["project"]):
        # the project is rebuilt in <temporary directory>/<project>: a path would leave it
        raise ArtifactError(f"the HLS artifact's {RUNTIME_FILE} names no valid project directory; recompile it")
    lib = open_library(payload, meta["project"])
    in_perm = [np.asarray(t["perm"], dtype=np.int64) for t in meta["inputs"]]
    outs = meta["outputs"]
    out_perm = [np.asarray(t["perm"], dtype=np.int64) for t in outs]
    workers = max(1, int(threads or 1))

    def call(stored_in: list[np.ndarray], n: int) -> list[np.ndarray]:
        stored_out = [np.empty((n, t["size"]), np.float32) for t in outs]
        ins = (ctypes.c_void_p * len(stored_in))(*[a.ctypes.data for a in stored_in])
        outp = (ctypes.c_void_p * len(stored_out))(*[a.ctypes.data for a in stored_out])
        lib.hls_predict(ins, outp, n)
        return stored_out

    def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
        if len(inputs) != len(in_perm):
            raise InputError(f"the model takes {len(in_perm)} inputs, got {len(inputs)}")
        n = inputs[0].shape[0]
        stored = [np.ascontiguousarray(np.asarray(a, np.float32).reshape(n, -1)[:, p]) for a, p in zip(inputs, in_perm)]
        if workers > 1 and n >= 2 * workers:  # ctypes drops the GIL; the C code has no shared state
            bounds = np.linspace(0, n, workers + 1).astype(int)
            with ThreadPoolExecutor(workers) as pool:
                parts = list(pool.map(lambda k: call([np.ascontiguousarray(s[bounds[k]:bounds[k + 1]])
                                                      for s in stored], bounds[k + 1] - bounds[k]), range(workers)))
            stored_out = [np.concatenate([p[i] for p in parts]) for i in range(len(outs))]
        else:
            stored_out = call(stored, n)
        results = []
        for y, p, t in zip(stored_out, out_perm, outs):
            logical = np.empty_like(y)
            logical[:, p] = y
            results.append(logical.reshape((n,) + tuple(t["logical"])))
        return results

    run.library = lib  # type: ignore[attr-defined]
    return run
