"""Weights as parameters: the big constants of a built Relax ``main`` lifted into parameters.

``lift_constants(mod, sink)`` runs on the module the pipeline is about to compile (every rewrite
done: weights packed into GEMM panels, Winograd-transformed, folded), so the constants it lifts
are exactly the arrays the kernels read. Each constant of at least ``MIN_BYTES`` (one object used
in several places is lifted once), when they add up to ``MIN_TOTAL_BYTES``, becomes a parameter
of ``main`` after the graph inputs (attribute ``num_input`` = the inputs' count, TVM's convention
for "the rest are weights"), and its array goes to ``sink`` in parameter order. The library then
holds code and small constants only; the artifact stores the arrays once (``weights_payload``:
``weights.bin`` + ``weights.json``) and the runtime passes them after the inputs on every call
(``runtime.py``).

Without this the VM executable serialized every constant into the shared library: the weights
were in each CPU variant's ``.so`` (twice per portable artifact) and were copied at load.

``DeferredWeights`` keeps the builds from making packed copies of big weights at all. The CPU
variants are built in forked processes from one prepared module; each packs its GEMM weights into
panels of its own width (gemm.py), a full copy of the weights per build, only for the parent to
write it out. Instead the prepared module's big constants are registered before the builds start
(the *sources*, shared with the children by fork), and a build's GEMM rewrite puts a
*placeholder* in the module where the packed weight would go: an uninitialised array of the
packed shape whose pages are never touched (no memory), standing for "source i packed in panels
of P columns, zero-padded to N". The placeholder is always lifted (the kernel takes it as a
parameter), the build records its recipe instead of saving it, and the parent makes the packed
bytes from its source a few panels at a time while the artifact is written (``PanelPacked``).
Measured on a 205 MB MLP (two variants built side by side, ``tests/test_tvm_compile_memory.py``):
the memory compiling adds, process tree included, 3.9x -> 1.25x the parameter bytes; on a 400 MB
one the builds took 4 s instead of 0.3 s (they no longer pack 400 MB each).
"""

from __future__ import annotations

import json
import os

import numpy as np

from compiler.weight_table import TENSOR_ALIGN, WEIGHTS_FILE, WEIGHTS_TABLE, WeightWriter

# Constants below this (biases, norm scales) stay in the library: lifting them would save little
# and add a parameter to every call.
MIN_BYTES = 4096
# A module whose liftable constants add up to less keeps them all: a small model stays one
# library (as the ONNX target keeps small models' weights in model.onnx), at no cost to load.
MIN_TOTAL_BYTES = 1 << 20
# dtypes the artifact's table and the runtime's numpy views can hold (bfloat16 etc. stay inline).
_LIFTABLE_KINDS = {"b", "i", "u", "f"}


def lift_constants(mod, sink, min_bytes: int | None = None, min_total: int | None = None,
                   func_name: str = "main", forced=None):
    """``mod`` with ``func_name``'s constants of at least ``min_bytes`` as trailing parameters,
    when they add up to ``min_total`` or more; ``sink(array)`` gets each one's array (numpy, C
    order, possibly a view of the constant's memory: valid during the call only) in parameter
    order. ``forced(tensor)``: true for constants lifted whatever the thresholds (placeholders, whose
    contents must never reach a library). Returns (module, count); ``mod`` itself when nothing is
    lifted."""
    import tvm
    from tvm import relax

    min_bytes = MIN_BYTES if min_bytes is None else min_bytes
    min_total = MIN_TOTAL_BYTES if min_total is None else min_total
    gv = mod.get_global_var(func_name)
    func = mod[gv]
    lifted: dict = {}  # the Constant object -> its parameter Var

    def size(const) -> int:
        """The constant's bytes if it may be lifted, else 0."""
        data = const.value
        if not isinstance(data, tvm.runtime.Tensor) or len(data.shape) == 0:  # scalars, strings: not weights
            return 0
        try:
            dtype = np.dtype(str(data.dtype))
        except TypeError:
            return 0
        nbytes = int(np.prod([int(d) for d in data.shape], dtype=np.int64)) * dtype.itemsize
        if dtype.kind in _LIFTABLE_KINDS and forced is not None and forced(data):
            return max(nbytes, min_total, 1)
        return nbytes if dtype.kind in _LIFTABLE_KINDS and nbytes >= min_bytes else 0

    def liftable(const) -> bool:
        return size(const) > 0

    found: dict = {}

    def visit(expr):
        if isinstance(expr, tvm.ir.GenericConst):
            found[expr] = size(expr)

    relax.analysis.post_order_visit(func.body, visit)
    if sum(found.values()) < max(min_total, 1):
        return mod, 0

    @relax.expr_functor.mutator
    class Lift(relax.PyExprMutator):
        def visit_generic_const_(self, const):
            var = lifted.get(const)
            if var is None:
                if not liftable(const):
                    return const
                var = relax.Var(f"weight{len(lifted)}", const.ty)
                lifted[const] = var
                sink(_array(const.value))
            return var

    body = Lift(mod).visit_expr(func.body)
    if not lifted:
        return mod, 0
    attrs = dict(func.attrs) if func.attrs is not None else {}
    num_input = int(attrs.get("num_input", len(func.params)))
    attrs["num_input"] = num_input
    new = relax.Function([*func.params, *lifted.values()], body, func.ret_ty, func.is_pure,
                         tvm.ir.make_node("ir.DictAttrs", **attrs), func.span)
    out = mod.clone() if hasattr(mod, "clone") else mod
    out[gv] = new
    return out, len(lifted)


