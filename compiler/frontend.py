"""PyTorch frontend: ``torch.export`` -> our Graph.

``export_module`` traces an ``nn.Module`` with ``torch.export`` (non-strict by default).
``import_exported_program`` then decomposes only what we do not handle at a high level (so
linear, conv, batch_norm, layer_norm, softmax, gelu and sdpa survive as single ops) and walks
the FX graph through ``ATEN_HANDLERS``, a table keyed by ATen overload name ("aten.add.Tensor")
whose entries each build a few IR nodes. Parameters and buffers become constants; each node
keeps the user's source line. Every handler's result is checked against the dtype and shape
torch recorded for that FX node, so a wrong handler fails at import, not in a backend.
"""

from __future__ import annotations

import inspect
import operator
import re
from typing import Any, Callable, Sequence

import numpy as np
import sympy
import torch

from compiler import dims
from compiler.errors import CompileError, IRError, UnsupportedOpError
from compiler.ir import DType, Graph, TensorType, Value

Handler = Callable[["ImportContext", torch.fx.Node], Any]
ATEN_HANDLERS: dict[str, Handler] = {}


def handles(*names: str):
    """Register a handler for one or more ATen overloads ("aten.relu.default")."""

    def register(fn: Handler) -> Handler:
        for name in names:
            if name in ATEN_HANDLERS:
                raise ValueError(f"two frontend handlers for {name}")
            ATEN_HANDLERS[name] = fn
        return fn

    return register


# -- dtype and location helpers ------------------------------------------------------------------
_TORCH_DTYPES = {
    torch.float16: DType.float16, torch.float32: DType.float32, torch.float64: DType.float64,
    torch.bfloat16: DType.bfloat16, torch.int8: DType.int8, torch.int16: DType.int16,
    torch.int32: DType.int32, torch.int64: DType.int64, torch.uint8: DType.uint8, torch.bool: DType.bool,
}


def dtype_from_torch(dtype: torch.dtype) -> DType:
    if dtype == torch.bfloat16:  # numpy has no bfloat16: neither verification nor the artifact's callers could hold it
        raise CompileError("bfloat16 tensors are not supported yet; compile the float32 model (model.float(), "
                           "float32 inputs, no .to(torch.bfloat16) inside)")
    try:
        return _TORCH_DTYPES[dtype]
    except KeyError:
        raise CompileError(f"tensor dtype {dtype} is not supported; cast the model to float32") from None


def torch_dtype(dtype: DType) -> torch.dtype:
    return {v: k for k, v in _TORCH_DTYPES.items()}[dtype]


_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>\S+)\n\s*(?P<code>[^\n]*)')


def source_location(node: torch.fx.Node) -> str | None:
    """'model.py:42 in forward: x = self.fc(x)' from the innermost frame outside torch itself."""
    trace = node.meta.get("stack_trace") or ""
    frames = list(_FRAME.finditer(trace))
    user = [f for f in frames if "/torch/" not in f["file"] and "/site-packages/" not in f["file"]]
    frame = (user or frames or [None])[-1]
    if frame is None:
        return None
    return f"{frame['file']}:{frame['line']} in {frame['func']}: {frame['code'].strip()}"


