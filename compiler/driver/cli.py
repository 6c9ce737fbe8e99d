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
import warnings
from typing import Sequence


def build_parser() -> argparse.ArgumentParser:
    from compiler.driver import options as opts

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
    p.add_argument("--dynamic", action="append", metavar="INPUT:AXIS=NAME[:MIN..MAX]",
                   help="keep an input axis symbolic with a name and a range, e.g. input_ids:1=seq:1..512 "
                        "(repeat per axis; INPUT is forward's parameter name or the input's position)")
    p.add_argument("--input-shape", action="append", metavar="SHAPE",
                   help="example input shape such as 1x3x224x224 or 2x32:int64 (repeat per input)")
    p.add_argument("--weights", metavar="STATE_DICT", help="state dict for a factory model (loaded weights_only)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow loading a pickled nn.Module (runs code from the file: only for files you trust)")
    opts.add_flags(p.add_argument_group("verification"), opts.VerifyOptions)
    opts.add_flags(p.add_argument_group("passes"), opts.PassOptions)
    p.add_argument("--print-ir-after-all", action="store_true", help="print the IR after every pass (stderr)")
    p.add_argument("--dump-ir", metavar="DIR", help="write the IR after every pass into DIR")
    opts.add_flags(p.add_argument_group("ONNX target (onnx)"), opts.OnnxOptions)
    opts.add_flags(p.add_argument_group("TVM CPU target (llvm)"), opts.LlvmOptions)
    opts.add_flags(p.add_argument_group("TVM GPU target (cuda)"), opts.CudaOptions)
    opts.add_flags(p.add_argument_group("HLS target (hls)"), opts.HlsOptions)
    compression = p.add_argument_group("compression")
    opts.add_flags(compression, opts.QuantizeOptions)
    opts.add_flags(compression, opts.PruneOptions)
    compression.add_argument("--eval", metavar="DATA", dest="eval_data",
                             help="labelled .npz (inputs + 'labels'): report accuracy, size and latency before/after")
    p.add_argument("--sign-key", metavar="KEY.pem",
                   help="sign the artifact with this EC private key (PEM; needs pip install 'aot-compiler[sign]'): "
                        "load(path, trusted_keys=[PUB.pem]) and `compiler verify` check it")
    p.add_argument("--report-json", metavar="PATH", help="also write the compile report as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    p.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.debug:  # torch's own deprecation notices are not the user's business
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)

    from compiler.driver.tool import run_with_exit_codes

    return run_with_exit_codes(lambda: _run(args), debug=args.debug)


def _run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from compiler.driver import options as opts
    from compiler.driver.api import compile
    from compiler.driver.progress import Progress
    from compiler.errors import CompileError

    if args.dump_ir and not os.path.isdir(args.dump_ir):
        raise CompileError(f"--dump-ir directory does not exist: {args.dump_ir}")
    quantize = opts.from_args(args, opts.QuantizeOptions)
    prune = opts.from_args(args, opts.PruneOptions)
    result = compile(args.model, target=opts.target_from_args(args, args.target), output=args.output,
                     dynamic_batch=args.dynamic_batch, verify=opts.from_args(args, opts.VerifyOptions),
                     passes=replace(opts.from_args(args, opts.PassOptions), after_pass=_ir_printer(args)),
                     quantize=quantize if quantize.mode else None, prune=prune if prune.active else None,
                     weights=args.weights, trust_pickle=args.trust_pickle, input_shapes=args.input_shape,
                     dynamic_shapes=args.dynamic,
                     eval_data=args.eval_data, progress=Progress(enabled=not args.quiet), sign_key=args.sign_key)
    if not args.quiet:
        print(result.report.format())
        if args.sign_key:
            print(f"signed with {args.sign_key}: check it with `compiler verify {result.path} --key PUB.pem`")
    if args.report_json:
        with open(args.report_json, "w") as f:
            json.dump(result.report.to_dict(), f, indent=2)
    return 0


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
