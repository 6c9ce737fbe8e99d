"""Run a TVM artifact (targets ``llvm`` and ``cuda``): the library is written once to a cache
directory keyed by its sha256, loaded with ``tvm.runtime.load_module`` and run by
``tvm.runtime.vm.VirtualMachine``; numpy in, numpy out.

Before any of the artifact's code is loaded, the host CPU is checked against the manifest
(``select_library``): an llvm artifact holds one library per CPU variant (``target_info
["variants"]``, each with the instruction-set features it needs) and the best one the host
supports is loaded; if none fits, or the host is not x86-64 Linux, ``ArtifactError`` names what is
missing and how to recompile, where loading would otherwise kill the process (SIGILL). Artifacts
from before variants were recorded carry only ``tvm_target``: its features are asked from LLVM.

Cache: ``$AOT_COMPILER_CACHE`` if set, else ``~/.cache/aot-compiler/tvm``; the file is written to a
temporary name and renamed, so concurrent loads never see a half-written library, and a second
load reuses it once its bytes are compared with the artifact's (``compiler.cache``). tvm is
imported only here, when a TVM artifact is loaded.

Weights (``weights.bin``, see ``emit.py``) are not in the libraries: ``library_params`` maps the
entry from the artifact file copy-on-write (bounds-checked against the entry, after the reader's
sha256 check), the tensors are made from those pages without a copy (DLPack; a GPU gets one
upload at load) and passed after the inputs on every call.

Running never needs TVM's compiler library (``libtvm_compiler.so``, 250 MB): the VM is
``tvm.runtime.vm.VirtualMachine``, which the runtime library alone provides. Where this process
cannot compile for TVM anyway (the runtime bundle, no torch, or ``TVM_USE_RUNTIME_LIB=1``), tvm is
imported runtime-only (``import_tvm``), and a tvm already imported, in either mode, is used as it is.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from compiler.cache import cache_root, cached_file
from compiler.errors import ArtifactError, InputError
from compiler.weight_table import WEIGHTS_FILE, WEIGHTS_TABLE, blob_array, read_table, tensor_view

LIBRARY = "model.so"


def cache_dir() -> Path:
    return cache_root() / "tvm"


def cached_library(data: bytes) -> Path:
    """The path of ``data`` in the cache, written there (atomically) unless it holds exactly it."""
    return cached_file(cache_dir(), data)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. under taskset or a container's
    cpuset), else the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def allow_all_cores() -> None:
    """Let TVM's thread pool grow to every usable core, unless the user set TVM_NUM_THREADS.

    TVM caps the pool at TVM_NUM_THREADS, else at half the hardware threads on x86 (it assumes
    hyper-threading), which on a 2-vCPU machine is one thread. Set before the pool starts: in this
    process (load) and in the tuner's runner processes, which inherit it."""
    os.environ.setdefault("TVM_NUM_THREADS", str(usable_cores()))


def set_threads(threads: int | None) -> None:
    """TVM's CPU thread pool size (None or 0: one per usable core). The pool is global to the
    process, so every load sets it, or an earlier load(threads=1) would keep later models on one
    thread."""
    import tvm_ffi

    allow_all_cores()
    # runtime.config_threadpool(mode, nthreads): mode 1 = big cores (all cores on x86)
    tvm_ffi.get_global_func("runtime.config_threadpool")(1, int(threads or usable_cores()))