# -- the import context ------------------------------------------------------------------------
class ImportContext:
    """Maps FX nodes to IR values while the handlers build the graph."""

    def __init__(self, graph: Graph, symbol_names: dict[str, str]):
        self.graph = graph
        self.env: dict[torch.fx.Node, Any] = {}
        self.symbol_names = symbol_names
        self.location: str | None = None
        self.node: torch.fx.Node | None = None

    # values --------------------------------------------------------------------------------
    def value(self, arg: Any) -> Any:
        """IR value (or Python scalar / dim / list) for an FX argument."""
        if isinstance(arg, torch.fx.Node):
            return self.env[arg]
        if isinstance(arg, (list, tuple)):
            return type(arg)(self.value(a) for a in arg)
        return arg

    def tensor(self, arg: Any, dtype: DType | None = None) -> Value:
        """An IR tensor for ``arg`` (a scalar becomes a 0-d constant), cast to ``dtype`` if given."""
        v = self.value(arg)
        if not isinstance(v, Value):
            if not isinstance(v, (bool, int, float)):
                raise self.unsupported(f"expected a tensor or number, got {type(v).__name__}")
            np_dtype = (dtype or _scalar_dtype(v)).numpy
            return self.graph.add_constant(np.asarray(v, dtype=np_dtype), "scalar")
        if dtype is not None and v.dtype != dtype:
            v = self.emit("cast", v, dtype=dtype)
        return v

    def emit(self, op: str, *inputs: Value | None, **attrs) -> Value:
        return self.graph.add_node(op, list(inputs), attrs, location=self.location).output

    def emit_multi(self, op: str, *inputs: Value | None, **attrs) -> tuple[Value, ...]:
        return self.graph.add_node(op, list(inputs), attrs, location=self.location).outputs

    # types recorded by torch -----------------------------------------------------------------
    def dim(self, size: Any) -> dims.Dim:
        if isinstance(size, int):
            return size
        if isinstance(size, torch.SymInt):
            expr = size.node.expr
            if expr.is_number:
                return int(expr)
            text = str(expr.xreplace({s: sympy.Symbol(self.symbol_names.get(str(s), str(s)))
                                      for s in expr.free_symbols}))
            try:
                dims.symbols_in(text)
                return text
            except SyntaxError:
                raise self.unsupported(f"symbolic size {text} is not a simple expression") from None
        raise self.unsupported(f"unexpected size {size!r}")

    def meta_type(self, node: torch.fx.Node | None = None, index: int | None = None) -> TensorType:
        val = (node or self.node).meta.get("val")
        if index is not None:
            val = val[index]
        if not isinstance(val, torch.Tensor):
            raise self.unsupported("the node has no tensor metadata")
        return TensorType(dtype_from_torch(val.dtype), tuple(self.dim(s) for s in val.shape))

    def out_dtype(self) -> DType:
        return self.meta_type().dtype

    def out_shape(self) -> tuple:
        return self.meta_type().shape

    # errors --------------------------------------------------------------------------------
    def unsupported(self, detail: str = "", op: str | None = None) -> UnsupportedOpError:
        name = op or (str(self.node.target) if self.node is not None else "?")
        return UnsupportedOpError(name, stage="the PyTorch frontend", location=self.location, detail=detail)


def _scalar_dtype(v: Any) -> DType:
    return DType.bool if isinstance(v, bool) else DType.int64 if isinstance(v, int) else DType.float32


def arg(node: torch.fx.Node, index: int, name: str, default: Any = None) -> Any:
    """Positional-or-keyword argument of an ATen call."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


# -- export ----------------------------------------------------------------------------------------
def export_module(module: torch.nn.Module, example_inputs: Sequence[torch.Tensor], *,
                  dynamic_batch: bool = False, strict: bool = False,
                  dynamic_shapes: Sequence[dict | None] | None = None) -> torch.export.ExportedProgram:
    """``torch.export`` the module; with ``dynamic_batch`` dim 0 of every input is symbolic;
    ``dynamic_shapes`` gives torch Dims per input (one dict of axis -> Dim, or None, each)."""
    module = module.eval()
    inputs = _unaliased(tuple(example_inputs))
    if dynamic_shapes is not None:
        dynamic_shapes = _grouped_like_forward(module, list(dynamic_shapes))
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1, max=2 ** 31 - 1)
        dynamic_shapes = _batch_dynamic_shapes(module, inputs, batch)
        # torch specialises a size-1 dim to the constant 1: trace with batch 2 instead.
        inputs = tuple(torch.cat([t, t]) if t.dim() > 0 and t.shape[0] == 1 else t for t in inputs)
    with torch.no_grad():
        try:
            return torch.export.export(module, inputs, dynamic_shapes=dynamic_shapes, strict=strict)
        except Exception as exc:  # torch's message is long; keep its first line, say what failed
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CompileError(f"torch.export could not trace the model: {first}") from exc


def _unaliased(inputs: tuple) -> tuple:
    """The inputs with every tensor that shares memory with an earlier one cloned. torch.export
    traces aliased inputs as one (``f(x, x)`` exports ``a - b`` as ``b - b``): the compiled
    model would ignore an input that callers then pass different values for."""
    seen: set[int] = set()
    result = []
    for t in inputs:
        if isinstance(t, torch.Tensor) and t.layout == torch.strided:
            key = t.untyped_storage().data_ptr() if t.numel() else id(t)
            if key in seen:
                t = t.clone()
            else:
                seen.add(key)
        result.append(t)
    return tuple(result)


def _batch_dynamic_shapes(module: torch.nn.Module, inputs: tuple, batch) -> tuple:
    """``dynamic_shapes`` marking dim 0 of every input."""
    return _grouped_like_forward(module, [{0: batch} if t.dim() > 0 else None for t in inputs])


def _grouped_like_forward(module: torch.nn.Module, specs: list) -> tuple:
    """Per-input ``dynamic_shapes`` shaped like forward's parameters (torch wants the inputs of a
    ``*args`` parameter grouped in one nested tuple)."""
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return tuple(specs)
    for i, p in enumerate(params):
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            return tuple(specs[:i]) + (tuple(specs[i:]),)
    return tuple(specs)


def _decomposition_table() -> dict:
    """Torch's default table minus every op we import directly (those must survive)."""
    table = torch.export.default_decompositions()
    for name, handler in ATEN_HANDLERS.items():
        overload = _resolve_overload(name)
        if overload is not None and overload in table:
            imports = getattr(handler, "imports_when", None)  # a handler for some of its forms
            if imports is None:
                del table[overload]
            else:
                table[overload] = _decompose_unless(imports, table[overload])
    return table


