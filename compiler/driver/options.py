"""``compile()``'s settings, one small frozen dataclass per concern, validated when built.

    compile(model, x, target="llvm")                                   # defaults everywhere
    compile(model, x, target=LlvmOptions(cpu="x86-64-v3"))            # the target and its options
    compile(model, x, verify=VerifyOptions(rtol=1e-2, atol=1e-3))
    compile(model, x, quantize="int8-dynamic")                         # shorthand for a mode
    compile(model, x, quantize=QuantizeOptions("int8", calibration=batches, calibrator="percentile"))
    compile(model, x, prune=PruneOptions(0.5, structure="channel"))    # or prune=0.5
    compile(model, x, passes=PassOptions("fold_constants,dce", check=True))

Every field also describes its command-line flag (``option()``: help, type, flag name when it is
not the field name), so ``compile``'s parser is built from these classes and the CLI and the
API share one list of names. The target classes live with the targets (``backends/options.py``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from typing import Any, Callable

from backends.options import (TARGET_OPTIONS, CudaOptions, HlsOptions, LlvmOptions, OnnxOptions, TargetOptions,
                              option, options_for)
from compiler.errors import CompileError
from passes.calibrate import CALIBRATORS
from passes.quantize import INT4_BLOCK_SIZE
from passes.quantize import MODES as QUANTIZE_MODES

PRUNE_STRUCTURES = ("unstructured", "channel")
PRUNE_SCOPES = ("global", "layer")


def _names(groups: Any) -> tuple[str, ...]:
    """Comma-separated names, from one string or repeated ones."""
    if isinstance(groups, str):
        groups = [groups]
    return tuple(n.strip() for g in groups or () for n in str(g).split(",") if n.strip())


@dataclass(frozen=True)
class VerifyOptions:
    """Run the artifact against PyTorch before it is written (``verify=False`` skips it)."""

    enabled: bool = option(True, flag="--no-verify", flag_stores=False,
                           help="skip running the artifact against PyTorch")
    rtol: float | None = option(help="relative tolerance of verification (default 1e-3)", type=float)
    atol: float | None = option(help="absolute tolerance of verification (default 1e-4)", type=float)
    seed: int = option(0, help="seed for the random verification inputs", type=int)

    def __post_init__(self):
        for name in ("rtol", "atol"):
            value = getattr(self, name)
            if value is not None and not float(value) >= 0:
                raise CompileError(f"--{name} must be a number >= 0, got {value}")


@dataclass(frozen=True)
class QuantizeOptions:
    """Quantization: ``mode`` is int8 (static: needs ``calibration``), int8-dynamic, int8-weight
    or int4-weight."""

    mode: str | None = option(flag="--quantize", metavar="MODE",
                              help="int8 (static, needs --calibration), int8-dynamic, int8-weight or int4-weight "
                                   "(linear/matmul weights in 4 bits, targets onnx, llvm, cuda)")
    calibration: Any = option(metavar="DATA",
                              help="calibration inputs: an .npz with one array per model input (samples along "
                                   "dim 0), or 'random' (testing only); in Python also an iterable of input tuples")
    calibrator: str = option("minmax", help="activation range estimator: minmax or percentile")
    skip: tuple[str, ...] = option((), flag="--quantize-skip", type=_names, action="append", metavar="NAMES",
                                   help="comma-separated node names or op types to keep in float (repeatable)")
    per_channel: bool = option(True, flag="--per-tensor-weights", flag_stores=False,
                               help="one weight scale per tensor, not per channel")
    int4_block_size: int = option(INT4_BLOCK_SIZE, type=int, metavar="N",
                                  help="int4-weight: rows of K sharing one weight scale (a power of two >= 16; "
                                       f"default {INT4_BLOCK_SIZE})")

    def __post_init__(self):
        object.__setattr__(self, "skip", _names(self.skip))
        if self.mode is not None and self.mode not in QUANTIZE_MODES:
            raise CompileError(f"unknown quantization '{self.mode}'; choose one of {', '.join(QUANTIZE_MODES)}")
        if self.calibrator not in CALIBRATORS:
            raise CompileError(f"unknown calibrator '{self.calibrator}'; choose one of {', '.join(CALIBRATORS)}")
        if self.mode == "int8" and self.calibration is None:
            raise CompileError("static int8 quantization needs calibration data: "
                               "quantize=QuantizeOptions('int8', calibration=...) (an iterable of input tuples or "
                               "an .npz path), or --calibration data.npz (or --calibration random, for testing "
                               "only: it gives poor accuracy)")
        if self.mode == "int4-weight":
            from passes.quantize import check_block_size

            check_block_size(self.int4_block_size)


@dataclass(frozen=True)
class PruneOptions:
    """Pruning (``amount`` of the weights or channels removed) and weight sharing."""

    amount: float | None = option(flag="--prune", type=float, metavar="FRACTION",
                                  help="fraction of weights (or channels) to remove")
    structure: str = option("unstructured", flag="--prune-structure", help="unstructured (default) or channel")
    scope: str = option("global", flag="--prune-scope", help="unstructured threshold: global (default) or layer")
    multiple_of: int = option(16, flag="--prune-multiple", type=int, metavar="N",
                              help="keep channel counts a multiple of N (default 16)")
    sharing_bits: int | None = option(flag="--weight-sharing-bits", type=int, metavar="BITS",
                                      help="cluster each layer into 2^BITS values")

    def __post_init__(self):
        if self.amount is not None and not 0.0 < float(self.amount) < 1.0:
            raise CompileError(f"--prune must be a fraction between 0 and 1 (exclusive), got {self.amount}")
        if self.structure not in PRUNE_STRUCTURES:
            raise CompileError(f"unknown pruning structure '{self.structure}'; "
                               f"choose one of {', '.join(PRUNE_STRUCTURES)}")
        if self.scope not in PRUNE_SCOPES:
            raise CompileError(f"unknown pruning scope '{self.scope}'; choose one of {', '.join(PRUNE_SCOPES)}")
        if int(self.multiple_of) < 1:
            raise CompileError(f"channel multiple must be >= 1, got {self.multiple_of}")
        if self.sharing_bits is not None and not 1 <= int(self.sharing_bits) <= 8:
            raise CompileError(f"weight sharing bits must be 1..8, got {self.sharing_bits}")

    @property
    def active(self) -> bool:
        return bool(self.amount or self.sharing_bits)


@dataclass(frozen=True)
class PassOptions:
    """The pass pipeline: ``pipeline`` is None (the standard one), 'none', or pass names."""

    pipeline: str | tuple[str, ...] | None = option(
        flag="--passes", help="comma-separated pass pipeline, or 'none' (default: the standard pipeline)")
    check: bool = option(False, flag="--check-passes", flag_only=True,
                         help="run the interpreter before and after each pass and name a pass that changes "
                              "the numbers")
    after_pass: Callable | None = option(cli=False)  # called as after_pass(pass, graph): IR dumps

    def __post_init__(self):
        from passes import make_pipeline

        make_pipeline(self.pipeline)  # unknown pass names: the one-line error, before any work


# -- the command line, built from the classes ---------------------------------------------------------
def add_flags(parser, cls) -> None:
    """Add a flag per field of ``cls`` to ``parser`` (an argparse parser or group); the parsed
    value lands under ``<ClassName>.<field>`` and ``from_args`` reads it back."""
    for f in fields(cls):
        meta = f.metadata
        if not meta or not meta.get("cli", True):
            continue
        flag = meta.get("flag") or "--" + f.name.replace("_", "-")
        dest = f"{cls.__name__}.{f.name}"
        if meta.get("flag_only") or "flag_stores" in meta:
            stores = meta.get("flag_stores", True)
            parser.add_argument(flag, dest=dest, action="store_true" if stores else "store_false",
                                default=None, help=meta["help"])
            continue
        kwargs = {"dest": dest, "default": None, "help": meta["help"], "metavar": meta.get("metavar") or f.name.upper()}
        if meta.get("action") == "append":
            kwargs["action"] = "append"
        else:
            kwargs["type"] = _flag_type(meta.get("type", str), flag)
        parser.add_argument(flag, **kwargs)


def _flag_type(convert, flag: str):
    def parse(text: str):
        try:
            return convert(text)
        except CompileError as exc:
            raise argparse.ArgumentTypeError(f"{flag}: {exc}") from None
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag}: invalid value {text!r}") from None
    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def given(args: argparse.Namespace, cls) -> dict[str, Any]:
    """The fields of ``cls`` the user set on the command line."""
    prefix = f"{cls.__name__}."
    return {k[len(prefix):]: v for k, v in vars(args).items() if k.startswith(prefix) and v is not None}


def from_args(args: argparse.Namespace, cls):
    """An instance of ``cls`` from the parsed flags (defaults for flags not given)."""
    return cls(**given(args, cls))


def target_from_args(args: argparse.Namespace, target: str) -> TargetOptions:
    """The chosen target's options; a flag of another target is a one-line error."""
    if target not in TARGET_OPTIONS:
        from backends.registry import get_target

        get_target(target)  # the one-line unknown-target error
    values = {name: value for cls in TARGET_OPTIONS.values() for name, value in given(args, cls).items()}
    return options_for(target, values)