def import_tvm():
    """The ``tvm`` module for running artifacts. Imported here for the first time in a process
    that only runs (``running_only``), it loads only the runtime library: faster and 300 MB
    lighter than with the compiler, and the compiler library need not exist. A process that may
    still compile gets the full import, since tvm cannot add the compiler to a runtime-only import
    later."""
    if "tvm" in sys.modules:
        import tvm

        return tvm
    problem = bundle_problem()
    if problem is not None:
        raise ArtifactError(problem)
    if not running_only():
        import tvm

        return tvm
    previous = os.environ.get("TVM_USE_RUNTIME_LIB")
    os.environ["TVM_USE_RUNTIME_LIB"] = "1"  # read once, by tvm.base at import
    # tvm_ffi imports torch if it can, only to speed up torch tensor exchange, which numpy in/out
    # never uses: keep torch (seconds, and a dependency this runtime promises not to need) out.
    hide_torch = "torch" not in sys.modules
    if hide_torch:
        sys.modules["torch"] = None  # type: ignore[assignment]  # `import torch` raises ImportError
    try:
        import tvm
    finally:
        if hide_torch and sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]
        if previous is None:
            del os.environ["TVM_USE_RUNTIME_LIB"]  # child processes may compile: do not pass it on
        else:
            os.environ["TVM_USE_RUNTIME_LIB"] = previous
    _load_runtime_sidecar(tvm, "tvm_runtime_extra")
    return tvm


def running_only() -> bool:
    """Whether this process cannot compile for TVM, so tvm may be imported without its compiler:
    the user asked (``TVM_USE_RUNTIME_LIB=1``), the TVM compile side of this package is absent
    (the runtime bundle), or torch, which every compile needs, is not installed."""
    requested = os.environ.get("TVM_USE_RUNTIME_LIB")
    if requested is not None:
        return requested == "1"
    return _missing(f"{__package__}.emit") or _missing("torch")


def bundle_problem(bundle_json: Path | None = None) -> str | None:
    """Why the runtime bundle this module sits in (``bundle.json`` at its root, written by
    ``compiler bundle``) cannot run here, or None: its TVM libraries are built for one Python
    version and platform."""
    path = bundle_json or Path(__file__).resolve().parents[2] / "bundle.json"
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    tag = str(info.get("platform", ""))
    if str(info.get("python")) != here:
        return (f"this runtime bundle ({path.parent}) is for Python {info.get('python')}, not {here}; run it with "
                f"python{info.get('python')} or make one with `compiler bundle OUTDIR --python {here}`")
    if tag and (not sys.platform.startswith("linux") or not tag.endswith(platform.machine())):
        return (f"this runtime bundle ({path.parent}) is for {tag}, not {sys.platform} {platform.machine()}; "
                "make one for this machine with `compiler bundle OUTDIR --platform ...`")
    return None


def _missing(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):
        return True


def _load_runtime_sidecar(tvm, name: str) -> str | None:
    """Load one of TVM's runtime side libraries (``libtvm_runtime_extra``, ``libtvm_runtime_cuda``)
    for its registrations, as ``import tvm`` does only with the compiler loaded; None when loaded,
    else why not (its first line)."""
    if tvm.base._RUNTIME_ONLY is False or name in tvm.base._LOADED_LIBS:
        return None
    from tvm_ffi.libinfo import load_lib_ctypes

    runtime_dir = Path(tvm.base._LOADED_LIBS["tvm_runtime"]._name).resolve().parent
    try:
        tvm.base._LOADED_LIBS[name] = load_lib_ctypes("tvm", name, "RTLD_LOCAL", extra_lib_paths=[runtime_dir])
    except (OSError, RuntimeError) as exc:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return None


def _device(kind: str):
    tvm = import_tvm()

    if kind != "cuda":
        return tvm.cpu(0)
    problem = _load_runtime_sidecar(tvm, "tvm_runtime_cuda")
    if problem is not None:
        raise ArtifactError(f"this artifact is for an NVIDIA GPU (target cuda) but TVM's CUDA runtime cannot load "
                            f"here ({problem}); it needs the CUDA 13 runtime (libcudart.so.13, e.g. pip install "
                            "nvidia-cuda-runtime, on LD_LIBRARY_PATH) and the driver's libcuda.so.1")
    try:
        dev = tvm.cuda(0)
        present = bool(dev.exist)
    except Exception:
        present = False
    if not present:
        raise ArtifactError("this artifact is for an NVIDIA GPU (target cuda) but no CUDA GPU/driver is available "
                            "here (libcuda.so / nvidia driver not found); load it on a machine with a GPU, or "
                            "compile with --target llvm")
    return dev