def _decompose_unless(imports: Callable[..., bool], decomposition: Callable) -> Callable:
    """``decomposition`` for the calls ``imports(*args, **kwargs)`` refuses; the others stay whole
    (a decomposition returning NotImplemented keeps the op)."""

    def maybe(*args, **kwargs):
        return NotImplemented if imports(*args, **kwargs) else decomposition(*args, **kwargs)

    return maybe


def _resolve_overload(name: str):
    parts = name.split(".")
    if len(parts) != 3 or parts[0] != "aten":
        return None
    packet = getattr(torch.ops.aten, parts[1], None)
    return getattr(packet, parts[2], None) if packet is not None else None


# -- import ----------------------------------------------------------------------------------------
def decompose(ep: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """Torch's default decompositions minus the ops we handle; then, for each op still without
    a handler, PyTorch's own decomposition of just that op (``torch._decomp``), until none
    applies. Ops with neither are refused at import with the usual one-line error; a failure
    inside torch's own decomposition (e.g. a sparse buffer) is one line too."""
    try:
        return _decompose(ep)
    except (CompileError, IRError):
        raise
    except Exception as exc:  # torch's run_decompositions: its message is long, keep its first line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CompileError(f"PyTorch's decompositions failed on the exported program: {first}; "
                           "keep the model to dense tensors and supported ops") from exc