def _array(tensor) -> np.ndarray:
    """A CPU tensor's array: a view of its memory (DLPack) where possible, else a copy."""
    try:
        return np.ascontiguousarray(np.from_dlpack(tensor))
    except (TypeError, ValueError, BufferError, RuntimeError):
        return np.ascontiguousarray(tensor.numpy())




# -- the artifact's copy: weights.bin + weights.json ---------------------------------------------
# (The store's format and its writer: compiler/weight_table.py, shared with the ONNX target.)
KEYS_FILE = "keys.json"


def saving_hook(folder: str, deferred: DeferredWeights | None = None):
    """A ``before_codegen`` hook for ``pipeline.build``: lift the big constants, each array saved
    as ``folder/NNNNN.npy`` in parameter order (the variant builds run in forked processes: the
    parent reads them back with ``saved_arrays``). With ``deferred``, a lifted placeholder or
    source is recorded as its recipe, not saved, and every placeholder is lifted."""
    def hook(mod):
        os.makedirs(folder, exist_ok=True)
        entries: list = []

        def sink(array: np.ndarray) -> None:
            recipe = deferred.recipe(array) if deferred is not None else None
            if recipe is not None:
                entries.append({"recipe": recipe})
                return
            name = f"{len(entries):05d}.npy"
            np.save(os.path.join(folder, name), array, allow_pickle=False)
            # Hashed here, in the build's process, while in memory.
            entries.append({"file": name, "keys": array_keys(array)})

        lifted = lift_constants(mod, sink, forced=None if deferred is None else deferred.is_placeholder)[0]
        if deferred is not None:
            deferred.check_lifted(lifted)
        with open(os.path.join(folder, KEYS_FILE), "w") as f:
            json.dump(entries, f)
        return lifted

    return hook


def saved_arrays(folder: str, deferred: DeferredWeights | None = None) -> list[tuple]:
    """The arrays ``saving_hook`` saved with their ``array_keys``, in parameter order,
    memory-mapped read-only (not read into memory: the artifact writer streams them into the
    file); a recipe as what ``deferred`` makes of it (a source, or its ``PanelPacked`` form)."""
    if not os.path.isdir(folder):
        return []
    with open(os.path.join(folder, KEYS_FILE)) as f:
        entries = json.load(f)
    out = []
    for entry in entries:
        if "recipe" in entry:
            if deferred is None:
                raise RuntimeError(f"{folder}: a build recorded a weight recipe, but no sources were given")
            out.append(deferred.made(entry["recipe"]))
            continue
        exact, unpacked = entry["keys"]
        array = np.load(os.path.join(folder, entry["file"]), mmap_mode="r", allow_pickle=False)
        out.append((array, (tuple(exact), tuple(unpacked) if unpacked else None)))
    return out


# -- weights packed by the parent, not by the builds ---------------------------------------------
# Constants from which a variant build's packed copy is deferred (smaller ones are cheap to copy;
# at least MIN_TOTAL_BYTES, so that a placeholder alone makes a module lift its constants).
DEFER_MIN_BYTES = MIN_TOTAL_BYTES