def load_runner(manifest: dict, payload: dict[str, bytes],
                threads: int | None) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
    """A function running the artifact's Relax VM: inputs in the graph's input order, outputs as a
    list in its output order."""
    library = select_library(manifest, payload)
    tinfo = (manifest.get("target_info") or {}).get("tvm_target") or {"kind": manifest.get("target", "llvm")}
    try:
        tvm = import_tvm()
        from tvm.runtime.vm import VirtualMachine
    except ImportError as exc:
        raise ArtifactError("running a TVM artifact needs apache-tvm (pip install apache-tvm, or use the runtime "
                            "bundle: compiler bundle)") from exc
    dev = _device(tinfo.get("kind", "llvm"))
    set_threads(threads)
    path = cached_library(payload[library])
    try:
        lib = tvm.runtime.load_module(str(path))
        vm = VirtualMachine(lib, dev)
    except Exception as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        if "cuda" in first.lower():
            raise ArtifactError(f"cannot load the CUDA module: {first}; it needs an NVIDIA GPU with its driver "
                                "(libcuda.so.1) and libcudart") from None
        raise ArtifactError(f"TVM cannot load {library} ({path}): {first}") from None
    n_inputs = len(manifest.get("inputs") or [])
    main = vm["main"]
    weights = [_tensor(tvm, a, dev) for a in library_params(manifest, payload, library)]

    lock = threading.Lock()
    on_cpu = dev.dlpack_device_type() == tvm.cpu(0).dlpack_device_type()
    staging: dict[tuple, tuple] = {}  # (input index, shape, dtype) -> (device tensor, numpy view or None)

    def device_tensor(i: int, a: np.ndarray):
        """Copy into a tensor kept from an earlier call of the same shape. On the CPU the copy goes
        through a numpy view of that tensor (DLPack, no copy): np.copyto costs a tenth of
        Tensor.copyfrom, which shows on models that run in tens of microseconds."""
        key = (i, a.shape, a.dtype.str)
        entry = staging.get(key)
        if entry is None:
            if len(staging) > 64:
                staging.clear()  # many distinct shapes (dynamic batch): do not grow without bound
            buffer = tvm.runtime.empty(a.shape, str(a.dtype), dev)
            entry = staging[key] = (buffer, _numpy_view(buffer) if on_cpu else None)
        buffer, view = entry
        if view is not None:
            np.copyto(view, a)
        else:
            buffer.copyfrom(a if a.flags.c_contiguous else np.array(a, order="C"))
        return buffer

    def host_array(t) -> np.ndarray:
        # Always a copy: an output may be a model constant or alias an input staging tensor,
        # and the caller may write to what it gets back.
        if on_cpu:
            view = _numpy_view(t)
            if view is not None:
                return view.copy()
        return t.numpy()

    def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
        if n_inputs and len(inputs) != n_inputs:
            raise InputError(f"the model takes {n_inputs} inputs, got {len(inputs)}")
        with lock:  # the staging tensors are shared between calls
            try:
                out = main(*[device_tensor(i, a) for i, a in enumerate(inputs)], *weights)
            except Exception as exc:  # noqa: BLE001 - TVM raises its own error types
                if INDEX_RANGE_MARK not in str(exc):
                    raise
                raise InputError(_index_range_message(str(exc))) from None
            items = [out] if hasattr(out, "numpy") else list(out)
            return [host_array(o) for o in items]

    run.vm = vm  # type: ignore[attr-defined]  # for benchmarks and tests
    run.weights = weights  # type: ignore[attr-defined]  # what vm["main"] takes after the inputs
    run.library_path = path  # type: ignore[attr-defined]
    run.library = library  # type: ignore[attr-defined]  # the variant's file in the artifact
    return run


