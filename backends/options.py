"""Each target's options: one frozen dataclass per target, validated when built.

The field names are the option keys the target's emitter receives (``backends/registry.py``
passes them on as a dict) and, with ``-`` for ``_``, the command-line flags (``--tuning-db``),
so the names are written once. ``help`` in a field's metadata is the flag's help text;
``type`` converts the flag's text (default ``str``); ``flag_only`` marks a flag that stores
True.

    OnnxOptions(opset=17)
    LlvmOptions(cpu="x86-64-v3", tune=500, tuning_db="tuning/")
    LlvmOptions(cpu="znver4", tune=500, tuning_db="tuning/", rpc_tracker="10.0.0.5:9190", rpc_key="epyc")
    CudaOptions(cuda_arch="sm_90")
    HlsOptions(hls_precision="ap_fixed<16,6>", reuse_factor=4)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from compiler.errors import CompileError


def option(default: Any = None, help: str = "", type: Any = str, **more: Any):  # noqa: A002
    """A dataclass field that also describes its command-line flag."""
    return field(default=default, metadata={"help": help, "type": type, **more})


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CompileError(f"--hls-precision-map is not valid JSON: {exc.msg} (e.g. '{{\"layer\": \"ap_fixed<10,4>\"}}')") from None


@dataclass(frozen=True)
class TargetOptions:
    """Base of the per-target option classes. ``target`` names the compile target."""

    target: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        """The options that were set, as the emitter receives them."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) is not None and getattr(self, f.name) is not False}

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


@dataclass(frozen=True)
class OnnxOptions(TargetOptions):
    target: ClassVar[str] = "onnx"
    opset: int | None = option(help="ONNX opset (default: a recent one onnxruntime runs)", type=int)
    onnx_standard_only: bool = option(False, flag_only=True,
                                      help="emit only standard ONNX ops (no onnxruntime contrib ops such as "
                                           "FusedConv, MultiHeadAttention), for runtimes other than onnxruntime")


@dataclass(frozen=True)
class LlvmOptions(TargetOptions):
    target: ClassVar[str] = "llvm"
    cpu: str | None = option(help="LLVM CPU name to build one library for, or 'host' (this machine's); default: "
                                  "portable libraries for x86-64-v3 and AVX-512+VNNI, the best one picked at load")
    tune: int | None = option(help="search schedules with MetaSchedule for TRIALS trials", type=int,
                              metavar="TRIALS")
    tuning_db: str | None = option(help="tuning database directory: read, and written by --tune", metavar="DIR")
    rpc_tracker: str | None = option(help="with --tune: time the candidates on the TVM RPC servers registered at "
                                          "this tracker under --rpc-key (they are still built here); give --cpu "
                                          "the servers' CPU unless it is this machine's",
                                     metavar="HOST:PORT")
    rpc_key: str | None = option(help="the key the RPC servers registered with (python -m tvm.exec.rpc_server "
                                      "--tracker HOST:PORT --key KEY)", metavar="KEY")
    rpc_wait: float | None = option(help="seconds to wait for a first RPC server under the key (default 45)",
                                    type=float, metavar="SECONDS")
    rpc_timeout: float | None = option(help="seconds one candidate may take on an RPC server before it counts as "
                                            "failed and the server as hung (default 30)", type=float,
                                       metavar="SECONDS")

    def __post_init__(self):
        if self.tune is not None and (isinstance(self.tune, bool) or int(self.tune) < 1):
            raise CompileError(f"--tune takes a positive number of trials, got {self.tune}")
        if self.tune is not None and not self.tuning_db:
            raise CompileError("tuning needs a database directory: pass tuning_db (--tuning-db DIR) with tune")
        self._check_rpc()

    def _check_rpc(self) -> None:
        """The RPC options go together, and only with a search; the tracker is asked once here, so
        an address nobody answers on fails before any work (the search itself waits for servers)."""
        rpc = {"rpc_key": self.rpc_key, "rpc_wait": self.rpc_wait, "rpc_timeout": self.rpc_timeout}
        if self.rpc_tracker is None:
            given = [name for name, value in rpc.items() if value is not None]
            if given:
                raise CompileError(f"--{given[0].replace('_', '-')} needs --rpc-tracker HOST:PORT")
            return
        if self.tune is None:
            raise CompileError("--rpc-tracker times tuning candidates: use it with --tune N --tuning-db DIR")
        if not self.rpc_key:
            raise CompileError("--rpc-tracker needs --rpc-key KEY: the key the RPC servers registered with")
        for name in ("rpc_wait", "rpc_timeout"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not float(value) > 0):
                raise CompileError(f"--{name.replace('_', '-')} must be a positive number of seconds, got {value}")
        from backends.tvm.tune import check_tracker

        check_tracker(self.rpc_tracker)


