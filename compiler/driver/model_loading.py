"""Turn the ``MODEL`` argument of ``compile MODEL ...`` into something the frontend can export.

``load_model_source(spec, weights=..., trust_pickle=..., input_shapes=...)`` returns a
``ModelSource``. The kind of model is detected from the file's *content* (its zip entries or
pickle header), not from its extension:

``exported_program``
    An archive written by ``torch.export.save(ep, path)`` (usually ``.pt2``; a zip whose entries
    include ``<dir>/archive_format`` holding ``pt2``). Loaded with ``torch.export.load``;
    ``exported_program`` is the loaded program and ``module`` is ``ep.module()`` without input
    guards and with working ``eval()`` (see ``_module_of``), for re-export. Example inputs:
    ``--input-shape`` if given, else the archive's saved ``ep.example_inputs`` (the positional
    part), else random tensors made from the user-input placeholders' static shapes.

``torchscript``
    An archive written by ``torch.jit.save`` (a zip with ``code/`` and ``constants.pkl``), loaded
    with ``torch.jit.load(path, map_location="cpu")``. ``--input-shape`` is required. In torch
    2.13 ``torch.export.export`` refuses a ``ScriptModule`` ("Exporting a ScriptModule is not
    supported"), so the module is converted here with
    ``torch._export.converter.TS2EPConverter(module, inputs).convert()`` and then re-exported
    (``torch.export.export(ep.module(), inputs, strict=False)``) so that the program has the
    static shapes of the inputs. ``exported_program`` is that program; ``module`` is its
    ``ep.module()`` (not the ScriptModule, which ``torch.export`` cannot trace), so a frontend
    that re-exports ``module`` (e.g. for a dynamic batch) still works.

``factory``
    ``path/to/file.py:Factory`` or ``package.module:Factory`` (a dotted module importable from
    ``sys.path`` or the current directory). A file is imported under a unique module name, with
    its directory on ``sys.path``. Calling convention: ``Factory`` is called with no arguments
    and returns either an ``nn.Module`` or a tuple ``(module, example_inputs)`` where
    ``example_inputs`` is a tensor or a tuple/list of tensors. Example inputs come from, in
    order: ``--input-shape``; the tuple form; the module's ``example_inputs()`` method (called
    with no arguments); otherwise loading fails asking for ``--input-shape``. With
    ``--weights state.pt`` a state dict is read with ``torch.load(..., weights_only=True)``
    (a dict with a ``"state_dict"`` key is unwrapped) and loaded with ``load_state_dict``
    (strict). ``--weights`` is rejected for every other kind (they carry their own weights).

``pickle``
    A whole module saved with ``torch.save(model, path)`` (zip with ``data.pkl``, or the legacy
    non-zip format). Unpickling runs arbitrary code, so it is loaded only with
    ``trust_pickle=True`` (``--trust-pickle``). A pickle holding only a state dict is detected
    with the safe ``weights_only`` unpickler, even without the flag, and rejected with a hint to
    use ``file.py:Factory --weights``. Example inputs as for a factory (``--input-shape`` or the
    module's ``example_inputs()`` method).

``module``
    ``source_from_module(module, example_inputs)`` for the Python API.

Every model is put in ``eval()`` mode (an ExportedProgram's mode is fixed when it was exported).
``--input-shape`` values (parsed by ``parse_input_shape``: ``1x3x224x224``, ``1,3,224,224``,
``2x32:int64``) replace any example inputs; their count must match the forward's arity when it
is known. Random inputs come from ``make_inputs`` (seeded: floats ``randn``, integers
``randint`` in ``[0, 10)``, bool random).

``sha256`` is the hash of the model file; for a factory, of its ``.py`` file (the weights file,
when given, is hashed into it too: ``sha256(py_sha + weights_sha)``); for a dotted module
without a file, of the spec text; for ``source_from_module``, of ``repr(module)`` followed by
every state-dict entry's name, dtype, shape and bytes in order. That last one is hashed in a
background thread from the moment the module is wrapped (the hashing releases the GIL): it runs
beside torch.export and the rest of the compile, and ``ModelSource.sha256`` waits for it.

Every problem with the user's input raises ``ModelLoadError`` with a one-line message; torch's
own errors are wrapped and only the first line of their message is kept.

Model files are hostile input (tests/test_fuzz_model_loading.py). Before torch reads a zip model
or ``--weights`` file, ``_check_archive_entries`` refuses entries with absolute or '..' names,
duplicate names, stored entries whose declared size differs from their data, and archives that
declare more than 200x their size (256 MiB floor: a decompression bomb); ``_check_storage_records``
reads ``data.pkl`` without running it and refuses a tensor storage larger than its ``data/<key>``
entry (torch.jit.load accepts one, and the first read of it is a segmentation fault).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import io
import keyword
import logging
import os
import pickle
import re
import sys
import threading
import traceback
import warnings
import zipfile
import zlib
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np
import torch

from compiler.driver.artifact import sha256_file
from compiler.errors import ModelLoadError, one_line
from compiler.hashing import PIECE, buffer_reader, combined_digest, piece_digests_many

if TYPE_CHECKING:  # pragma: no cover
    from torch.export import ExportedProgram

__all__ = [
    "ModelSource",
    "parse_input_shape",
    "load_model_source",
    "source_from_module",
    "make_inputs",
]

KINDS = ("exported_program", "torchscript", "factory", "pickle", "module")

_NOT_A_MODEL = ("expected a torch.export archive (.pt2), a TorchScript archive, file.py:Factory, "
                "or (with --trust-pickle) a pickled nn.Module")
_SHAPE_FORM = "expected dims joined by 'x' (or ',') and an optional ':dtype', e.g. 1x3x224x224, " \
              "1x3x224x224:float16 or 2x32:int64"


@dataclass
class ModelSource:
    """A model ready for the frontend: an eager module and/or an ExportedProgram plus inputs."""

    name: str
    kind: str
    module: torch.nn.Module | None
    exported_program: "ExportedProgram | None"
    example_inputs: tuple[torch.Tensor, ...] | None
    digest: "str | ModuleDigest"  # the source's sha256, or the background job computing it
    dynamic_dims: tuple = ()  # DynamicDim (compiler.driver.dynamic): the axes the user made symbolic

    @property
    def sha256(self) -> str:
        return self.digest if isinstance(self.digest, str) else self.digest.sha256()

    def known_pieces(self, part: memoryview) -> list[bytes] | None:
        """The piece digests of an artifact part that is a source tensor's bytes (see ModuleDigest)."""
        return None if isinstance(self.digest, str) else self.digest.known_pieces(part)


