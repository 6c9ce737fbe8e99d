"""Dynamic dimensions beyond the batch: which input axes stay symbolic, their names and ranges.

    compile(model, x, dynamic_shapes={"input_ids": {1: ("seq", 1, 512)}})
    compile(model, x, dynamic_shapes=["input_ids:1=seq:1..512"])        # the CLI's form
    compile model.py:Bert --dynamic input_ids:1=seq:1..512 --dynamic input_ids:0=batch

An input is named by its ``forward`` parameter name or its position; an axis by its number. A
name shared by several axes is one symbol (the sizes must agree). A ``torch.export.Dim`` works
where a ``("name", min, max)`` does. The ranges go into the manifest, ``load()`` refuses sizes
outside them, and verification runs several sizes inside them.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from typing import Any, Sequence

from compiler.errors import CompileError

# The largest size torch.export accepts as an upper bound for "no limit".
UNBOUNDED = 2 ** 31 - 1
_SPEC = re.compile(r"^(?P<input>[A-Za-z_][\w.]*|\d+):(?P<axis>-?\d+)=(?P<name>[A-Za-z_]\w*)"
                   r"(?::(?P<lo>\d+)\.\.(?P<hi>\d*))?$")


@dataclass(frozen=True)
class DynamicDim:
    input: int  # position among the model's inputs
    axis: int
    name: str
    min: int = 1
    max: int = UNBOUNDED

    def __str__(self) -> str:
        hi = "" if self.max >= UNBOUNDED else str(self.max)
        return f"{self.name} in [{self.min}, {hi or 'any'}]"


def parse(spec: str) -> tuple[str, int, str, int, int]:
    """``INPUT:AXIS=NAME[:MIN..MAX]`` -> (input, axis, name, min, max)."""
    m = _SPEC.match(spec.strip())
    if not m:
        raise CompileError(f"--dynamic '{spec}' is not INPUT:AXIS=NAME[:MIN..MAX] (e.g. input_ids:1=seq:1..512)")
    lo = int(m["lo"]) if m["lo"] else 1
    hi = int(m["hi"]) if m["hi"] else UNBOUNDED
    return m["input"], int(m["axis"]), m["name"], lo, hi


def resolve(dynamic_shapes: Any, input_names: Sequence[str], ranks: Sequence[int]) -> list[DynamicDim]:
    """Our list of dynamic dims from the user's spec (strings, or a mapping / sequence per input
    of ``{axis: name | (name, min, max) | torch.export.Dim}``)."""
    entries: list[tuple[Any, int, Any]] = []  # (input ref, axis, name-ish)
    if isinstance(dynamic_shapes, str):
        dynamic_shapes = [dynamic_shapes]
    if isinstance(dynamic_shapes, dict):
        entries = [(k, axis, d) for k, axes in dynamic_shapes.items() for axis, d in _axes_of(k, axes).items()]
    elif isinstance(dynamic_shapes, (list, tuple)) and all(isinstance(s, str) for s in dynamic_shapes):
        for spec in dynamic_shapes:
            ref, axis, name, lo, hi = parse(spec)
            entries.append((int(ref) if ref.isdigit() else ref, axis, (name, lo, hi)))
    elif isinstance(dynamic_shapes, (list, tuple)):
        entries = [(i, axis, d) for i, axes in enumerate(dynamic_shapes) if axes
                   for axis, d in _axes_of(i, axes).items()]
    else:
        raise CompileError("dynamic_shapes must be a dict of input -> {axis: (name, min, max)}, a sequence of "
                           "such dicts per input, or strings like 'input_ids:1=seq:1..512'")
    dims = [_dim(ref, axis, d, input_names, ranks) for ref, axis, d in entries]
    _check_consistent(dims)
    return dims


def _axes_of(ref, axes) -> dict:
    if not isinstance(axes, dict):
        raise CompileError(f"dynamic_shapes for input {ref!r} must map axis -> (name, min, max)")
    return axes


def _dim(ref, axis, d, input_names: Sequence[str], ranks: Sequence[int]) -> DynamicDim:
    position = _input_position(ref, input_names)
    rank = ranks[position]
    if not isinstance(axis, int) or not -rank <= axis < rank:
        raise CompileError(f"input '{input_names[position]}' has {rank} dims; axis {axis} does not exist")
    if isinstance(d, str):
        name, lo, hi = d, 1, UNBOUNDED
    elif isinstance(d, tuple) and len(d) == 3:
        name, lo, hi = d
    elif hasattr(d, "__name__") and hasattr(d, "min"):  # torch.export.Dim
        name, lo, hi = d.__name__, int(d.min), min(int(d.max), UNBOUNDED)
    else:
        raise CompileError(f"dynamic dim for input '{input_names[position]}' axis {axis} must be a name, "
                           f"(name, min, max) or a torch.export.Dim, got {d!r}")
    if not (isinstance(name, str) and name.isidentifier()) or not 0 <= int(lo) <= int(hi):
        raise CompileError(f"dynamic dim {name!r} needs an identifier name and 0 <= min <= max, got [{lo}, {hi}]")
    return DynamicDim(position, axis % rank, name, int(lo), int(hi))


def _input_position(ref, input_names: Sequence[str]) -> int:
    if isinstance(ref, int) and 0 <= ref < len(input_names):
        return ref
    if isinstance(ref, str) and ref in input_names:
        return list(input_names).index(ref)
    raise CompileError(f"dynamic dim names input {ref!r}; the model's inputs are "
                       f"{', '.join(input_names)} (or their positions 0..{len(input_names) - 1})")


def _check_consistent(dims: list[DynamicDim]) -> None:
    seen: dict[str, DynamicDim] = {}
    places: set[tuple[int, int]] = set()
    for d in dims:
        if (d.input, d.axis) in places:
            raise CompileError(f"input {d.input} axis {d.axis} is given two dynamic dims")
        places.add((d.input, d.axis))
        other = seen.setdefault(d.name, d)
        if (other.min, other.max) != (d.min, d.max):
            raise CompileError(f"dynamic dim '{d.name}' is given two ranges: [{other.min}, {other.max}] and "
                               f"[{d.min}, {d.max}]")


def input_names(module) -> list[str]:
    """The names of ``forward``'s positional parameters (``*args`` as args_0, args_1...)."""
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return []
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def torch_dynamic_shapes(dims: list[DynamicDim], n_inputs: int) -> list[dict | None]:
    """torch.export's dynamic_shapes, one entry per input: the same torch Dim for a shared name."""
    import torch

    by_name: dict[str, Any] = {}
    specs: list[dict | None] = [None] * n_inputs
    for d in dims:
        if d.name not in by_name:
            # (the example's own size must not be 1: traceable_examples sees to that)
            by_name[d.name] = torch.export.Dim(d.name, min=d.min, max=min(d.max, UNBOUNDED - 1))
        specs[d.input] = {**(specs[d.input] or {}), d.axis: by_name[d.name]}
    return specs


