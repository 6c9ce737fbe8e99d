"""What every TVM lowering shares: ``LowerContext`` (the BlockBuilder, the Relax expression of
every IR value emitted so far, the symbolic dim variables), ``tvm_dtype`` and the ``Emitter``
signature ``(ctx, node) -> relax expr or list of exprs`` (one per node output)."""

from __future__ import annotations

import ast
from collections.abc import Callable

import numpy as np
import tvm
from tvm import relax

from compiler import dims
from compiler.errors import UnsupportedOpError
from compiler.ir import DType, Graph, Node, Value
from compiler.weight_table import TENSOR_ALIGN as WEIGHT_TABLE_ALIGN


STAGE = "the TVM backend"


def tvm_dtype(dtype: DType) -> str:
    return np.dtype(dtype.numpy).name  # "float32", "int64", "bool", ...


# The data alignment TVM takes without a copy (its kAllocAlignment): the artifact's weights.bin
# aligns its tensors the same, so that those mapped from it are used in place.
TENSOR_ALIGN = WEIGHT_TABLE_ALIGN


def shared_tensor(array: np.ndarray):
    """A TVM tensor over ``array``'s memory (DLPack, no copy) where TVM takes it (C-contiguous,
    64-byte aligned: torch's parameters are, and so are ``aligned_empty``'s arrays), else a copy.
    A Relax constant made from it keeps the array alive and never writes it. Without this each
    weight was copied once more while lowering (+1x the parameter bytes at the compile's peak)."""
    if array.ndim and array.flags.c_contiguous and array.ctypes.data % TENSOR_ALIGN == 0:
        try:
            return tvm.runtime.from_dlpack(array)
        except Exception:  # noqa: BLE001 - a read-only array or a dtype DLPack lacks: copy it
            pass
    return tvm.runtime.tensor(array)