def library_params(manifest: dict, payload: dict, library: str) -> list[np.ndarray]:
    """The weights ``library`` takes after the inputs (its ``params`` list in the manifest), as
    arrays over ``weights.bin``: copy-on-write memory maps of the artifact file (pages shared with
    the page cache, never written: the kernels only read them), used in place; a weight stored in
    another variant's GEMM panels (``{"tensor", "panels", "columns"}``) repacked, one copy. ArtifactError for
    a list or table that does not fit the entry."""
    info = manifest.get("target_info") or {}
    variants = info.get("variants")
    if isinstance(variants, list):
        entry = next((v for v in variants if isinstance(v, dict) and v.get("library") == library), {})
        wanted = entry.get("params", [])
    else:
        wanted = info.get("params", [])
    if not wanted:
        return []
    if not isinstance(wanted, list):
        raise ArtifactError(f"the TVM artifact has a malformed manifest: the params of {library} are not a list; "
                            "recompile it")
    if WEIGHTS_TABLE not in payload:
        raise ArtifactError(f"the TVM artifact's manifest lists weights for {library} but it has no {WEIGHTS_TABLE}; "
                            "recompile it")
    table = read_table(payload, "TVM")
    # Copy-on-write: TVM's DLPack import refuses read-only memory; the kernels never write weights.
    blob = blob_array(payload[WEIGHTS_FILE], writable=True)
    arrays = []
    for item in wanted:
        name, panels, columns = (item, None, None) if isinstance(item, str) else (
            (item.get("tensor"), item.get("panels"), item.get("columns")) if isinstance(item, dict) else (None,) * 3)
        if name not in table or not (panels is None or all(isinstance(x, int) and not isinstance(x, bool) and x > 0
                                                            for x in (panels, columns))):
            raise ArtifactError(f"the TVM artifact's manifest names weight {item!r}, which {WEIGHTS_TABLE} does not "
                                "hold; recompile it")
        array = tensor_view(blob, table[name])
        if panels is not None:
            array = _repacked(array, panels, columns, name)
        arrays.append(array)
    return arrays


