"""``load()``: artifact file -> a callable that runs it with numpy in and numpy out.

Loading checks the artifact's integrity (``compiler.driver.artifact``), then hands the manifest and the
payload to the runner of the artifact's target. Runners are modules found by target through
``_RUNNERS`` and imported only when an artifact of that target is loaded, so loading an ONNX
artifact imports onnxruntime but never torch (nor another target's runtime). A runner module
exposes::

    def load_runner(manifest: dict, payload: dict[str, bytes], threads: int | None
                    ) -> Callable[[list[np.ndarray]], list[np.ndarray]]

Before each run the loaded model checks the number, dtypes and shapes of its inputs against the
manifest (symbolic dims such as ``batch`` must take one size across all inputs of a call) and
names the offending input; it never casts silently.

Trust: ``load(path, trusted_keys=[pub.pem, ...])`` (or ``$AOT_COMPILER_TRUSTED_KEYS``) loads only
an artifact signed by one of those keys (``compiler.driver.signing``, which imports model-signing
only then). With no policy, an artifact whose target runs native code of its own (a shared
library: llvm, cuda, hls) loads with a one-time ``NativeCodeWarning``; ONNX artifacts hold a graph
and weights that onnxruntime runs, and load silently.

numpy and the standard library only.
"""

from __future__ import annotations

import importlib
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from compiler import dims
from compiler.driver.artifact import read_artifact, read_manifest
from compiler.driver.signing import TRUSTED_KEYS_ENV  # signing imports model-signing only when it signs or verifies
from compiler.errors import ArtifactError, InputError, one_line

Runner = Callable[[list[np.ndarray]], list[np.ndarray]]

# target -> module path of its runner (imported lazily, by load()).
_RUNNERS: dict[str, str] = {
    "onnx": "backends.onnx.runtime",
    "llvm": "backends.tvm.runtime",
    "cuda": "backends.tvm.runtime",
    "hls": "backends.hls.runtime",
}
# targets whose artifacts carry native code that loading runs (a shared library, dlopen-ed)
_NATIVE_CODE_TARGETS: set[str] = {"llvm", "cuda", "hls"}
_native_code_warned = False


class NativeCodeWarning(UserWarning):
    """An artifact that runs native code was loaded with no trust policy (shown once per process)."""


def register_runner(target: str, module_path: str, native_code: bool = True) -> None:
    """Make ``load()`` run artifacts of ``target`` with the runner module ``module_path``
    (a dotted module path exposing ``load_runner``; imported on first use). ``native_code``: the
    runner executes code that comes with the artifact (with no trust policy, loading warns once)."""
    if not isinstance(target, str) or not target:
        raise ValueError(f"target must be a non-empty string, got {target!r}")
    if not isinstance(module_path, str) or not module_path:
        raise ValueError(f"module_path must be a non-empty dotted module path, got {module_path!r}")
    _RUNNERS[target] = module_path
    (_NATIVE_CODE_TARGETS.add if native_code else _NATIVE_CODE_TARGETS.discard)(target)


def known_targets() -> list[str]:
    return sorted(_RUNNERS)