def aligned_empty(shape, dtype) -> np.ndarray:
    """An uninitialised C-order array whose data starts on a TENSOR_ALIGN boundary (numpy's own
    allocations are 16-byte aligned), so ``shared_tensor`` takes it without a copy."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + TENSOR_ALIGN, np.uint8)
    start = -raw.ctypes.data % TENSOR_ALIGN
    return raw[start:start + nbytes].view(dtype).reshape(shape)


class LowerContext:
    """The BlockBuilder, the Relax expression of every IR value emitted so far, the symbolic
    dim variables, and the target kind (``llvm`` / ``cuda``)."""

    def __init__(self, graph: Graph, bb: relax.BlockBuilder, target_kind: str = "llvm"):
        self.graph = graph
        self.bb = bb
        self.target_kind = target_kind  # hand-written TIR kernels exist for one kind only
        self.env: dict[int, relax.Expr] = {}
        self.sym: dict[str, tvm.tirx.Var] = {}
        self.node: Node | None = None
        self.dequantized: list[str] = []

    # values -----------------------------------------------------------------------------------
    def value(self, v: Value | None):
        if v is None:
            return None
        if id(v) not in self.env:
            if not v.is_const:
                raise self.unsupported(f"value {v.name} is used before it is computed")
            array = v.const if v.const.flags.c_contiguous else np.array(v.const, order="C")  # 0-d stays 0-d
            self.env[id(v)] = relax.const(shared_tensor(array), tvm_dtype(v.dtype))
        return self.env[id(v)]

    def const(self, array, dtype: DType | str):
        dt = dtype if isinstance(dtype, str) else tvm_dtype(dtype)
        return relax.const(shared_tensor(np.asarray(array, dtype=np.dtype(dt))), dt)

    def emit(self, expr):
        return self.bb.emit(expr)

    # symbolic dims ----------------------------------------------------------------------------
    def dim(self, d: dims.Dim):
        """``d`` as a TIR expression: ints stay ints, symbols are shared ``int64`` vars."""
        if isinstance(d, int):
            return d
        return self._dim_expr(ast.parse(str(d), mode="eval").body, str(d))

    def _dim_expr(self, tree, text: str):
        if isinstance(tree, ast.Constant) and isinstance(tree.value, int):
            return tvm.tirx.IntImm("int64", tree.value)
        if isinstance(tree, ast.Name):
            if tree.id not in self.sym:
                self.sym[tree.id] = tvm.tirx.Var(tree.id, "int64")
            return self.sym[tree.id]
        ops = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
               ast.FloorDiv: tvm.tirx.floordiv}
        if isinstance(tree, ast.BinOp) and type(tree.op) in ops:
            return ops[type(tree.op)](self._dim_expr(tree.left, text), self._dim_expr(tree.right, text))
        if isinstance(tree, ast.UnaryOp) and isinstance(tree.op, ast.USub):
            return -self._dim_expr(tree.operand, text)
        raise self.unsupported(f"cannot express the symbolic dim '{text}'")

    def shape(self, shape) -> list:
        return [self.dim(d) for d in shape]

    # errors -----------------------------------------------------------------------------------
    def unsupported(self, detail: str) -> UnsupportedOpError:
        node = self.node
        return UnsupportedOpError(node.op if node is not None else "?", stage=STAGE,
                                  location=node.location if node is not None else None, detail=detail)


Emitter = Callable[[LowerContext, Node], object]


# -- run-time index checks ---------------------------------------------------------------------
# INDEX_RANGE_MARK marks the error a kernel raises for an index out of range, so that the runtime
# can turn it into ``InputError``.
from ..runtime import INDEX_RANGE_MARK  # noqa: E402


def checked_index(ctx: LowerContext, idx: Value, iv, bound):
    """``iv`` (the int64 indices ``idx`` lowered, negative ones already counted from the end),
    passed through a kernel that stops the run when one is outside [0, bound): TVM's gathers
    clamp (a token id past the vocabulary read the last row), PyTorch raises. Graph inputs are
    checked by ``load()`` against the manifest's ``index_bounds`` and constants at compile time,
    so only indices computed inside the model get the kernel (one pass over the indices)."""
    if idx.is_const or any(idx is v for v in ctx.graph.inputs):
        return iv
    node = ctx.node
    where = f"{node.op}" + (f" at {node.location}" if node is not None and node.location else "")
    message = (f"{INDEX_RANGE_MARK} {where}: an index computed inside the model is out of range "
               "(PyTorch raises here too); check the inputs it is computed from")
    shape = ctx.shape(idx.shape)
    flat = ctx.emit(relax.op.reshape(iv, [-1]))
    count = flat.ty.shape.values[0]
    gv = ctx.bb.add_func(_index_check_kernel(message), "check_index_range")
    checked = ctx.emit(relax.call_tir(gv, relax.Tuple([flat, relax.prim_value(_bound_expr(ctx, bound))]),
                                      relax.TensorType([count], "int64")))
    return ctx.emit(relax.op.reshape(checked, shape)) if len(shape) != 1 else checked


def _bound_expr(ctx: LowerContext, bound):
    import tvm

    if isinstance(bound, int):
        return tvm.tirx.IntImm("int64", bound)
    return ctx.dim(bound)


def _index_check_kernel(message: str):
    """The PrimFunc: y = x, asserting 0 <= x[i] < bound for every i (marked scheduled: a loop
    with a branch, no rule to apply; opaque: fused with nothing, FuseTIR cannot merge its
    buffers)."""
    from tvm.script import tirx as T

    @T.prim_func(private=True, s_tir=True)
    def check_index_range(a: T.handle, bound: T.int64, b: T.handle):
        T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True, "op_pattern": 8})
        n = T.int64()
        x = T.match_buffer(a, (n,), "int64")
        y = T.match_buffer(b, (n,), "int64")
        for i in range(n):
            with T.sblock("check_index_range"):
                vi = T.axis.spatial(n, i)
                assert T.int64(0) <= x[vi] and x[vi] < bound, message
                y[vi] = x[vi]

    return check_index_range