class DeferredWeights:
    """The sources (big constants of a prepared module, as views of their memory) that builds
    forked from this process may pack by recipe (see the module's docstring). Made in the parent
    before the builds start; each build adds its own placeholders."""

    def __init__(self, mod, func_name: str = "main", min_bytes: int | None = None):
        import tvm
        from tvm import relax

        min_bytes = DEFER_MIN_BYTES if min_bytes is None else min_bytes
        self.sources: list[np.ndarray] = []
        self._source_at: dict[int, int] = {}  # data address -> source index
        self._recipes: dict[int, dict] = {}  # placeholder data address -> recipe
        self._holders: list[np.ndarray] = []  # kept alive: no placeholder address is ever reused

        def visit(expr):
            if isinstance(expr, tvm.ir.GenericConst) and isinstance(expr.value, tvm.runtime.Tensor):
                view = _view(expr.value)
                if (view is not None and view.ndim >= 2 and view.dtype.kind == "f" and view.nbytes >= min_bytes
                        and view.ctypes.data not in self._source_at):
                    self._source_at[view.ctypes.data] = len(self.sources)
                    self.sources.append(view)

        if func_name in [gv.name_hint for gv in mod.get_global_vars()]:
            relax.analysis.post_order_visit(mod[func_name].body, visit)

    def placeholder(self, weight: np.ndarray, panel: int, columns: int) -> np.ndarray | None:
        """Where the packed GEMM weight ``[columns / panel, K, panel]`` of ``weight`` [K, N] (its
        columns zero-padded to ``columns``) would go: an uninitialised array of that shape, its
        recipe recorded; None when ``weight`` is not a whole source (pack it as usual)."""
        index = self._source_index(weight)
        if index is None or weight.ndim != 2 or columns % panel or columns < weight.shape[1]:
            return None
        from .ops.common import aligned_empty

        k, n = weight.shape
        holder = aligned_empty((columns // panel, k, panel), weight.dtype)
        self._holders.append(holder)
        self._recipes[holder.ctypes.data] = {"source": index, "rows": k, "width": n, "panel": panel,
                                             "columns": columns}
        return holder

    def is_placeholder(self, tensor) -> bool:
        view = _view(tensor)
        return view is not None and view.ctypes.data in self._recipes

    def recipe(self, array: np.ndarray) -> dict | None:
        """A lifted array's recipe: a placeholder's, ``{"source": i}`` for a source lifted as it
        is (no copy saved), None for anything else (real data, saved)."""
        if array.ctypes.data in self._recipes:
            return self._recipes[array.ctypes.data]
        index = self._source_index(array)
        return None if index is None or array.shape != self.sources[index].shape else {"source": index}

    def made(self, recipe: dict) -> tuple:
        """(the array or ``PanelPacked`` a recipe stands for, its (exact, unpacked) keys for
        ``weights_payload``: equal recipes are stored once, and packings of one source in panels
        of other widths are stored once and repacked at load)."""
        source = self.sources[int(recipe["source"])]
        if "panel" not in recipe:
            return source, (("source", int(recipe["source"])), None)
        packed = PanelPacked(source.reshape(int(recipe["rows"]), int(recipe["width"])), int(recipe["panel"]),
                             int(recipe["columns"]))
        return packed, (("packed", int(recipe["source"]), packed.panel, packed.columns),
                        ("source", int(recipe["source"])))

    def check_lifted(self, mod, func_name: str = "main") -> None:
        """Every placeholder left in ``func_name`` must have been lifted: its contents are not the
        weight's."""
        import tvm
        from tvm import relax

        left = []

        def visit(expr):
            if isinstance(expr, tvm.ir.GenericConst) and self.is_placeholder(expr.value):
                left.append(expr)

        relax.analysis.post_order_visit(mod[func_name].body, visit)
        if left:
            raise RuntimeError(f"{len(left)} packed weight placeholder(s) were not lifted into parameters")

    def _source_index(self, array: np.ndarray) -> int | None:
        index = self._source_at.get(array.ctypes.data)
        if index is None or not array.flags.c_contiguous or array.nbytes != self.sources[index].nbytes:
            return None
        return index


class PanelPacked:
    """A StoredBlob part and ``WeightWriter`` item: ``weight`` [K, N] zero-padded to ``columns``
    and packed in panels of ``panel`` columns (``[columns / panel, K, panel]``, gemm.pack_weight's
    layout), its C-order bytes made a few panels at a time when they are hashed or written."""

    _BLOCK = 4 << 20  # bytes made at once

    def __init__(self, weight: np.ndarray, panel: int, columns: int):
        self.weight, self.panel, self.columns = weight, panel, columns
        self.dtype = weight.dtype
        self.shape = (columns // panel, weight.shape[0], panel)
        self.panel_bytes = weight.shape[0] * panel * weight.dtype.itemsize
        self.nbytes = self.shape[0] * self.panel_bytes

    def panels(self, first: int, count: int) -> np.ndarray:
        """Panels ``first`` .. ``first + count - 1`` as a C-order array [count, K, panel]."""
        k, n = self.weight.shape
        start, stop = first * self.panel, (first + count) * self.panel
        block = np.zeros((k, stop - start), self.dtype)
        if start < n:
            block[:, :min(stop, n) - start] = self.weight[:, start:min(stop, n)]
        return np.ascontiguousarray(block.reshape(k, count, self.panel).transpose(1, 0, 2))

    def chunks(self, start: int, end: int):
        per_block = max(1, self._BLOCK // max(self.panel_bytes, 1))
        first = start // self.panel_bytes if self.panel_bytes else 0
        while first < self.shape[0] and first * self.panel_bytes < end:
            count = min(per_block, self.shape[0] - first)
            block = self.panels(first, count).reshape(-1).view(np.uint8)
            base = first * self.panel_bytes
            yield block[max(start - base, 0):min(end - base, block.nbytes)]
            first += count


def _view(tensor) -> np.ndarray | None:
    """A CPU tensor's memory as an array (DLPack, no copy), or None where that is not possible."""
    try:
        return np.from_dlpack(tensor)
    except (TypeError, ValueError, BufferError, RuntimeError):
        return None


def array_keys(array: np.ndarray) -> tuple:
    """(exact key, unpacked key) of a lifted array: its dtype, shape and sha256; and, for a
    packed GEMM weight ``[N / P, K, P]``, its [K, N] matrix without its trailing zero columns,
    hashed (None for other arrays): equal keys, equal weights (``weights_payload``)."""
    import hashlib

    def digest(a: np.ndarray) -> str:
        return hashlib.sha256(memoryview(np.ascontiguousarray(a).reshape(-1).view(np.uint8))).hexdigest()

    exact = (array.dtype.str, list(array.shape), digest(array))
    if array.ndim != 3 or array.dtype.kind != "f":
        return exact, None
    panels, k, width = array.shape
    flat = np.ascontiguousarray(array.transpose(1, 0, 2)).reshape(k, panels * width)
    used = np.flatnonzero(np.any(flat != 0, axis=0))
    columns = int(used[-1]) + 1 if used.size else 0
    return exact, (array.dtype.str, k, columns, digest(flat[:, :columns]))


def weights_payload(per_library: dict[str, list]) -> tuple[dict, dict[str, list]]:
    """(``{weights.bin: StoredBlob, weights.json: table}``, library -> its parameter list) for
    the lifted arrays of each library (``saved_arrays``' (array, keys) pairs, or bare arrays).
    Arrays with the same dtype, shape and bytes are stored once. A packed GEMM weight
    (``[N / P, K, P]``, gemm.py) that another library holds in panels of another width (AVX2's
    16 columns, AVX-512's 32), or with other zero columns of padding (a width padded to 2 vectors:
    1584 vs 1600 for 1581), is stored once too: that library's entry is ``{"tensor": id,
    "panels": P, "columns": N}``, repacked at load (the stored weight as [K, N'] cut or
    zero-padded to N columns, in panels of P). A parameter list entry is a tensor id (used as
    stored) or such a dict. Empty payload when no library has parameters."""
    writer = WeightWriter()
    exact: dict[tuple, str] = {}  # (dtype, shape, sha256) -> tensor id
    panelled: dict[tuple, str] = {}  # (dtype, K, used columns, sha256 of them as [K, N]) -> tensor id
    lists: dict[str, list] = {}
    several = len(per_library) > 1

    # The last library (the widest vectors: AVX-512 machines) keeps its own layout, used in place.
    for library in reversed(list(per_library)):
        entries: list = []
        for item in per_library[library]:
            array, keys = item if isinstance(item, tuple) else (item, None)
            array = array if array.dtype.byteorder != ">" else array.astype(array.dtype.newbyteorder("<"))
            key, unpacked = array_keys(array) if keys is None else keys
            key, unpacked = _hashable(key), (_hashable(unpacked) if several and unpacked else None)
            if key in exact:
                entries.append(exact[key])
                continue
            if unpacked is not None and unpacked in panelled:
                entries.append({"tensor": panelled[unpacked], "panels": int(array.shape[2]),
                                "columns": int(array.shape[0] * array.shape[2])})
                continue
            name = f"t{len(writer.tensors)}"
            writer.add(name, array)
            exact[key] = name
            if unpacked is not None:
                panelled[unpacked] = name
            entries.append(name)
        lists[library] = entries
    lists = {library: lists[library] for library in per_library}
    if not writer.tensors:
        return {}, {library: [] for library in per_library}
    return writer.payload(), lists


def _hashable(key):
    """A key read back from JSON (lists) as a dict key."""
    return tuple(tuple(x) if isinstance(x, list) else x for x in key)


__all__ = ["DEFER_MIN_BYTES", "MIN_BYTES", "MIN_TOTAL_BYTES", "TENSOR_ALIGN", "WEIGHTS_FILE", "WEIGHTS_TABLE",
           "DeferredWeights", "PanelPacked", "array_keys", "lift_constants", "saved_arrays", "saving_hook", "weights_payload"]