# -- compile()'s keywords ----------------------------------------------------------------------------
def target_options(target: str | TargetOptions) -> TargetOptions:
    """``target=`` as a name or as options: the options (defaults for a bare name)."""
    if isinstance(target, TargetOptions):
        return target
    if isinstance(target, str):
        if target not in TARGET_OPTIONS:
            from backends.registry import get_target

            get_target(target)
        return TARGET_OPTIONS[target]()
    raise CompileError(f"target must be a target name ({', '.join(TARGET_OPTIONS)}) or one of "
                       f"OnnxOptions/LlvmOptions/CudaOptions/HlsOptions, got {type(target).__name__}")


def verify_options(verify: bool | VerifyOptions) -> VerifyOptions:
    if isinstance(verify, VerifyOptions):
        return verify
    if isinstance(verify, bool):
        return VerifyOptions(enabled=verify)
    raise CompileError(f"verify must be True, False or a VerifyOptions, got {type(verify).__name__}")


def quantize_options(quantize: str | QuantizeOptions | None) -> QuantizeOptions | None:
    if quantize is None or isinstance(quantize, QuantizeOptions):
        return quantize if quantize is None or quantize.mode else None
    if isinstance(quantize, str):
        return QuantizeOptions(mode=quantize)
    raise CompileError(f"quantize must be a mode name ({', '.join(QUANTIZE_MODES)}) or a QuantizeOptions, "
                       f"got {type(quantize).__name__}")


