"""The ``compile`` command.

    compile model.pt2 --target onnx -o model.aot
    compile models/mlp.py:SeedMLP --dynamic-batch
    compile net.pt --trust-pickle --input-shape 1x3x224x224

Exit status: 0 compiled and verified; 1 verification failed; 2 bad input (one-line message);
3 internal error (a bug: rerun with --debug for the traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
import warnings
from typing import Sequence


def build_parser() -> argparse.ArgumentParser:
    from passes.quantize import INT4_BLOCK_SIZE

    p = argparse.ArgumentParser(
        prog="compile",
        description="Compile a PyTorch model ahead of time into one artifact file that "
                    "compiler.load() runs with numpy in and out.",
        epilog="MODEL is a torch.export archive (.pt2), a TorchScript archive, path/to/file.py:Factory "
               "or package.module:Factory (a callable returning an nn.Module, optionally with example inputs), "
               "or a pickled nn.Module (only with --trust-pickle).")
    p.add_argument("model", metavar="MODEL", help="model file or factory spec")
    p.add_argument("-o", "--output", help="artifact path (default: <model name>.aot)")
    p.add_argument("-t", "--target", default="onnx", help="compile target: onnx (default), llvm, cuda or hls")
    p.add_argument("--dynamic-batch", action="store_true", help="keep dim 0 of every input symbolic")
    p.add_argument("--input-shape", action="append", metavar="SHAPE",
                   help="example input shape such as 1x3x224x224 or 2x32:int64 (repeat per input)")
    p.add_argument("--weights", metavar="STATE_DICT", help="state dict for a factory model (loaded weights_only)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow loading a pickled nn.Module (runs code from the file: only for files you trust)")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip running the artifact against PyTorch")
    p.add_argument("--rtol", type=float, default=None, help="relative tolerance of verification (default 1e-3)")
    p.add_argument("--atol", type=float, default=None, help="absolute tolerance of verification (default 1e-4)")
    p.add_argument("--passes", default=None, help="comma-separated pass pipeline, or 'none' (default: the standard pipeline)")
    p.add_argument("--check-passes", action="store_true",
                   help="run the interpreter before and after each pass and name a pass that changes the numbers")
    p.add_argument("--print-ir-after-all", action="store_true", help="print the IR after every pass (stderr)")
    p.add_argument("--dump-ir", metavar="DIR", help="write the IR after every pass into DIR")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: a recent one onnxruntime runs)")
    p.add_argument("--onnx-standard-only", action="store_true",
                   help="emit only standard ONNX ops (no onnxruntime contrib ops such as FusedConv, "
                        "MultiHeadAttention), for runtimes other than onnxruntime")
    tvm = p.add_argument_group("TVM targets (llvm, cuda)")
    tvm.add_argument("--cpu", metavar="MCPU", help="LLVM CPU to generate code for (default: the host's)")
    tvm.add_argument("--cuda-arch", metavar="SM", help="CUDA architecture such as sm_90 (default: the local GPU's, "
                                                      "else sm_80)")
    tvm.add_argument("--tune", type=int, metavar="TRIALS", help="search schedules with MetaSchedule for TRIALS trials")
    tvm.add_argument("--tuning-db", metavar="DIR", help="tuning database directory: read, and written by --tune")
    hls = p.add_argument_group("HLS target (hls)")
    hls.add_argument("--hls-precision", metavar="TYPE",
                     help="default fixed-point type such as 'ap_fixed<16,6>', or 'auto' (from calibration ranges)")
    hls.add_argument("--reuse-factor", type=int, metavar="N", help="multiplications sharing one multiplier (default 1)")
    hls.add_argument("--hls-part", metavar="PART", help="FPGA part (default xcvu13p-flga2577-2-e)")
    hls.add_argument("--hls-clock-ns", type=float, metavar="NS", help="clock period in ns (default 5)")
    hls.add_argument("--hls-precision-map", metavar="JSON",
                     help='per-layer types, e.g. \'{"linear_relu": "ap_fixed<10,4>"}\' (layer names: the IR node names)')
    c = p.add_argument_group("compression")
    c.add_argument("--quantize", metavar="MODE",
                   help="int8 (static, needs --calibration), int8-dynamic, int8-weight or int4-weight "
                        "(linear/matmul weights in 4 bits, targets onnx, llvm, cuda)")
    c.add_argument("--calibration", metavar="DATA",
                   help="calibration inputs: an .npz with one array per model input (samples along dim 0), "
                        "or 'random' (testing only)")
    c.add_argument("--calibrator", default="minmax", help="activation range estimator: minmax or percentile")
    c.add_argument("--quantize-skip", action="append", metavar="NAMES",
                   help="comma-separated node names or op types to keep in float (repeatable)")
    c.add_argument("--per-tensor-weights", action="store_true", help="one weight scale per tensor, not per channel")
    c.add_argument("--int4-block-size", type=int, default=INT4_BLOCK_SIZE, metavar="N",
                   help="int4-weight: rows of K sharing one weight scale (a power of two >= 16; "
                        f"default {INT4_BLOCK_SIZE})")
    c.add_argument("--prune", type=float, metavar="FRACTION", help="fraction of weights (or channels) to remove")
    c.add_argument("--prune-structure", default="unstructured", help="unstructured (default) or channel")
    c.add_argument("--prune-scope", default="global", help="unstructured threshold: global (default) or layer")
    c.add_argument("--prune-multiple", type=int, default=16, metavar="N",
                   help="keep channel counts a multiple of N (default 16)")
    c.add_argument("--weight-sharing-bits", type=int, metavar="BITS", help="cluster each layer into 2^BITS values")
    c.add_argument("--eval", metavar="DATA", dest="eval_data",
                   help="labelled .npz (inputs + 'labels'): report accuracy, size and latency before/after")
    p.add_argument("--seed", type=int, default=0, help="seed for the random verification inputs")
    p.add_argument("--report-json", metavar="PATH", help="also write the compile report as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    p.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from compiler.errors import CompileError, VerificationError, one_line

    if not args.debug:  # torch's own deprecation notices are not the user's business
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)

    try:
        return _run(args)
    except CompileError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    except VerificationError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: say so in one line unless --debug
        if args.debug:
            traceback.print_exc()
        else:
            print(f"internal error: {type(exc).__name__}: {one_line(exc)} "
                  "(this is a compiler bug; rerun with --debug for the traceback)", file=sys.stderr)
        return 3


def _run(args: argparse.Namespace) -> int:
    from compiler.driver.api import compile
    from compiler.errors import CompileError
    from compiler.driver.progress import Progress

    if args.dump_ir and not os.path.isdir(args.dump_ir):
        raise CompileError(f"--dump-ir directory does not exist: {args.dump_ir}")
    progress = Progress(enabled=not args.quiet)
    target_options = {"cpu": args.cpu, "cuda_arch": args.cuda_arch, "tune": args.tune, "tuning_db": args.tuning_db,
                      "hls_precision": args.hls_precision, "reuse_factor": args.reuse_factor,
                      "hls_part": args.hls_part, "hls_clock_ns": args.hls_clock_ns,
                      "hls_precision_map": _json_option(args.hls_precision_map, "--hls-precision-map")}
    result = compile(args.model, target=args.target, output=args.output, dynamic_batch=args.dynamic_batch,
                     verify=args.verify, rtol=args.rtol, atol=args.atol, passes=args.passes,
                     check_passes=args.check_passes, opset=args.opset,
                     onnx_standard_only=args.onnx_standard_only,
                     target_options={k: v for k, v in target_options.items() if v is not None}, weights=args.weights,
                     trust_pickle=args.trust_pickle, input_shapes=args.input_shape, seed=args.seed,
                     progress=progress, after_pass=_ir_printer(args), quantize=args.quantize,
                     calibration_data=args.calibration, calibrator=args.calibrator,
                     quantize_skip=_names(args.quantize_skip), per_channel=not args.per_tensor_weights,
                     int4_block_size=args.int4_block_size,
                     prune=args.prune, prune_structure=args.prune_structure, prune_scope=args.prune_scope,
                     prune_multiple_of=args.prune_multiple, weight_sharing_bits=args.weight_sharing_bits,
                     eval_data=args.eval_data)
    if not args.quiet:
        print(result.report.format())
    if args.report_json:
        with open(args.report_json, "w") as f:
            json.dump(result.report.to_dict(), f, indent=2)
    return 0


def _json_option(text: str | None, flag: str):
    from compiler.errors import CompileError

    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CompileError(f"{flag} is not valid JSON: {exc.msg} (e.g. '{{\"layer\": \"ap_fixed<10,4>\"}}')") from None


def _names(groups: list[str] | None) -> tuple[str, ...]:
    return tuple(n.strip() for g in groups or () for n in g.split(",") if n.strip())


def _ir_printer(args: argparse.Namespace):
    if not (args.print_ir_after_all or args.dump_ir):
        return None
    counter = iter(range(1, 1000))

    def after_pass(p, graph) -> None:
        text = str(graph)
        if args.print_ir_after_all:
            print(f"// IR after pass {p.name}\n{text}", file=sys.stderr)
        if args.dump_ir:
            with open(os.path.join(args.dump_ir, f"{next(counter):02d}_{p.name}.ir"), "w") as f:
                f.write(text + "\n")

    return after_pass


if __name__ == "__main__":
    sys.exit(main())