# --------------------------------------------------------------------------------------------
# Input shapes and random inputs
# --------------------------------------------------------------------------------------------

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "float": torch.float32, "fp32": torch.float32, "f32": torch.float32,
    "float16": torch.float16, "half": torch.float16, "fp16": torch.float16, "f16": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float64": torch.float64, "double": torch.float64, "fp64": torch.float64, "f64": torch.float64,
    "int64": torch.int64, "long": torch.int64, "i64": torch.int64,
    "int32": torch.int32, "int": torch.int32, "i32": torch.int32,
    "int16": torch.int16, "short": torch.int16, "i16": torch.int16,
    "int8": torch.int8, "i8": torch.int8,
    "uint8": torch.uint8, "u8": torch.uint8,
    "bool": torch.bool,
}


def parse_input_shape(text: str) -> tuple[tuple[int, ...], torch.dtype]:
    """Parse ``1x3x224x224``, ``1,3,224,224``, ``1x3x224x224:float16`` or ``2x32:int64``.

    The dtype defaults to float32. Bad text raises ``ModelLoadError`` showing the expected form.
    """
    if not isinstance(text, str):
        raise ModelLoadError(f"bad input shape {text!r}: {_SHAPE_FORM}")
    raw = text.strip()
    shape_part, sep, dtype_part = raw.partition(":")
    dtype = torch.float32
    if sep:
        key = dtype_part.strip().lower().removeprefix("torch.")
        if key not in _DTYPES:
            raise ModelLoadError(
                f"bad input shape {text!r}: unknown dtype {dtype_part.strip()!r} (use one of "
                f"float32, float16, bfloat16, float64, int64, int32, int16, int8, uint8, bool); "
                f"{_SHAPE_FORM}")
        dtype = _DTYPES[key]
    shape_part = shape_part.strip()
    if not shape_part:
        raise ModelLoadError(f"bad input shape {text!r}: {_SHAPE_FORM}")
    seps = set(re.findall(r"[xX,*]", shape_part))
    if len(seps - {"x", "X"}) > 1 or (("," in seps or "*" in seps) and seps & {"x", "X"}):
        raise ModelLoadError(f"bad input shape {text!r}: {_SHAPE_FORM}")
    dims: list[int] = []
    for piece in re.split(r"[xX,*]", shape_part):
        piece = piece.strip()
        if not piece.isdigit():
            raise ModelLoadError(f"bad input shape {text!r}: {_SHAPE_FORM}")
        value = int(piece)
        if value < 1:
            raise ModelLoadError(f"bad input shape {text!r}: dims must be positive; {_SHAPE_FORM}")
        dims.append(value)
    return tuple(dims), dtype