@dataclass(frozen=True)
class TensorSpec:
    """One input or output as the manifest declares it."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def __str__(self) -> str:
        return f"{self.name}: {self.dtype}[{', '.join(str(d) for d in self.shape)}]"


def load(path: str | os.PathLike, threads: int | None = None,
         trusted_keys: str | os.PathLike | Sequence[str | os.PathLike] | None = None) -> LoadedModel:
    """Load the artifact at ``path`` after checking its integrity; ``threads`` caps the runner's
    intra-op threads (None: the backend's default, usually all cores).

    ``trusted_keys`` (public key files; default ``$AOT_COMPILER_TRUSTED_KEYS``, paths separated by
    ``os.pathsep``) sets a trust policy: an artifact not signed by one of those keys is refused
    with ``ArtifactError`` before anything of it runs, and an empty list is refused (it trusts
    nothing). With no policy, artifacts that run native code load with a one-time warning."""
    if threads is not None and (not isinstance(threads, (int, np.integer)) or isinstance(threads, bool)
                                or threads < 1):
        raise InputError(f"threads must be a positive integer or None, got {threads!r}")
    threads = None if threads is None else int(threads)
    p = os.fspath(path)
    if trusted_keys is not None or TRUSTED_KEYS_ENV in os.environ:
        from compiler.driver import signing

        policy = signing.trust_policy(trusted_keys)
        _check_memory(p, read_manifest(p))
        _key, manifest, payload = signing.verify_artifact(p, policy)
    else:
        _check_memory(p, read_manifest(p))
        manifest, payload = read_artifact(p)
        _warn_if_native_code(p, manifest.get("target"))
    return _open(p, manifest, payload, threads)


def load_built(path: str | os.PathLike, threads: int | None = None) -> LoadedModel:
    """``load()`` of an artifact this process has just compiled (compile()'s verification): no
    trust policy applies and no native-code warning is shown, since its code is the compiler's own
    output, not a file from elsewhere (and it is signed, if at all, only after it is verified)."""
    p = os.fspath(path)
    _check_memory(p, read_manifest(p))
    manifest, payload = read_artifact(p)
    return _open(p, manifest, payload, threads)


def _open(p: str, manifest: dict[str, Any], payload: dict[str, Any], threads: int | None) -> LoadedModel:
    target = manifest.get("target")
    inputs = _specs(p, manifest, "inputs")
    outputs = _specs(p, manifest, "outputs")
    if not isinstance(target, str) or not target:
        raise ArtifactError(f"{p} has a malformed manifest: no target; recompile it")
    module = _runner_module(p, target)
    load_runner = getattr(module, "load_runner", None)
    if not callable(load_runner):
        raise RuntimeError(f"runner module {_RUNNERS[target]} for target '{target}' has no load_runner()")
    try:
        runner = load_runner(manifest, payload, threads)
    except (KeyError, TypeError, AttributeError, IndexError, ValueError, RecursionError, OSError) as exc:
        # A runner reads the fields only it knows without checking every type: a manifest or
        # payload of the wrong shape (hostile, or damaged before it was hashed) ends here.
        raise ArtifactError(f"{p}: the '{target}' runtime cannot use what the artifact holds "
                            f"({type(exc).__name__}: {one_line(exc, 200)}); recompile it or download it again") from exc
    return LoadedModel(p, manifest, runner, inputs, outputs, threads)


def _check_memory(p: str, manifest: dict[str, Any]) -> None:
    """Weights left in the artifact file (``weights.bin``) become resident as the runtime uses
    them, and onnxruntime packs its MatMul weights into copies: an artifact whose weights the
    process cannot hold is refused here, with the sizes, before its hashing (threads, buffers) and
    the runtime's own allocations (where onnxruntime fails in its allocator, or the OOM killer
    ends the process). Sizes from the manifest, checked against the archive by ``read_manifest``."""
    from compiler.memory import check_room
    from compiler.weight_table import WEIGHTS_FILE

    entry = manifest.get("payload", {}).get(WEIGHTS_FILE)
    if isinstance(entry, dict) and entry.get("mapped") and type(entry.get("size")) is int:  # deflated: read already
        check_room(p, entry["size"], f"its {entry['size'] / 2**20:.0f} MiB of weights")


def _warn_if_native_code(p: str, target: Any) -> None:
    global _native_code_warned
    if _native_code_warned or target not in _NATIVE_CODE_TARGETS:
        return
    _native_code_warned = True
    warnings.warn(f"loading {p}, a '{target}' artifact, runs the native code inside it with this process's "
                  "rights, and no trust policy is set: load only artifacts from a source you trust, or require "
                  f"signed ones with load(path, trusted_keys=[...]) or ${TRUSTED_KEYS_ENV} (shown once)",
                  NativeCodeWarning, stacklevel=3)


def _runner_module(p: str, target: str):
    module_path = _RUNNERS.get(target)
    if module_path is None:
        raise ArtifactError(f"{p} is for target '{target}', which this runtime cannot run "
                            f"(known targets: {', '.join(known_targets())}); upgrade the compiler or "
                            "recompile for a known target")
    try:
        return importlib.import_module(module_path)
    except ImportError as e:
        missing = getattr(e, "name", None)
        if missing and missing != module_path and not module_path.startswith(missing + "."):
            raise ArtifactError(f"running a '{target}' artifact needs the Python package '{missing}', "
                                f"which is not installed (pip install {missing})") from e
        raise ArtifactError(f"the runtime for target '{target}' ({module_path}) cannot be imported: {e}") from e


def _specs(p: str, manifest: dict[str, Any], key: str) -> tuple[TensorSpec, ...]:
    entries = manifest.get(key)
    if not isinstance(entries, list):
        raise ArtifactError(f"{p} has a malformed manifest: '{key}' is not a list; recompile it")
    specs = []
    for i, e in enumerate(entries):
        ok = (isinstance(e, dict) and isinstance(e.get("name"), str)
              and isinstance(e.get("dtype"), str) and _DTYPE_NAME.fullmatch(e["dtype"]) is not None
              and isinstance(e.get("shape"), list) and all(_valid_dim(d) for d in e["shape"]))
        if not ok:
            raise ArtifactError(f"{p} has a malformed manifest: {key}[{i}] is not "
                                "{name, dtype, shape}; recompile it")
        specs.append(TensorSpec(e["name"], e["dtype"], tuple(e["shape"])))
    return tuple(specs)


# What a manifest dim may be: a size, or a symbol/expression short enough to evaluate without
# deep recursion (compiled models write expressions of a few dozen characters).
_MAX_DIM = (1 << 31) - 1
_MAX_DIM_TEXT = 512
_DTYPE_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")


def _valid_dim(d: Any) -> bool:
    if type(d) is int:
        return 0 <= d <= _MAX_DIM
    return isinstance(d, str) and 0 < len(d) <= _MAX_DIM_TEXT


def _none_positions(p: str, manifest: dict[str, Any], n_outputs: int) -> tuple[int, ...]:
    positions = manifest.get("none_outputs", [])
    ok = isinstance(positions, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in positions) \
        and sorted(set(positions)) == positions and all(0 <= i <= n_outputs + len(positions) - 1 for i in positions)
    if not ok:
        raise ArtifactError(f"{p} has a malformed manifest: 'none_outputs' is not a sorted list of output "
                            "positions; recompile it")
    return tuple(positions)


def _ranges(p: str, manifest: dict[str, Any], key: str, what: str, *, names: tuple[str, ...] | None = None,
            lowest: int | None = None) -> dict[str, tuple[int, int]]:
    """``manifest[key]`` checked as name -> [low, high] (integers, low <= high; names among
    ``names`` and lows >= ``lowest`` when given)."""
    ranges = manifest.get(key, {})
    ok = isinstance(ranges, dict) and all(
        (names is None or k in names) and isinstance(v, list) and len(v) == 2 and all(type(b) is int for b in v)
        and v[0] <= v[1] and (lowest is None or v[0] >= lowest) for k, v in ranges.items())
    if not ok:
        raise ArtifactError(f"{p} has a malformed manifest: '{key}' is not {what}; recompile it")
    return {k: (v[0], v[1]) for k, v in ranges.items()}


def _index_bounds(p: str, manifest: dict[str, Any], names: tuple[str, ...]) -> tuple[tuple[int, int, int], ...]:
    """(input position, lowest, highest) for the inputs used as indices (manifest index_bounds)."""
    bounds = _ranges(p, manifest, "index_bounds", "input name -> [low, high]", names=names)
    return tuple((names.index(k), lo, hi) for k, (lo, hi) in bounds.items())


def _numpy_dtype(name: str) -> np.dtype | None:
    try:
        return np.dtype(name)
    except (TypeError, ValueError, OverflowError):
        return None  # a dtype numpy lacks (e.g. bfloat16): compared by name


def _fmt_shape(shape: Sequence[int | str]) -> str:
    items = [str(d) for d in shape]
    return f"({items[0]},)" if len(items) == 1 else f"({', '.join(items)})"


class LoadedModel:
    """A loaded artifact: ``m(*arrays)`` returns an array (one output) or a tuple of arrays;
    ``m.run([arrays])`` always returns a list."""

    def __init__(self, path: str, manifest: dict[str, Any], runner: Runner, inputs: tuple[TensorSpec, ...],
                 outputs: tuple[TensorSpec, ...], threads: int | None = None):
        self.path = path
        self.manifest = manifest
        self.target: str = manifest["target"]
        self.inputs = inputs
        self.outputs = outputs
        self.input_names: tuple[str, ...] = tuple(s.name for s in inputs)
        self.output_names: tuple[str, ...] = tuple(s.name for s in outputs)
        self.threads = threads
        self._runner = runner
        self._dtypes = [_numpy_dtype(s.dtype) for s in inputs]
        # Fast path for fully static signatures: one tuple compare per input.
        self._static = None
        if all(all(isinstance(d, int) for d in s.shape) for s in inputs) and None not in self._dtypes:
            self._static = [(dt, tuple(s.shape)) for dt, s in zip(self._dtypes, inputs)]
        self._n_outputs = len(outputs)
        self.none_outputs = _none_positions(path, manifest, len(outputs))
        self._index_bounds = _index_bounds(path, manifest, self.input_names)
        # symbol -> (lowest, highest) size the artifact was compiled for
        self._dim_ranges = _ranges(path, manifest, "dynamic_dims", "name -> [min, max]", lowest=0)

    # -- running ---------------------------------------------------------------------------------
    def __call__(self, *inputs: Any) -> np.ndarray | tuple[np.ndarray | None, ...]:
        """The outputs in the model's own structure: one array, or a tuple in which the model's
        None outputs are None again."""
        outputs: list = self.run(inputs)
        for position in self.none_outputs:
            outputs.insert(position, None)
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def run(self, inputs: Sequence[Any] | Mapping[str, Any]) -> list[np.ndarray]:
        """Run on ``inputs`` (a sequence in manifest order, or a mapping by input name); return
        the outputs as a list."""
        arrays = self._check_inputs(inputs)
        if self._index_bounds:
            self._check_index_bounds(arrays)
        outputs = self._runner(arrays)
        # The common case in one test: a batch-1 model runs in tens of microseconds, so each
        # microsecond of checking shows.
        if type(outputs) is list and len(outputs) == self._n_outputs \
                and all(type(o) is np.ndarray for o in outputs):
            return outputs
        if not isinstance(outputs, (list, tuple)):
            raise ArtifactError(f"the '{self.target}' runner for {self.path} returned a "
                                f"{type(outputs).__name__}, not a list of outputs")
        if len(outputs) != len(self.outputs):
            raise ArtifactError(f"the '{self.target}' runner for {self.path} returned {len(outputs)} outputs, "
                                f"the manifest lists {len(self.outputs)} ({', '.join(self.output_names)})")
        return [o if type(o) is np.ndarray else np.asarray(o) for o in outputs]

    def _check_index_bounds(self, arrays: list[np.ndarray]) -> None:
        for position, lo, hi in self._index_bounds:
            a = arrays[position]
            if a.size and (a.min() < lo or a.max() > hi):
                bad = a[(a < lo) | (a > hi)].flat[0]
                raise InputError(f"input '{self.input_names[position]}' holds the index {bad}, outside "
                                 f"[{lo}, {hi}] for the axis it indexes (e.g. a token id >= the vocabulary)")

    def _check_inputs(self, inputs: Sequence[Any] | Mapping[str, Any]) -> list[np.ndarray]:
        static = self._static
        if static is not None and type(inputs) in (list, tuple) and len(inputs) == len(static):
            for a, (dt, shape) in zip(inputs, static):
                if type(a) is not np.ndarray or a.shape != shape or a.dtype != dt or not a.flags.c_contiguous:
                    break
            else:
                return list(inputs)  # already valid: skip the general checks below
        specs = self.inputs
        if isinstance(inputs, Mapping):
            unknown = [k for k in inputs if k not in self.input_names]
            missing = [n for n in self.input_names if n not in inputs]
            if unknown or missing:
                what = "; ".join(filter(None, [f"unknown {', '.join(map(repr, unknown))}" if unknown else "",
                                               f"missing {', '.join(map(repr, missing))}" if missing else ""]))
                raise InputError(f"inputs by name must be exactly ({', '.join(self.input_names)}): {what}")
            inputs = [inputs[n] for n in self.input_names]
        elif isinstance(inputs, np.ndarray):
            raise InputError("run() takes a list of arrays: use run([x]) (or call the model: m(x))")
        else:
            inputs = list(inputs)
        if len(inputs) != len(specs):
            n = len(specs)
            raise InputError(f"expected {n} input{'' if n == 1 else 's'} ({', '.join(self.input_names)}), "
                             f"got {len(inputs)}")

        arrays: list[np.ndarray] = []
        bound: dict[str, tuple[int, str]] = {}  # symbol -> (size, input that set it)
        has_expressions = False
        for spec, want_dtype, value in zip(specs, self._dtypes, inputs):
            try:
                arr = np.asarray(value)
            except (ValueError, TypeError) as e:
                raise InputError(f"input '{spec.name}' is not an array: {e}") from e
            if not arr.dtype.isnative:
                arr = arr.astype(arr.dtype.newbyteorder("="))  # same values, native byte order
            dtype_ok = arr.dtype == want_dtype if want_dtype is not None else arr.dtype.name == spec.dtype
            if not dtype_ok:
                raise InputError(f"input '{spec.name}' has dtype {arr.dtype.name}, expected {spec.dtype} "
                                 f"(convert it, e.g. x.astype(np.{spec.dtype}))")
            if arr.ndim != len(spec.shape):
                raise self._shape_error(spec, arr)
            for axis, (got, want) in enumerate(zip(arr.shape, spec.shape)):
                if isinstance(want, int):
                    if got != want:
                        raise self._shape_error(spec, arr)
                elif dims.is_symbol(want):
                    if want in bound:
                        size, source = bound[want]
                        if got != size:
                            raise InputError(f"input '{spec.name}' dim {axis} is {got} but '{want}' is {size} "
                                             f"from input '{source}'")
                    else:
                        bound[want] = (got, spec.name)
                else:
                    has_expressions = True
            arrays.append(arr if arr.flags.c_contiguous else np.ascontiguousarray(arr))

        for symbol, (size, source) in bound.items():
            lo, hi = self._dim_ranges.get(symbol, (0, None))
            if size < lo or (hi is not None and size > hi):
                axis = next(i for s in specs if s.name == source for i, d in enumerate(s.shape) if d == symbol)
                raise InputError(f"input '{source}' dim {axis} ('{symbol}') is {size}, outside the compiled range "
                                 f"[{lo}, {hi}]; recompile with a wider --dynamic range")
        if has_expressions:  # dims such as "seq*2": checked once every plain symbol is bound
            sizes = {k: v[0] for k, v in bound.items()}
            for spec, arr in zip(specs, arrays):
                for axis, (got, want) in enumerate(zip(arr.shape, spec.shape)):
                    if isinstance(want, str) and not dims.is_symbol(want):
                        try:
                            size = dims.evaluate(want, sizes)
                        except (KeyError, ValueError, ZeroDivisionError, SyntaxError, RecursionError, MemoryError):
                            continue  # a symbol no input binds on its own: the backend checks it
                        if got != size:
                            raise InputError(f"input '{spec.name}' dim {axis} is {got} but {want} is {size}")
        return arrays

    @staticmethod
    def _shape_error(spec: TensorSpec, arr: np.ndarray) -> InputError:
        return InputError(f"input '{spec.name}' has shape {_fmt_shape(arr.shape)}, expected {_fmt_shape(spec.shape)}")

    # -- describing ------------------------------------------------------------------------------
    def signature(self) -> str:
        """``"(x: float32[batch, 1000]) -> y: float32[batch, 1]"`` (several outputs in parentheses)."""
        ins = ", ".join(str(s) for s in self.inputs)
        outs = ", ".join(str(s) for s in self.outputs)
        return f"({ins}) -> {outs if len(self.outputs) == 1 else f'({outs})'}"

    def __repr__(self) -> str:
        return f"LoadedModel(target={self.target!r}, path={self.path!r}, {self.signature()})"