def prune_options(prune: float | PruneOptions | None) -> PruneOptions | None:
    if prune is None or isinstance(prune, PruneOptions):
        return prune if prune is None or prune.active else None
    if isinstance(prune, (int, float)) and not isinstance(prune, bool):
        return PruneOptions(amount=float(prune))
    raise CompileError(f"prune must be a fraction or a PruneOptions, got {type(prune).__name__}")


def pass_options(passes: str | list | tuple | PassOptions | None) -> PassOptions:
    if isinstance(passes, PassOptions):
        return passes
    if passes is None or isinstance(passes, (str, list, tuple)):
        return PassOptions(pipeline=passes if passes is None or isinstance(passes, str) else tuple(passes))
    raise CompileError(f"passes must be pass names or a PassOptions, got {type(passes).__name__}")


# Keywords compile() took before the options were grouped, and their new spelling.
MOVED_KEYWORDS = {
    "rtol": "verify=VerifyOptions(rtol=...)", "atol": "verify=VerifyOptions(atol=...)",
    "seed": "verify=VerifyOptions(seed=...)",
    "check_passes": "passes=PassOptions(check=True)", "after_pass": "passes=PassOptions(after_pass=...)",
    "opset": "target=OnnxOptions(opset=...)", "onnx_standard_only": "target=OnnxOptions(onnx_standard_only=True)",
    "target_options": "target=LlvmOptions(...)/CudaOptions(...)/HlsOptions(...)",
    "calibration_data": "quantize=QuantizeOptions('int8', calibration=...)",
    "calibrator": "quantize=QuantizeOptions(..., calibrator=...)",
    "quantize_skip": "quantize=QuantizeOptions(..., skip=...)",
    "per_channel": "quantize=QuantizeOptions(..., per_channel=...)",
    "int4_block_size": "quantize=QuantizeOptions('int4-weight', int4_block_size=...)",
    "prune_structure": "prune=PruneOptions(amount, structure=...)",
    "prune_scope": "prune=PruneOptions(amount, scope=...)",
    "prune_multiple_of": "prune=PruneOptions(amount, multiple_of=...)",
    "weight_sharing_bits": "prune=PruneOptions(sharing_bits=...)",
}


def reject_moved_keywords(kwargs: dict[str, Any]) -> None:
    for name in kwargs:
        if name in MOVED_KEYWORDS:
            raise CompileError(f"compile({name}=...) is now spelled compile({MOVED_KEYWORDS[name]}): "
                               "settings are grouped (see compiler.driver.options)")
        raise CompileError(f"compile() got an unknown keyword '{name}'")


__all__ = ["CudaOptions", "HlsOptions", "LlvmOptions", "OnnxOptions", "PassOptions", "PruneOptions",
           "QuantizeOptions", "TargetOptions", "VerifyOptions", "add_flags", "from_args", "target_from_args"]