def make_inputs(shapes_and_dtypes: Iterable[tuple[Sequence[int], torch.dtype]],
                seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Seeded random CPU tensors: floats ``randn``, integers ``randint`` in [0, 10), bool random."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for shape, dtype in shapes_and_dtypes:
        shape = tuple(int(d) for d in shape)
        if dtype == torch.bool:
            t = torch.randint(0, 2, shape, generator=gen).bool()
        elif dtype.is_floating_point:
            t = torch.randn(shape, generator=gen, dtype=torch.float32).to(dtype)
        elif dtype.is_complex:
            t = torch.randn(shape, generator=gen, dtype=dtype)
        else:
            t = torch.randint(0, 10, shape, generator=gen, dtype=torch.int64).to(dtype)
        out.append(t)
    return tuple(out)


def _inputs_from_shapes(input_shapes: Sequence[str]) -> tuple[torch.Tensor, ...]:
    return make_inputs([parse_input_shape(s) for s in input_shapes])


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------

def _first_line(exc: BaseException) -> str:
    msg = str(exc).strip()
    line = msg.splitlines()[0].strip() if msg else ""
    line = re.sub(r"\x1b\[[0-9;]*m", "", line)  # ANSI colour codes some torch messages carry
    if len(line) > 300:
        line = line[:297] + "..."
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def _path_test(path: Path, test) -> bool:
    """``test(path)`` (e.g. ``Path.exists``), False for a name the system cannot look up (too
    long, a NUL byte): such a spec is then reported as not found, like any missing file."""
    try:
        return test(path)
    except (OSError, ValueError):
        return False


def _shown(name: str, limit: int = 200) -> str:
    """``name`` for a message: control characters (a newline) escaped, a name too long to be a
    file cut in the middle."""
    if not name.isprintable():
        name = repr(name)[1:-1]
    return name if len(name) <= limit else f"{name[:limit // 2]}...{name[-limit // 2:]}"


class ModuleDigest:
    """The sha256 of an in-memory module (``repr`` and state dict, see ``_module_sha256``), hashed
    in a background thread from the moment the module is wrapped: it runs beside torch.export and
    the rest of the compile (the hashing releases the GIL; a 2.2 GB model's took 0.6 s). Its
    tensors' piece digests are kept, so the artifact writer does not hash those bytes again where
    it stores a tensor unchanged (``known_pieces``)."""

    def __init__(self, module: torch.nn.Module):
        head, entries = _module_state_bytes(module)
        # (address, size) of each viewed tensor's bytes -> the tensor and its version when hashed
        self._versions = {(data.ctypes.data, data.nbytes): (t, t._version) for _, data, t in entries if t is not None}
        self._result: Future[tuple[str, dict]] = Future()

        def run() -> None:
            try:
                self._result.set_result(_module_sha256(head, entries))
            except BaseException as e:  # noqa: BLE001 - handed to whoever waits for the digest
                self._result.set_exception(e)

        threading.Thread(target=run, name="source-sha256", daemon=True).start()

    def sha256(self) -> str:
        return self._result.result()[0]

    def known_pieces(self, part: memoryview) -> list[bytes] | None:
        """The piece digests of ``part`` when it is exactly a state-dict tensor's bytes, hashed
        and still unchanged (no in-place write since: its version counter)."""
        key = (np.frombuffer(part, np.uint8).ctypes.data, part.nbytes)
        pieces = self._result.result()[1].get(key)
        if pieces is None:
            return None
        tensor, version = self._versions[key]
        return pieces if tensor._version == version else None


def _module_state_bytes(module: torch.nn.Module) -> tuple[bytes, list[tuple[bytes, Any, torch.Tensor | None]]]:
    """The module's repr, and each state-dict entry's name, dtype and shape with its bytes (a view
    of the tensor's memory; None for a non-tensor entry) and the tensor whose memory it views."""
    try:
        state = module.state_dict()
    except Exception:  # noqa: BLE001 - hashing must not fail on odd modules
        state = {}
    entries = []
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            entries.append((key.encode(), None, None))
            continue
        t = value.detach().cpu()
        try:
            t = t.contiguous()
            data, viewed = t.reshape(-1).view(torch.uint8).numpy(), t
        except Exception:  # noqa: BLE001 - a dtype numpy cannot view, a sparse layout
            data, viewed = _fallback_bytes(t), None
        entries.append((key.encode() + f"{t.dtype}{tuple(t.shape)}".encode(), data, viewed))
    return repr(module).encode(), entries


def _fallback_bytes(t: torch.Tensor) -> bytes:
    """Bytes standing for a tensor that has no plain memory view (sparse layouts, odd dtypes)."""
    try:
        return repr(t.to_dense().tolist() if t.layout != torch.strided else t.tolist()).encode()
    except Exception:  # noqa: BLE001 - hashing must not fail on odd tensors
        return repr((t.layout, t.dtype, tuple(t.shape))).encode()


def _module_sha256(head: bytes, entries: list[tuple[bytes, Any, Any]]) -> tuple[str, dict]:
    """sha256 of the module's repr and its state dict: each tensor's name, dtype, shape and the
    piecewise digest of its bytes (``compiler.hashing``: hashed in place, on every core; a 2 GB
    model took 3 s here through a bytes copy of each tensor on one core); and {(address, size) of
    each tensor's bytes: its pieces' digests}."""
    h = hashlib.sha256(head)
    hashed = [(header, data) for header, data, _ in entries if data is not None]
    sizes = [memoryview(data).nbytes for _, data in hashed]
    pieces = piece_digests_many([(size, buffer_reader(data)) for size, (_, data) in zip(sizes, hashed)], PIECE)
    known = {}
    digests = iter(combined_digest(PIECE, size, ds) for size, ds in zip(sizes, pieces))
    for (_, data), size, ds in zip(hashed, sizes, pieces):
        if isinstance(data, np.ndarray):
            known[(data.ctypes.data, size)] = ds
    for header, data, _ in entries:
        h.update(header)
        if data is not None:
            h.update(next(digests).encode())
    return h.hexdigest(), known


@contextlib.contextmanager
def _quiet_torch():
    """Silence the deprecation warnings and 'specialized' log lines of jit/export helpers."""
    loggers = [logging.getLogger(n) for n in
               ("torch._export.non_strict_utils", "torch._export.converter", "torch.export",
                "torch._dynamo", "torch.fx.experimental.symbolic_shapes")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def _module_of(ep: "ExportedProgram") -> torch.nn.Module | None:
    """``ep.module()`` made re-exportable: no guard submodule (so a dynamic-batch re-export with
    another batch size works) and the usual ``train()``/``eval()`` (``ep.module()`` replaces them
    with methods that raise; the mode is baked into the graph, so they only set flags)."""
    try:
        try:
            module = ep.module(check_guards=False)
        except TypeError:  # older torch: no check_guards
            module = ep.module()
    except Exception:  # noqa: BLE001 - the program itself is what the frontend needs
        return None
    for attr in ("train", "eval"):
        if attr in vars(module):
            delattr(module, attr)
    return module


def _set_eval(module: torch.nn.Module | None) -> None:
    if module is None:
        return
    try:
        module.eval()
    except (NotImplementedError, RuntimeError):
        pass  # ep.module(): "Calling eval() is not supported yet"; the mode is baked in.


def _normalize_inputs(value: Any, what: str) -> tuple[torch.Tensor, ...]:
    if isinstance(value, torch.Tensor):
        return (value,)
    if isinstance(value, (tuple, list)):
        return tuple(value)
    raise ModelLoadError(f"{what} must be a tensor or a tuple of tensors, got "
                         f"{type(value).__name__}")


def _forward_arity(module: torch.nn.Module) -> tuple[int, float] | None:
    """(min, max) number of positional inputs the module's forward takes, or None if unknown."""
    fwd = getattr(module, "forward", None)
    if fwd is None:
        return None
    schema = getattr(fwd, "schema", None)  # torch.jit.ScriptMethod
    if schema is not None:
        try:
            args = [a for a in schema.arguments if a.name != "self" and not a.kwarg_only]
            required = sum(1 for a in args if not a.has_default_value())
            return required, len(args)
        except Exception:  # noqa: BLE001
            return None
    try:
        sig = inspect.signature(fwd)
    except (TypeError, ValueError):
        return None
    lo, hi = 0, 0.0
    for p in sig.parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            hi += 1
            if p.default is p.empty:
                lo += 1
        elif p.kind is p.VAR_POSITIONAL:
            hi = float("inf")
    return lo, hi


def _check_arity(name: str, module: torch.nn.Module, inputs: tuple, from_shapes: bool) -> None:
    arity = _forward_arity(module)
    if arity is None:
        return
    lo, hi = arity
    n = len(inputs)
    if lo <= n <= hi:
        return
    expected = str(lo) if lo == hi else (f"at least {lo}" if hi == float("inf")
                                         else f"{lo} to {int(hi)}")
    given = f"{n} --input-shape value{'s' if n != 1 else ''} were given" if from_shapes \
        else f"{n} example input{'s' if n != 1 else ''} were given"
    raise ModelLoadError(f"{name}: forward takes {expected} input(s) but {given}")


# --------------------------------------------------------------------------------------------
# Content detection
# --------------------------------------------------------------------------------------------

def _detect_file_kind(path: Path) -> str:
    """'exported_program' | 'torchscript' | 'pickle' | 'python'; raises for the rest."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except IsADirectoryError:
        raise ModelLoadError(f"{path} is a directory, not a model file: {_NOT_A_MODEL}") from None
    except OSError as e:
        raise ModelLoadError(f"could not read {path}: {_first_line(e)}") from None
    if not head:
        raise ModelLoadError(f"could not read {path}: file is truncated or corrupt (file is empty)")
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as zf:
                _check_archive_entries(path, zf)
                _check_storage_records(path, zf)
                names = zf.namelist()
                entries = {n.split("/", 1)[1] if "/" in n else n: n for n in names}
                if "archive_format" in entries:
                    with zf.open(entries["archive_format"]) as f:
                        fmt = f.read(64).strip()  # a few bytes: the entry may be a bomb
                    if fmt == b"pt2":
                        return "exported_program"
                if any(n.startswith("models/") and n.endswith(".json") for n in entries) or \
                        "serialized_exported_program.json" in entries:
                    return "exported_program"
                if "constants.pkl" in entries and any(n.startswith("code/") for n in entries):
                    return "torchscript"
                if "data.pkl" in entries:
                    return "pickle"
        # NotImplementedError: an unknown zip version or compression method; RuntimeError: an
        # encrypted entry; zlib.error: damaged deflate data.
        except (zipfile.BadZipFile, EOFError, ValueError, OSError, KeyError, NotImplementedError,
                RuntimeError, zlib.error) as e:
            raise ModelLoadError(
                f"could not read {path}: file is truncated or corrupt ({_first_line(e)}); "
                f"{_RESAVE}") from None
        raise ModelLoadError(f"{path} is a zip archive but not a model file: {_NOT_A_MODEL}")
    if head[0] == 0x80 and len(head) > 1 and 2 <= head[1] <= 5:
        return "pickle"  # legacy (non-zip) torch.save or plain pickle
    if path.suffix == ".py":
        return "python"
    raise ModelLoadError(f"{path} is not a model file: {_NOT_A_MODEL}")


# torch.save and torch.export.save store entries uncompressed; a model file that expands to more
# than this (the same rule as for artifacts) is a decompression bomb, refused before reading it.
_MAX_EXPANSION = 200
_EXPANSION_FLOOR = 256 << 20
_RESAVE = "save the model again (torch.export.save, torch.jit.save or torch.save)"


def _unsafe_entry_name(name: str) -> bool:
    """An absolute (or Windows drive) path, a '..' component or a control character: no archive
    torch writes has one, and a reader that extracts entries could write outside its directory.
    (A bare 'C:' is allowed: torch names entries after the saved file, which may hold a colon.)"""
    return (name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:[/\\]", name) is not None
            or ".." in re.split(r"[/\\]", name) or any(ord(c) < 0x20 for c in name))


def _check_archive_entries(path: Path, zf: zipfile.ZipFile) -> None:
    """Refuse a model archive with unsafe or duplicate entry names, or whose declared sizes lie
    (a stored entry of another size than its data) or expand far beyond the file (a zip bomb)."""
    infos = zf.infolist()
    names = [i.filename for i in infos]
    bad = next((n for n in names if _unsafe_entry_name(n)), None)
    if bad is not None:
        raise ModelLoadError(f"{path} is not a valid model archive: entry {bad!r} is an absolute "
                             f"or '..' path; {_RESAVE}")
    if len(set(names)) != len(names):
        twin = next(n for n in names if names.count(n) > 1)
        raise ModelLoadError(f"{path} is not a valid model archive: entry {twin!r} appears more "
                             f"than once; {_RESAVE}")
    lying = next((i.filename for i in infos if i.compress_type == zipfile.ZIP_STORED
                  and i.file_size != i.compress_size), None)
    if lying is not None:
        raise ModelLoadError(f"could not read {path}: file is truncated or corrupt (entry "
                             f"{lying!r} declares another size than it stores); {_RESAVE}")
    declared = sum(i.file_size for i in infos)
    limit = max(_EXPANSION_FLOOR, _MAX_EXPANSION * path.stat().st_size)
    if declared > limit:
        raise ModelLoadError(f"{path} is not a valid model archive: its entries declare "
                             f"{declared} bytes, more than {_MAX_EXPANSION}x the file (a "
                             f"decompression bomb?); {_RESAVE}")


class _Inert:
    """Stands for every class a scanned pickle names: built from anything, holds nothing."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, value):
        pass

    def extend(self, values):
        pass


class _StorageScan(pickle.Unpickler):
    """Reads ``data.pkl`` without running any of it, noting each storage it refers to as
    ``(key, bytes)``; no class is imported except torch's storage types (for their item size)."""

    def __init__(self, data: bytes):
        super().__init__(io.BytesIO(data))
        self.storages: list[tuple[str, int]] = []

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name.endswith("Storage"):
            if name == "UntypedStorage":
                return 1
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TypedStorage is deprecated
                dtype = getattr(getattr(torch, name, None), "dtype", None)
            return dtype.itemsize if isinstance(dtype, torch.dtype) else _Inert
        return _Inert

    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and \
                isinstance(pid[1], int) and isinstance(pid[4], int):
            self.storages.append((str(pid[2]), pid[1] * pid[4]))
        return None


def _check_storage_records(path: Path, zf: zipfile.ZipFile) -> None:
    """Refuse an archive whose ``data.pkl`` declares a tensor storage larger than its
    ``data/<key>`` entry. torch.jit.load builds such a storage over the short entry without a
    word, and the first read of it crashes the process (a segmentation fault)."""
    infos = {i.filename: i for i in zf.infolist()}
    pickles = [n for n in infos if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1 or infos[pickles[0]].file_size > 64 << 20:
        return
    prefix = pickles[0][: -len("data.pkl")]
    scan = _StorageScan(zf.read(pickles[0]))
    try:
        scan.load()
    except Exception:  # noqa: BLE001 - a pickle that does not parse: torch refuses it, in one line
        return
    for key, nbytes in scan.storages:
        record = infos.get(f"{prefix}data/{key}")
        if record is None or record.file_size < nbytes:
            have = "is missing" if record is None else f"holds {record.file_size}"
            raise ModelLoadError(f"could not read {path}: file is truncated or corrupt (tensor "
                                 f"data {key!r} needs {nbytes} bytes but its entry {have}); "
                                 f"{_RESAVE}")


def _looks_like_factory(spec: str) -> tuple[str, str] | None:
    if ":" not in spec:
        return None
    left, attr = spec.rsplit(":", 1)
    if not left or not attr:
        return None
    if not all(part.isidentifier() and not keyword.iskeyword(part) for part in attr.split(".")):
        return None
    return left, attr


# --------------------------------------------------------------------------------------------
# Loaders per kind
# --------------------------------------------------------------------------------------------

def _load_exported_program(path: Path, input_shapes: list[str] | None) -> ModelSource:
    try:
        with _quiet_torch():
            ep = torch.export.load(str(path))
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(
            f"could not read {path}: file is truncated or corrupt ({_first_line(e)})") from None

    sig = ep.graph_signature
    user_names = list(sig.user_inputs)
    placeholders = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    vals = [placeholders[n].meta.get("val") if n in placeholders else None for n in user_names]

    if input_shapes:
        inputs = _inputs_from_shapes(input_shapes)
        if len(inputs) != len(user_names):
            raise ModelLoadError(
                f"{path}: the exported program takes {len(user_names)} input(s) but "
                f"{len(inputs)} --input-shape value(s) were given")
        for i, (t, val) in enumerate(zip(inputs, vals)):
            if not isinstance(val, torch.Tensor):
                continue
            want = tuple(val.shape)
            if len(want) != t.dim() or any(isinstance(w, int) and w != g
                                           for w, g in zip(want, t.shape)):
                shown = "x".join(str(d) if isinstance(d, int) else "?" for d in want) or "scalar"
                raise ModelLoadError(
                    f"{path}: input {i} was exported with shape {shown} but --input-shape gave "
                    f"{'x'.join(map(str, t.shape))}; re-export with that shape or dynamic dims")
            if t.dtype != val.dtype:
                raise ModelLoadError(
                    f"{path}: input {i} was exported as {str(val.dtype).removeprefix('torch.')} "
                    f"but --input-shape gave {str(t.dtype).removeprefix('torch.')}; add "
                    f":{str(val.dtype).removeprefix('torch.')} to that --input-shape")
    else:
        inputs = None
        saved = getattr(ep, "example_inputs", None)
        if saved is not None:
            args = saved[0] if isinstance(saved, tuple) and len(saved) == 2 and \
                isinstance(saved[1], dict) else saved
            args = tuple(args)
            if len(args) == len(user_names) and all(isinstance(a, torch.Tensor) for a in args):
                inputs = args
        if inputs is None:
            specs = []
            for name, val in zip(user_names, vals):
                if not isinstance(val, torch.Tensor) or \
                        not all(isinstance(d, int) for d in val.shape):
                    raise ModelLoadError(
                        f"{path} has no saved example inputs and input {name!r} has no static "
                        f"shape; pass --input-shape for each input, e.g. --input-shape 1x3x224x224")
                specs.append((tuple(val.shape), val.dtype))
            inputs = make_inputs(specs)

    module = _module_of(ep)
    _set_eval(module)
    return ModelSource(name=path.stem, kind="exported_program", module=module,
                       exported_program=ep, example_inputs=inputs, digest=sha256_file(path))


def _convert_torchscript(path: Path, module: torch.nn.Module,
                         inputs: tuple[torch.Tensor, ...]) -> "ExportedProgram":
    try:
        from torch._export.converter import TS2EPConverter
    except ImportError as e:
        raise ModelLoadError(
            f"{path}: this torch has no TorchScript converter ({_first_line(e)}); re-save the "
            f"model with torch.export.save") from None
    with _quiet_torch(), torch.no_grad():
        try:
            ep = TS2EPConverter(module, inputs).convert()
        except Exception as e:  # noqa: BLE001
            raise ModelLoadError(
                f"{path}: could not convert the TorchScript module to an ExportedProgram "
                f"({_first_line(e)}); check --input-shape or re-save with torch.export.save"
            ) from None
        # The converter marks every dim dynamic (Dim.AUTO); re-export for static input shapes.
        converted = _module_of(ep)
        if converted is not None:
            try:
                with torch.no_grad():
                    ep = torch.export.export(converted.eval(), inputs, strict=False)
            except Exception:  # noqa: BLE001 - keep the converter's (dynamic) program
                pass
    return ep


def _load_torchscript(path: Path, input_shapes: list[str] | None) -> ModelSource:
    try:
        with _quiet_torch():
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(
            f"could not read {path}: file is truncated or corrupt ({_first_line(e)})") from None
    _set_eval(module)
    if not input_shapes:
        raise ModelLoadError(
            f"{path} is a TorchScript archive, which records no input shapes; pass one "
            f"--input-shape per input, e.g. --input-shape 1x3x224x224")
    inputs = _inputs_from_shapes(input_shapes)
    _check_arity(str(path), module, inputs, from_shapes=True)
    ep = _convert_torchscript(path, module, inputs)
    exportable = _module_of(ep)
    _set_eval(exportable)
    return ModelSource(name=path.stem, kind="torchscript", module=exportable, exported_program=ep,
                       example_inputs=inputs, digest=sha256_file(path))


def _module_inputs(name: str, module: torch.nn.Module, input_shapes: list[str] | None,
                   given: tuple | None) -> tuple[torch.Tensor, ...]:
    """Example inputs for an eager module: --input-shape, given, module.example_inputs()."""
    if input_shapes:
        inputs = _inputs_from_shapes(input_shapes)
        _check_arity(name, module, inputs, from_shapes=True)
        return inputs
    if given is not None:
        inputs = _normalize_inputs(given, f"{name}: the example inputs")
    elif callable(getattr(module, "example_inputs", None)):
        try:
            value = module.example_inputs()
        except Exception as e:  # noqa: BLE001
            raise ModelLoadError(f"{name}: example_inputs() failed: {_first_line(e)}") from None
        inputs = _normalize_inputs(value, f"{name}: example_inputs()")
    else:
        raise ModelLoadError(
            f"{name}: no example inputs (the factory returned no (module, inputs) tuple and the "
            f"module has no example_inputs() method); pass --input-shape, e.g. "
            f"--input-shape 1x3x224x224")
    _check_arity(name, module, inputs, from_shapes=False)
    return inputs


def _refuse_pickle_message(path: Path) -> str:
    return (f"{path} is a pickled module and loading it would execute arbitrary code; re-run with "
            f"--trust-pickle if you trust the file, or save it with torch.export.save, or provide "
            f"a factory file.py:Factory with --weights state.pt")


def _weights_only_message(path: Path) -> str:
    return (f"{path} holds only weights (a state dict), not a model; give the model as a factory "
            f"file.py:Factory and pass this file with --weights {path}")


def _load_pickle(path: Path, trust_pickle: bool, input_shapes: list[str] | None) -> ModelSource:
    # First the safe unpickler: it tells a state dict from a pickled object without running code.
    safe_error: BaseException | None = None
    try:
        with _quiet_torch():
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        safe_error = e
        obj = None
    if safe_error is None:
        if isinstance(obj, Mapping):
            raise ModelLoadError(_weights_only_message(path))
        if not isinstance(obj, torch.nn.Module):
            raise ModelLoadError(f"{path} holds a {type(obj).__name__}, not a model: "
                                 f"{_NOT_A_MODEL}")
    else:
        if not isinstance(safe_error, pickle.UnpicklingError):
            raise ModelLoadError(f"could not read {path}: file is truncated or corrupt "
                                 f"({_first_line(safe_error)})")
        if not trust_pickle:
            raise ModelLoadError(_refuse_pickle_message(path))
        try:
            with _quiet_torch():
                obj = torch.load(str(path), map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001
            raise ModelLoadError(f"could not unpickle {path}: {_first_line(e)} (the classes it "
                                 f"uses must be importable; prefer torch.export.save)") from None
    if isinstance(obj, Mapping):
        raise ModelLoadError(_weights_only_message(path))
    if not isinstance(obj, torch.nn.Module):
        raise ModelLoadError(f"{path} holds a {type(obj).__name__}, not an nn.Module: "
                             f"{_NOT_A_MODEL}")
    if isinstance(obj, torch.jit.ScriptModule):
        raise ModelLoadError(f"{path} holds a pickled TorchScript module; save it with "
                             f"torch.jit.save or torch.export.save instead")
    _set_eval(obj)
    inputs = _module_inputs(str(path), obj, input_shapes, None)
    return ModelSource(name=path.stem, kind="pickle", module=obj, exported_program=None,
                       example_inputs=inputs, digest=sha256_file(path))


def _error_location(exc: BaseException, filename: str) -> str:
    if isinstance(exc, SyntaxError) and exc.lineno:
        return f":{exc.lineno}"
    lineno = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if os.path.abspath(frame.filename) == filename:
            lineno = frame.lineno
    return f":{lineno}" if lineno else ""


@contextlib.contextmanager
def _on_sys_path(directory: str):
    added = directory not in sys.path
    if added:
        sys.path.insert(0, directory)
    try:
        yield
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(directory)


def _import_factory_file(path: Path) -> Any:
    abspath = str(path.resolve())
    digest = hashlib.sha256(abspath.encode()).hexdigest()[:12]
    stem = re.sub(r"\W", "_", path.stem)
    mod_name = f"_compiler_factory_{stem}_{digest}"
    spec = importlib.util.spec_from_file_location(mod_name, abspath)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"could not import {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module  # dataclasses/pickle look classes up in sys.modules
    try:
        with _on_sys_path(str(path.resolve().parent)):
            spec.loader.exec_module(module)
    except (Exception, SystemExit) as e:  # noqa: BLE001
        sys.modules.pop(mod_name, None)
        where = _error_location(e, abspath)
        raise ModelLoadError(f"could not import {path}{where}: {_first_line(e)}") from None
    return module


def _import_factory_module(dotted: str) -> Any:
    cwd = os.getcwd()
    try:
        with _on_sys_path(cwd):
            return importlib.import_module(dotted)
    except ModuleNotFoundError as e:
        if e.name and (dotted == e.name or dotted.startswith(e.name + ".")):
            raise ModelLoadError(
                f"model file not found: {_shown(dotted)!r} is neither a file nor an importable module "
                f"(give path/to/file.py:Factory or package.module:Factory)") from None
        raise ModelLoadError(f"could not import {dotted}: {_first_line(e)}") from None
    except (Exception, SystemExit) as e:  # noqa: BLE001
        raise ModelLoadError(f"could not import {dotted}: {_first_line(e)}") from None


def _check_weights_archive(wpath: Path) -> None:
    """The archive checks of model files (names, sizes, bombs) for a zip ``--weights`` file."""
    try:
        if not zipfile.is_zipfile(wpath):
            return  # a legacy torch.save file: torch.load reports what is wrong with it
        with zipfile.ZipFile(wpath) as zf:
            _check_archive_entries(wpath, zf)
            _check_storage_records(wpath, zf)
    except ModelLoadError as e:
        raise ModelLoadError(f"weights file {e}") from None
    except (zipfile.BadZipFile, EOFError, ValueError, OSError, NotImplementedError,
            RuntimeError) as e:
        raise ModelLoadError(f"could not read weights file {wpath}: file is truncated or corrupt "
                             f"({_first_line(e)}); save model.state_dict() again") from None


def _load_state_dict_file(weights: str) -> Mapping:
    wpath = Path(weights)
    if not _path_test(wpath, Path.exists):
        raise ModelLoadError(f"weights file not found: {_shown(weights)}")
    if _path_test(wpath, Path.is_dir):
        raise ModelLoadError(f"weights file {weights} is a directory")
    _check_weights_archive(wpath)
    try:
        with _quiet_torch():
            sd = torch.load(str(wpath), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ModelLoadError(
            f"weights file {weights} is not a plain state dict (it is a pickled object, e.g. a "
            f"whole module, which weights_only loading refuses); save model.state_dict() "
            f"instead") from None
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"could not read weights file {weights}: {_first_line(e)}") from None
    if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping) or not all(isinstance(k, str) for k in sd):
        raise ModelLoadError(f"weights file {weights} holds a {type(sd).__name__}, not a state "
                             f"dict; save model.state_dict()")
    return sd


def _check_no_complex_into_real(weights: str, sd: Mapping, module: torch.nn.Module,
                                where: str) -> None:
    """load_state_dict casts a complex tensor into a real parameter with only a warning,
    dropping the imaginary part; refuse it instead."""
    target = module.state_dict()
    for key, value in sd.items():
        if isinstance(value, torch.Tensor) and value.is_complex() and key in target and \
                isinstance(target[key], torch.Tensor) and not target[key].is_complex():
            raise ModelLoadError(
                f"weights file {weights} does not fit {where}: {key!r} is "
                f"{str(value.dtype).removeprefix('torch.')} but the module's is "
                f"{str(target[key].dtype).removeprefix('torch.')}; save real-valued weights")


def _load_factory(spec: str, left: str, attr: str, weights: str | None,
                  input_shapes: list[str] | None) -> ModelSource:
    file_path = Path(left)
    is_file = _path_test(file_path, Path.is_file)
    if is_file:
        mod = _import_factory_file(file_path)
        sha = sha256_file(file_path)
        where = str(file_path)
    elif left.endswith(".py") or os.sep in left or "/" in left:
        raise ModelLoadError(f"model file not found: {_shown(left)}")
    elif all(p.isidentifier() for p in left.split(".")):
        mod = _import_factory_module(left)
        mod_file = getattr(mod, "__file__", None)
        sha = sha256_file(Path(mod_file)) if mod_file and Path(mod_file).is_file() \
            else hashlib.sha256(spec.encode()).hexdigest()
        where = left
    else:
        raise ModelLoadError(f"model file not found: {_shown(left)}")

    obj: Any = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelLoadError(f"{where} has no attribute {attr!r} (the factory named in "
                                 f"{spec})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelLoadError(f"{where}:{attr} is a {type(obj).__name__}, not a callable factory")
    try:
        with _on_sys_path(str(file_path.resolve().parent)) if is_file \
                else contextlib.nullcontext():
            result = obj()
    except (Exception, SystemExit) as e:  # noqa: BLE001
        loc = _error_location(e, str(file_path.resolve())) if is_file else ""
        raise ModelLoadError(f"{where}{loc}: calling {attr}() failed: {_first_line(e)}") from None

    given = None
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], torch.nn.Module):
        result, given = result
    if not isinstance(result, torch.nn.Module):
        raise ModelLoadError(f"{where}:{attr}() returned a {type(result).__name__}; it must return "
                             f"an nn.Module or a tuple (module, example_inputs)")
    module = result
    if weights is not None:
        sd = _load_state_dict_file(weights)
        _check_no_complex_into_real(weights, sd, module, f"{where}:{attr}")
        try:
            module.load_state_dict(sd, strict=True)
        except Exception as e:  # noqa: BLE001
            raise ModelLoadError(f"weights file {weights} does not fit {where}:{attr}: "
                                 f"{one_line(e, 400)}") from None
        sha = hashlib.sha256((sha + sha256_file(Path(weights))).encode()).hexdigest()
    _set_eval(module)
    inputs = _module_inputs(f"{where}:{attr}", module, input_shapes, given)
    return ModelSource(name=attr.split(".")[-1], kind="factory", module=module,
                       exported_program=None, example_inputs=inputs, digest=sha)


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------

def load_model_source(spec: str, *, weights: str | None = None, trust_pickle: bool = False,
                      input_shapes: list[str] | None = None) -> ModelSource:
    """Load the CLI's MODEL argument; raise ``ModelLoadError`` (one line) for any problem."""
    try:
        return _load_model_source(spec, weights, trust_pickle, input_shapes)
    except ModelLoadError as e:
        message = str(e)
        if "\n" in message or "\r" in message or len(message) > _MAX_MESSAGE:
            # A file name with a newline, or a long one, in a message: still one line.
            raise ModelLoadError(one_line(message, _MAX_MESSAGE)) from None
        raise


_MAX_MESSAGE = 1000


def _load_model_source(spec: str, weights: str | None, trust_pickle: bool,
                       input_shapes: list[str] | None) -> ModelSource:
    if not isinstance(spec, str) or not spec.strip():
        raise ModelLoadError(f"no model given: {_NOT_A_MODEL}")
    spec = spec.strip()
    if input_shapes:
        for text in input_shapes:  # report bad shape text before any heavy loading
            parse_input_shape(text)
    path = Path(spec)

    if not _path_test(path, Path.exists):
        factory = _looks_like_factory(spec)
        if factory is not None:
            return _load_factory(spec, factory[0], factory[1], weights, input_shapes)
        raise ModelLoadError(f"model file not found: {_shown(spec)}")

    kind = _detect_file_kind(path)
    if kind == "python":
        raise ModelLoadError(f"{path} is a Python file: name the factory to call, as "
                             f"{path}:Factory (called with no arguments, returns an nn.Module)")
    if weights is not None:
        what = {"exported_program": "a torch.export archive", "torchscript": "a TorchScript archive",
                "pickle": "a pickled model"}[kind]
        raise ModelLoadError(f"--weights applies only to a factory (file.py:Factory); {path} is "
                             f"{what}, which carries its own weights")
    if kind == "exported_program":
        return _load_exported_program(path, input_shapes)
    if kind == "torchscript":
        return _load_torchscript(path, input_shapes)
    return _load_pickle(path, trust_pickle, input_shapes)


def source_from_module(module: torch.nn.Module, example_inputs: Any) -> ModelSource:
    """Wrap an in-memory module (Python API). ``sha256`` hashes repr + state dict (see above)."""
    if not isinstance(module, torch.nn.Module):
        raise ModelLoadError(f"expected an nn.Module, got {type(module).__name__}")
    _set_eval(module)
    name = type(module).__name__
    inputs = None if example_inputs is None else \
        _normalize_inputs(example_inputs, f"{name}: example_inputs")
    if inputs is None and callable(getattr(module, "example_inputs", None)):
        inputs = _module_inputs(name, module, None, None)
    if inputs is not None:
        _check_arity(name, module, inputs, from_shapes=False)
    return ModelSource(name=name, kind="module", module=module, exported_program=None,
                       example_inputs=inputs, digest=ModuleDigest(module))