def traceable_examples(examples: Sequence[Any], dims: list[DynamicDim]) -> tuple:
    """Example inputs with every dynamic axis of size 1 doubled: torch specializes size 1."""
    import torch

    result = list(examples)
    for d in dims:
        t = result[d.input]
        if t.shape[d.axis] == 1:
            result[d.input] = torch.cat([t, t], dim=d.axis)
    return tuple(result)


def verification_sizes(dims: list[DynamicDim], examples: Sequence[Any], cases: int) -> list[dict[str, int]]:
    """Sizes for each symbol in a few verification runs: inside the range, around the example's
    size, the range's ends where they are small."""
    sizes: list[dict[str, int]] = [{} for _ in range(cases)]
    for d in dims:
        if any(d.name in s for s in sizes):
            continue
        example = int(examples[d.input].shape[d.axis])
        candidates = [max(d.min, 1), example + 3, min(d.max, max(2 * example, example + 1))]
        for i, s in enumerate(sizes):
            s[d.name] = max(d.min, min(d.max, candidates[i % len(candidates)]))
    return sizes


def guard_error(exc: Exception, dims: list[DynamicDim]) -> CompileError | None:
    """One line for torch.export's "Constraints violated" (the model cannot take the range)."""
    text = str(exc)
    if "Constraints violated" not in text and "specialized" not in text:
        return None
    suggested = re.findall(r"^\s+(\w+) = (.+)$", text.split("Suggested fixes:")[-1], flags=re.M)
    named = {d.name: d for d in dims}
    for name, fix in suggested:
        if name in named:
            d = named[name]
            return CompileError(f"dynamic dim '{name}' (input {d.input}, axis {d.axis}) cannot take {d}: the model "
                                f"only accepts {name} = {fix} (torch.export's guard: e.g. a fixed-size position "
                                "table, or a size at which an inner dim becomes 1, which torch.export specialises); "
                                "give that range, a range and an example size that avoid it, or keep the dim static")
    first = next((line.strip() for line in text.splitlines() if line.strip().startswith("- ")), text.splitlines()[0])
    return CompileError(f"the dynamic dims cannot take the ranges given: {first.lstrip('- ')}")
