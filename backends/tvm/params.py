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
                   func_name: str = "main"):
    """``mod`` with ``func_name``'s constants of at least ``min_bytes`` as trailing parameters,
    when they add up to ``min_total`` or more; ``sink(array)`` gets each one's array (numpy, C
    order, possibly a view of the constant's memory: valid during the call only) in parameter
    order. Returns (module, count); ``mod`` itself when nothing is lifted."""
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


def saving_hook(folder: str):
    """A ``before_codegen`` hook for ``pipeline.build``: lift the big constants, each array saved
    as ``folder/NNNNN.npy`` in parameter order (the variant builds run in forked processes: the
    parent reads them back with ``saved_arrays``)."""
    def hook(mod):
        os.makedirs(folder, exist_ok=True)
        count = [0]

        keys: list = []

        def sink(array: np.ndarray) -> None:
            np.save(os.path.join(folder, f"{count[0]:05d}.npy"), array, allow_pickle=False)
            keys.append(array_keys(array))  # hashed here, in the build's process, while in memory
            count[0] += 1

        lifted = lift_constants(mod, sink)[0]
        with open(os.path.join(folder, KEYS_FILE), "w") as f:
            json.dump(keys, f)
        return lifted

    return hook


def saved_arrays(folder: str) -> list[tuple[np.ndarray, tuple]]:
    """The arrays ``saving_hook`` saved with their ``array_keys``, in parameter order,
    memory-mapped read-only (not read into memory: the artifact writer streams them into the
    file)."""
    if not os.path.isdir(folder):
        return []
    names = sorted(n for n in os.listdir(folder) if n.endswith(".npy"))
    with open(os.path.join(folder, KEYS_FILE)) as f:
        keys = [(tuple(e), tuple(u) if u else None) for e, u in json.load(f)]
    return [(np.load(os.path.join(folder, n), mmap_mode="r", allow_pickle=False), k) for n, k in zip(names, keys)]


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


__all__ = ["MIN_BYTES", "MIN_TOTAL_BYTES", "TENSOR_ALIGN", "WEIGHTS_FILE", "WEIGHTS_TABLE", "array_keys",
           "lift_constants", "saved_arrays", "saving_hook", "weights_payload"]