def _decompose(ep: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    ep = ep.run_decompositions(_decomposition_table())
    from torch._decomp import decomposition_table

    for _round in range(8):  # a decomposition may produce other unhandled ops: a few rounds
        nodes = [n for gm in ep.graph_module.modules() if isinstance(gm, torch.fx.GraphModule)
                 for n in gm.graph.nodes]  # torch.cond's branches are graphs of their own
        missing = {n.target for n in nodes if n.op == "call_function"
                   and isinstance(n.target, torch._ops.OpOverload) and str(n.target) not in ATEN_HANDLERS
                   and n.target in decomposition_table}
        if not missing:
            break
        ep = ep.run_decompositions({op: decomposition_table[op] for op in missing})
    return ep


def user_output_positions(ep: torch.export.ExportedProgram) -> tuple[list[int], list[int]]:
    """(indices of the FX output node's arguments that are the model's own outputs, positions
    among those that are None). Mutated inputs and buffers that torch.export appends to the
    outputs are not the model's outputs."""
    from torch.export.graph_signature import OutputKind

    output_node = next(n for n in ep.graph.nodes if n.op == "output")
    args = output_node.args[0]
    args = args if isinstance(args, (list, tuple)) else (args,)
    kinds = [s.kind for s in ep.graph_signature.output_specs]
    user = [i for i, k in enumerate(kinds) if k == OutputKind.USER_OUTPUT] if len(kinds) == len(args) \
        else list(range(len(args)))
    nones = [j for j, i in enumerate(user) if args[i] is None]
    return user, nones


def import_exported_program(ep: torch.export.ExportedProgram, *, name: str = "main",
                            dim_names: dict[tuple[int, int], str] | None = None) -> Graph:
    """Build our Graph from an ExportedProgram. ``dim_names`` names the symbol of (input
    position, axis) (the user's dynamic dim names; default: batch for dim 0, input_dimN else)."""
    ep = decompose(ep)
    user_outputs, _nones = user_output_positions(ep)
    graph = Graph(name)
    ctx = ImportContext(graph, _symbol_names(ep, dim_names or {}))
    specs = {s.arg.name: s for s in ep.graph_signature.input_specs}
    state = dict(ep.state_dict)
    state.update(ep.constants)
    from torch.export.graph_signature import InputKind

    for node in ep.graph.nodes:
        ctx.node, ctx.location = node, source_location(node)
        if node.op == "placeholder":
            spec = specs[node.name]
            if spec.kind == InputKind.USER_INPUT:
                val = node.meta.get("val")
                if not isinstance(val, torch.Tensor):
                    raise CompileError(f"model input '{node.name}' is not a tensor ({type(val).__name__}); "
                                       "only tensor inputs are supported")
                if val.layout != torch.strided:  # the artifact takes numpy arrays: dense ones
                    raise CompileError(f"model input '{node.name}' is a {str(val.layout).replace('torch.', '')} "
                                       "tensor; only dense inputs are supported: pass x.to_dense() and "
                                       "compile the model for dense inputs")
                ctx.env[node] = graph.add_input(node.name, ctx.meta_type(node))
            elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
                tensor = state[spec.target]
                ctx.env[node] = graph.add_constant(_to_numpy(tensor), spec.target.replace(".", "_"))
            else:
                raise CompileError(f"model input '{node.name}' of kind {spec.kind.name} is not supported")
        elif node.op == "call_function":
            ctx.env[node] = _import_call(ctx, node)
        elif node.op == "output":
            outs = node.args[0]
            outs = outs if isinstance(outs, (list, tuple)) else (outs,)
            # None outputs are dropped (the manifest records where they were, see api.py).
            values = [ctx.value(outs[i]) for i in user_outputs if outs[i] is not None]
            if not values:
                raise CompileError("the model returns no tensor; return at least one tensor from forward()")
            if not all(isinstance(v, Value) for v in values):
                kinds = sorted({type(v).__name__ for v in values if not isinstance(v, Value)})
                raise CompileError(f"every model output must be a tensor or None, got {', '.join(kinds)}; "
                                   "return tensors (a Python number can be returned as torch.tensor(x))")
            graph.set_outputs(_distinct_outputs(graph, values))
            graph.name_outputs()
        elif node.op == "get_attr":
            attr = getattr(ep.graph_module, node.target)
            if not isinstance(attr, torch.Tensor):  # a subgraph of a control-flow op (torch.cond)
                ctx.env[node] = attr
                continue
            ctx.env[node] = graph.add_constant(_to_numpy(attr), node.target)
        else:
            raise CompileError(f"unexpected FX node kind {node.op}")
    graph.remove_unused_constants()
    graph.verify()
    return graph


def _distinct_outputs(graph: Graph, values: list[Value]) -> list[Value]:
    """Graph outputs must be distinct non-input values (ONNX requires it): copy repeats."""
    seen: set[int] = set()
    result = []
    for v in values:
        if id(v) in seen or v.producer is None:
            v = graph.op("reshape", v, shape=v.shape)
        seen.add(id(v))
        result.append(v)
    return result


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:
        raise CompileError("bfloat16 weights are not supported yet; call model.float() before compiling")
    # A read-only view of the weight's own memory, not a copy: a big model's constants then exist
    # once in the process (in the user's module), and a pass that tried to change one in place
    # (instead of adding a new constant) fails loudly instead of editing the user's weights.
    array = tensor.contiguous().numpy()
    array.flags.writeable = False
    return array


def _symbol_names(ep: torch.export.ExportedProgram, dim_names: dict[tuple[int, int], str]) -> dict[str, str]:
    """Readable names for torch's size symbols: the user's, else dim 0 of an input is 'batch'."""
    names: dict[str, str] = {}
    used: set[str] = set()
    user_inputs = [s.arg.name for s in ep.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    for node in ep.graph.nodes:
        if node.op != "placeholder" or node.name not in user_inputs:
            continue
        val = node.meta.get("val")
        position = user_inputs.index(node.name)
        for axis, size in enumerate(getattr(val, "shape", ())):
            if isinstance(size, torch.SymInt) and isinstance(size.node.expr, sympy.Symbol):
                sym = str(size.node.expr)
                if sym not in names:
                    base = dim_names.get((position, axis)) or ("batch" if axis == 0 else f"{node.name}_dim{axis}")
                    name = base if base not in used else f"{base}_{sym}"
                    names[sym] = name
                    used.add(name)
    return names


def import_subgraph(ctx: ImportContext, module: torch.fx.GraphModule, inputs: Sequence[Any]) -> list[Any]:
    """Inline a subgraph (a branch of torch.cond) into the graph being built: its placeholders
    are ``inputs``, its nodes go through the same handlers; returns its outputs' values."""
    saved = ctx.node, ctx.location
    placeholders = [n for n in module.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(inputs):
        raise ctx.unsupported(f"a subgraph taking {len(placeholders)} operands called with {len(inputs)}")
    ctx.env.update(zip(placeholders, inputs))
    try:
        for node in module.graph.nodes:
            ctx.node, ctx.location = node, source_location(node) or saved[1]
            if node.op == "call_function":
                ctx.env[node] = _import_call(ctx, node)
            elif node.op == "get_attr":
                attr = getattr(module, node.target)
                is_tensor = isinstance(attr, torch.Tensor)
                ctx.env[node] = ctx.graph.add_constant(_to_numpy(attr), node.target) if is_tensor else attr
            elif node.op == "output":
                outs = node.args[0]
                return [ctx.value(o) for o in (outs if isinstance(outs, (list, tuple)) else (outs,))]
            elif node.op != "placeholder":
                raise CompileError(f"unexpected FX node kind {node.op} in a subgraph")
    finally:
        ctx.node, ctx.location = saved
    raise CompileError("a subgraph without an output node")


def _import_call(ctx: ImportContext, node: torch.fx.Node) -> Any:
    target = node.target
    name = "getitem" if target is operator.getitem else str(target)
    handler = ATEN_HANDLERS.get(name)
    if handler is None and isinstance(target, torch._ops.HigherOrderOperator):
        raise UnsupportedOpError(name, stage="the PyTorch frontend", location=ctx.location,
                                 hint="data-dependent control flow is not supported yet; compute both branches "
                                      "and pick with torch.where, or make the condition a Python constant")
    if handler is None and _is_constant_factory(node):
        return _evaluate_constant(ctx, node)
    if handler is None:
        raise UnsupportedOpError(name, stage="the PyTorch frontend", location=ctx.location,
                                 hint="the compiler has no translation for it yet; rewrite that line "
                                      "with supported ops or open an issue naming the op")
    try:
        result = handler(ctx, node)
    except (CompileError, IRError):
        raise
    except ValueError as exc:  # an op's type rule refused the inputs
        raise ctx.unsupported(str(exc)) from exc
    _check_against_torch(ctx, node, result)
    return result


def _is_constant_factory(node: torch.fx.Node) -> bool:
    """An op none of whose arguments come from the graph (``hamming_window(16)``): its value
    is known at compile time. Random ops are not: they must differ between runs."""
    leaves = torch.utils._pytree.tree_leaves((node.args, node.kwargs))
    deterministic = "rand" not in str(node.target) and "bernoulli" not in str(node.target)
    return deterministic and isinstance(node.target, torch._ops.OpOverload) \
        and not any(isinstance(leaf, torch.fx.Node) for leaf in leaves)


def _evaluate_constant(ctx: ImportContext, node: torch.fx.Node) -> Value:
    with torch.no_grad():
        result = node.target(*node.args, **node.kwargs)
    if not isinstance(result, torch.Tensor):
        raise ctx.unsupported("an op without tensor inputs that returns no tensor", op=str(node.target))
    return ctx.graph.add_constant(_to_numpy(result), node.name)


def _check_against_torch(ctx: ImportContext, node: torch.fx.Node, result: Any) -> None:
    val = node.meta.get("val")
    if isinstance(result, Value) and isinstance(val, torch.Tensor):
        expected = ctx.meta_type(node)
        if not _same_type(result.type, expected):
            raise IRError(f"frontend handler for {node.target} produced {result.type}, torch says "
                          f"{expected} (at {ctx.location})")


def _same_type(a: TensorType, b: TensorType) -> bool:
    if a.dtype != b.dtype or a.rank != b.rank:
        return False
    for x, y in zip(a.shape, b.shape):
        if x == y:
            continue
        symbols = dims.symbols_in(x) | dims.symbols_in(y)
        for sample in (7, 13):
            binding = {s: sample for s in symbols}
            try:
                if dims.evaluate(x, binding) != dims.evaluate(y, binding):
                    return False
            except (KeyError, ValueError, SyntaxError):
                return False
    return True


# Handlers live in their own module so this file stays about the mechanism.
from compiler import aten_handlers  # noqa: E402,F401