def _repacked(stored: np.ndarray, panels: int, columns: int, name: str) -> np.ndarray:
    """A GEMM weight stored as [N' / P', K, P] (gemm.py's panels) as [columns / panels, K, panels]:
    its [K, N'] matrix cut or zero-padded to ``columns`` (the columns cut are zeros: the emitter
    paired the two layouts by their columns up to the last nonzero one). One copy."""
    if stored.ndim != 3 or columns % panels:
        raise ArtifactError(f"the TVM artifact's weight {name} {list(stored.shape)} cannot be repacked into "
                            f"{columns} columns in panels of {panels}; recompile it")
    k, n = stored.shape[1], stored.shape[0] * stored.shape[2]
    flat = stored.transpose(1, 0, 2).reshape(k, n)  # [K, N']: a copy
    if columns != n:
        flat = np.concatenate([flat, np.zeros((k, columns - n), stored.dtype)], axis=1) if columns > n \
            else flat[:, :columns]
    return np.ascontiguousarray(flat.reshape(k, columns // panels, panels).transpose(1, 0, 2))


def _tensor(tvm, array: np.ndarray, dev):
    """A TVM tensor of ``array`` on ``dev``: on the CPU the same memory (DLPack, no copy) where TVM
    takes it, else one copy (a GPU: uploaded once, here)."""
    if dev.dlpack_device_type() == tvm.cpu(0).dlpack_device_type():
        try:
            return tvm.runtime.from_dlpack(array)
        except Exception:  # noqa: BLE001 - e.g. an alignment TVM refuses: fall back to a copy
            pass
    return tvm.runtime.tensor(np.ascontiguousarray(array), dev)


def select_library(manifest: dict, payload: dict[str, bytes], host: frozenset[str] | None = None) -> str:
    """The payload file to load on this host (``host``: its ISA features, default this process's
    CPU), after checking that the host can run it; ArtifactError, naming the missing features and
    the fix, when it cannot."""
    from . import cpu

    info = manifest.get("target_info") or {}
    variants = info.get("variants")
    if variants is None:  # cuda, or an artifact from before variants
        if LIBRARY not in payload:
            raise ArtifactError(f"the TVM artifact has no {LIBRARY}")
        variants = [{"name": "", "features": _required_features(info), "library": LIBRARY}]
    else:
        try:
            variants = cpu.check_variants(variants, payload)
        except ValueError as exc:
            raise ArtifactError(f"the TVM artifact has a malformed manifest: target_info {exc}; recompile it") from None
        if "requires" in info:
            _required_features(info)  # checked for shape too
    requires = info.get("requires") if isinstance(info.get("requires"), dict) else {}
    problem = cpu.platform_problem(str(requires.get("arch", "")), str(requires.get("os", "")))
    if problem is not None:
        raise ArtifactError(f"cannot run this TVM artifact here: {problem}; compile it on this machine "
                            "(--target llvm --cpu host) or use --target onnx")
    chosen = cpu.best_variant(variants, host)
    if chosen is None:
        nearest = min(variants, key=lambda v: len(cpu.missing_features(v["features"], host)))
        missing = cpu.missing_features(nearest["features"], host)
        built_for = nearest.get("mcpu") or nearest.get("name") or "another CPU"
        have = cpu.host_features() if host is None else host
        portable = cpu.feature_level(have) not in ("x86-64", "x86-64-v2")  # it runs the portable baseline
        fix = ("recompile it without --cpu (the portable default, x86-64-v3 and up) or with --cpu host on this machine"
               if portable else "recompile it with --cpu host on this machine")
        raise ArtifactError(f"this CPU lacks {', '.join(missing)}, which the artifact's code (built for {built_for}) "
                            f"needs; {fix}")
    return chosen["library"]


def _required_features(info: dict) -> list[str]:
    """``requires.cpu_features`` (checked), else, for an artifact from before it was recorded, the
    features LLVM gives for its ``tvm_target`` (cuda: its host)."""
    from . import cpu

    requires = info.get("requires")
    if requires is not None:
        features = requires.get("cpu_features") if isinstance(requires, dict) else None
        try:
            return cpu.check_feature_list(features, "requires.cpu_features")
        except ValueError as exc:
            raise ArtifactError(f"the TVM artifact has a malformed manifest: target_info {exc}; recompile it") from None
    tdict = info.get("tvm_target") or {}
    tdict = tdict.get("host", tdict) if tdict.get("kind") == "cuda" else tdict
    if tdict.get("kind") != "llvm" or not tdict.get("mcpu"):
        return []
    try:
        from .emit import target_features

        return target_features(tdict)
    except Exception:  # noqa: BLE001 - a target this LLVM cannot describe: no check possible
        return []


def _numpy_view(tensor) -> np.ndarray | None:
    """A numpy array sharing a CPU tensor's memory, or None where DLPack cannot express it
    (e.g. a dtype numpy lacks)."""
    try:
        return np.from_dlpack(tensor)
    except (TypeError, ValueError, BufferError, RuntimeError):
        return None


__all__ = ["allow_all_cores", "bundle_problem", "cache_dir", "cached_library", "import_tvm", "library_params",
           "load_runner", "running_only", "select_library", "set_threads", "usable_cores"]


# The mark of a run-time index check's error (backends/tvm/ops/common.py; the runtime must not
# import the compile side).
INDEX_RANGE_MARK = "AOT_INDEX_RANGE:"


def _index_range_message(text: str) -> str:
    """The check's own sentence from TVM's error text (which adds a traceback)."""
    line = next((ln for ln in text.splitlines() if INDEX_RANGE_MARK in ln), text)
    return line[line.index(INDEX_RANGE_MARK) + len(INDEX_RANGE_MARK):].strip()
