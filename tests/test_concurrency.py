"""Several processes loading the same artifact at once, and an artifact rewritten at its path while
other processes load it: every load sees a whole file (the old or the new version, never a torn
one), and the library cache holds no half-written entry afterwards."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import numpy as np

from fuzz_artifacts import TINY_INPUT, compile_tiny_onnx

import pytest



@pytest.fixture(scope="module")
def two_versions(tmp_path_factory):
    """Two artifacts of the same model with different weights (bytes of each)."""
    first = compile_tiny_onnx(tmp_path_factory.mktemp("v1") / "m.aot", seed=0)
    second = compile_tiny_onnx(tmp_path_factory.mktemp("v2") / "m.aot", seed=1)
    return first, second


def _load_many(path: str, rounds: int, queue) -> None:
    import compiler
    from compiler.errors import CompileError

    results = []
    for _ in range(rounds):
        try:
            results.append(compiler.load(path)(TINY_INPUT).tobytes())
        except CompileError as exc:
            results.append(f"refused: {exc}")
    queue.put(results)


def _rewrite_many(path: str, versions: list[bytes], rounds: int) -> None:
    """Write the versions in turn the way compile() does (temporary file, rename)."""
    from compiler.driver.artifact import read_artifact, write_artifact
    import tempfile

    decoded = []
    for data in versions:
        with tempfile.NamedTemporaryFile(suffix=".aot", delete=False) as f:
            f.write(data)
        manifest, payload = read_artifact(f.name)
        os.unlink(f.name)
        decoded.append(({k: v for k, v in manifest.items() if k not in ("format", "format_version", "payload")},
                        payload))
    for i in range(rounds):
        write_artifact(path, *decoded[i % len(decoded)])


def _outputs_of(data: bytes, tmp_path: Path) -> bytes:
    import compiler

    path = tmp_path / f"ref{len(list(tmp_path.iterdir()))}.aot"
    path.write_bytes(data)
    return compiler.load(path)(TINY_INPUT).tobytes()


def test_loads_racing_a_rewrite_see_whole_versions(two_versions, tmp_path):
    first, second = two_versions
    expected = {_outputs_of(first, tmp_path), _outputs_of(second, tmp_path)}
    assert len(expected) == 2
    path = tmp_path / "shared.aot"
    path.write_bytes(first)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    loaders = [ctx.Process(target=_load_many, args=(str(path), 40, queue)) for _ in range(3)]
    writer = ctx.Process(target=_rewrite_many, args=(str(path), [second, first], 60))
    for p in [*loaders, writer]:
        p.start()
    results = [r for _ in loaders for r in queue.get(timeout=300)]
    for p in [*loaders, writer]:
        p.join(timeout=300)
        assert p.exitcode == 0
    assert results and set(results) <= expected, [r for r in results if r not in expected][:3]
    assert sorted(n.name for n in tmp_path.iterdir() if n.name.endswith(".tmp")) == []


def _cache_library(data: bytes, cache: str, queue) -> None:
    os.environ["AOT_COMPILER_CACHE"] = cache
    from backends.tvm.runtime import cached_library

    paths = {str(cached_library(data)) for _ in range(50)}
    queue.put(sorted(paths))


def test_processes_filling_the_library_cache_at_once(tmp_path):
    """cached_library (the TVM runtime's cache) from 4 processes at once: one whole file, no
    temporary file left (the bytes stand for a library; nothing here loads them)."""
    data = np.random.default_rng(0).bytes(4 << 20)
    cache = tmp_path / "cache"
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    workers = [ctx.Process(target=_cache_library, args=(data, str(cache), queue)) for _ in range(4)]
    for p in workers:
        p.start()
    paths = {path for _ in workers for path in queue.get(timeout=300)}
    for p in workers:
        p.join(timeout=300)
        assert p.exitcode == 0
    assert len(paths) == 1
    assert Path(paths.pop()).read_bytes() == data
    assert [n.name for n in (cache / "tvm").iterdir() if not n.name.endswith(".so")] == []