@dataclass(frozen=True)
class CudaOptions(TargetOptions):
    target: ClassVar[str] = "cuda"
    cuda_arch: str | None = option(help="CUDA architecture such as sm_90 (default: the local GPU's, else sm_80)",
                                   metavar="SM")

    def __post_init__(self):
        if self.cuda_arch is not None and not re.fullmatch(r"(sm_)?\d+(\.\d)?[af]?", str(self.cuda_arch)):
            raise CompileError(f"CUDA architecture '{self.cuda_arch}' is not of the form sm_90 (or 90, 9.0)")


@dataclass(frozen=True)
class HlsOptions(TargetOptions):
    target: ClassVar[str] = "hls"
    hls_precision: str | None = option(help="default fixed-point type such as 'ap_fixed<16,6>', "
                                            "or 'auto' (from calibration ranges)", metavar="TYPE")
    reuse_factor: int | None = option(help="multiplications sharing one multiplier (default 1)", type=int,
                                      metavar="N")
    hls_part: str | None = option(help="FPGA part (default xcvu13p-flga2577-2-e)", metavar="PART")
    hls_clock_ns: float | None = option(help="clock period in ns (default 5)", type=float, metavar="NS")
    hls_precision_map: dict[str, str] | None = option(
        help='per-layer types, e.g. \'{"linear_relu": "ap_fixed<10,4>"}\' (layer names: the IR node names)',
        metavar="JSON")

    def __post_init__(self):
        if self.reuse_factor is not None and int(self.reuse_factor) < 1:
            raise CompileError(f"--reuse-factor must be >= 1, got {self.reuse_factor}")
        if self.hls_clock_ns is not None and not float(self.hls_clock_ns) > 0:
            raise CompileError(f"--hls-clock-ns must be positive, got {self.hls_clock_ns}")
        if isinstance(self.hls_precision_map, str):  # from the command line
            object.__setattr__(self, "hls_precision_map", _json(self.hls_precision_map))
        if self.hls_precision_map is not None and not isinstance(self.hls_precision_map, dict):
            raise CompileError("--hls-precision-map must be a JSON object of layer name -> type")


TARGET_OPTIONS: dict[str, type[TargetOptions]] = {
    cls.target: cls for cls in (OnnxOptions, LlvmOptions, CudaOptions, HlsOptions)}


def options_for(target: str, values: dict[str, Any] | None = None) -> TargetOptions:
    """The target's options built from a dict; a key of another target is a one-line error
    naming the target(s) that take it."""
    cls = TARGET_OPTIONS[target]
    values = {k: v for k, v in (values or {}).items() if v is not None}
    foreign = sorted(k for k in values if k not in cls.names())
    if foreign:
        raise CompileError(f"option(s) {', '.join(foreign)} do not apply to target '{target}'; "
                           + who_takes(foreign[0]))
    return cls(**values)


def who_takes(name: str) -> str:
    takers = [t for t, cls in TARGET_OPTIONS.items() if name in cls.names()]
    return f"'{name}' is for target(s) {', '.join(takers)}" if takers else f"'{name}' is not a known option"


__all__ = ["CudaOptions", "HlsOptions", "LlvmOptions", "OnnxOptions", "TARGET_OPTIONS", "TargetOptions",
           "option", "options_for", "who_takes"]
