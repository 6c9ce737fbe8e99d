"""The ``compiler`` command: inspect, run and time artifacts that ``compile`` wrote.

    compiler info model.aot [--json]
    compiler run model.aot --input x=x.npy -o out.npz
    compiler bench model.aot --batch 8 --threads 4 --seconds 2
    compiler sign model.aot --key key.pem
    compiler verify model.aot --key pub.pem

Each subcommand is one function taking the parsed arguments and returning the exit status, plus
one entry in ``COMMANDS`` naming it and its arguments; ``main`` builds the parser from the table.

Exit status (as for ``compile``): 0 done; 2 bad input (one-line message); 3 internal error (a bug:
rerun with --debug for the traceback).

numpy and the standard library only: ``info`` reads the manifest alone (no native code is
loaded, so it works on any artifact on any machine); ``run`` and ``bench`` go through
``compiler.load``, which imports only the artifact's own runtime, never torch. ``sign`` and
``verify`` need the ``sign`` extra (model-signing); ``verify`` loads nothing either.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
import zipfile
from dataclasses import dataclass, fields
from typing import Any, Callable, Sequence

import numpy as np

from compiler import __version__, dims
from compiler.errors import CompileError, InputError, VerificationError, one_line

# Random integer inputs stay small and non-negative: valid token ids, indices and counts for
# nearly any model.
_RANDOM_INT_HIGH = 10
_TARGET_INFO_SHOWN_ELSEWHERE = {"requires", "variants", "tvm_target", "schedules"}


# -- info ------------------------------------------------------------------------------------------
def info(args: argparse.Namespace) -> int:
    """Describe an artifact from its manifest alone."""
    from compiler.driver.artifact import read_manifest

    manifest = read_manifest(args.artifact)
    summary = _describe(args.artifact, manifest)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(_format_info(summary, _compile_report_text(manifest.get("report"))))
    return 0


def _describe(path: str, manifest: dict[str, Any]) -> dict[str, Any]:
    from compiler.driver.signing import describe

    target_info = manifest.get("target_info") or {}
    report = manifest.get("report") or {}
    return {
        "artifact": path,
        "artifact_bytes": os.path.getsize(path),
        "format": manifest.get("format"),
        "format_version": manifest.get("format_version"),
        "model": manifest.get("model_name"),
        "source_kind": manifest.get("source_kind"),
        "source_sha256": manifest.get("source_sha256"),
        "target": manifest.get("target"),
        "inputs": manifest.get("inputs", []),
        "outputs": manifest.get("outputs", []),
        "dynamic_batch": manifest.get("dynamic_batch"),
        "requires": target_info.get("requires"),
        "variants": target_info.get("variants"),
        "tvm_target": target_info.get("tvm_target"),
        "target_info": target_info,
        "passes": manifest.get("passes", []),
        "payload": {name: entry.get("size") for name, entry in (manifest.get("payload") or {}).items()},
        "parameters": report.get("parameters"),
        "parameter_bytes": report.get("parameter_bytes"),
        "tool_versions": manifest.get("tool_versions", {}),
        "report": manifest.get("report"),
        "signature": describe(path),
    }


def _format_info(s: dict[str, Any], report_text: str) -> str:
    from compiler.driver.report import format_size

    lines = [f"{s['artifact']}: {s['format']} v{s['format_version']}, {format_size(s['artifact_bytes'])}",
             f"  model:       {s['model']} ({s['source_kind']}, source sha256 {str(s['source_sha256'])[:16]})",
             f"  target:      {s['target']}"]
    lines += _requirement_lines(s)
    extra = {k: v for k, v in s["target_info"].items()
             if k not in _TARGET_INFO_SHOWN_ELSEWHERE and isinstance(v, (str, int, float, bool))}
    if extra:
        lines.append("  target info: " + ", ".join(f"{k} {_scalar(v)}" for k, v in extra.items()))
    lines += [f"  inputs:      {_signature(s['inputs'])}",
              f"  outputs:     {_signature(s['outputs'])}",
              f"  passes:      {', '.join(s['passes']) or 'none'}"]
    if s["parameters"] is not None:
        lines.append(f"  parameters:  {s['parameters']:,} ({format_size(s['parameter_bytes'] or 0)})")
    lines.append("  payload:     " + ", ".join(f"{name} ({format_size(size or 0)})" for name, size in s["payload"].items()))
    lines.append("  tools:       " + ", ".join(f"{k} {v}" for k, v in s["tool_versions"].items()))
    lines.append(f"  signature:   {_signature_text(s['artifact'], s['signature'])}")
    lines.append("compile report:")
    lines += ["  " + line for line in report_text.splitlines()]
    return "\n".join(lines)


def _signature_text(path: str, signature: dict[str, Any]) -> str:
    if not signature["signed"]:
        return "none (unsigned)"
    key = signature.get("key_sha256")
    return (f"signed by key sha256 {key[:16] if key else '(unnamed)'}, not checked here "
            f"(compiler verify {path} --key PUB.pem)")


def _requirement_lines(s: dict[str, Any]) -> list[str]:
    """What the artifact needs of the machine that runs it: the recorded requirements (CPU
    features, GPU architecture) and per-CPU variants, else the TVM target it was built for."""
    lines = []
    requires = s["requires"]
    if isinstance(requires, dict):
        needs = []
        if requires.get("cpu_features"):
            needs.append("cpu features " + " ".join(requires["cpu_features"]))
        if requires.get("gpu_arch"):
            needs.append(f"gpu {requires['gpu_arch']}")
        needs += [f"{k} {_scalar(v)}" for k, v in requires.items() if k not in ("cpu_features", "gpu_arch")]
        lines.append(f"  requires:    {'; '.join(needs) or 'nothing beyond its runtime'}")
    elif isinstance(s["tvm_target"], dict):
        lines.append(f"  tvm target:  {_tvm_target(s['tvm_target'])}")
    for v in s["variants"] or []:
        if isinstance(v, dict):
            lines.append(f"  variant:     {v.get('name')}: mcpu {v.get('mcpu')}, "
                         f"features {' '.join(v.get('features') or []) or 'none'}, library {v.get('library')}")
    return lines


def _tvm_target(t: dict[str, Any]) -> str:
    """``{"kind": "cuda", "arch": "sm_90", "host": {"kind": "llvm"}}`` -> ``cuda arch=sm_90 host=(llvm)``."""
    rest = [f"{k}=({_tvm_target(v)})" if isinstance(v, dict) else f"{k}={_scalar(v)}"
            for k, v in t.items() if k != "kind"]
    return " ".join([str(t.get("kind", "?")), *rest])


def _scalar(v: Any) -> str:
    return json.dumps(v) if isinstance(v, bool) or v is None else str(v)


def _signature(entries: list[dict[str, Any]]) -> str:
    return ", ".join(f"{e.get('name')}: {e.get('dtype')}[{', '.join(str(d) for d in e.get('shape', []))}]"
                     for e in entries) or "none"


def _compile_report_text(report: Any) -> str:
    """The recorded compile report, formatted by ``CompileReport`` itself (fields this version
    does not know are ignored, so older and newer artifacts still show theirs)."""
    from compiler.driver.report import CompileReport, Verification

    if not isinstance(report, dict):
        return "none recorded"
    kwargs = _known_fields(CompileReport, report)
    try:
        if isinstance(kwargs.get("verification"), dict):
            kwargs["verification"] = Verification(**_known_fields(Verification, kwargs["verification"]))
        return CompileReport(**kwargs).format()
    except (TypeError, KeyError, ValueError, AttributeError, IndexError) as exc:  # a report of another shape
        return f"recorded, but this version cannot format it ({type(exc).__name__}: {one_line(exc)})"


def _known_fields(cls, values: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in values.items() if k in names}


# -- run -------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    """Run an artifact once on given or random inputs; print (and save) its outputs."""
    from compiler.driver.runtime import load

    _check_positive("--batch", args.batch)
    if args.input and args.batch is not None:
        raise InputError("--batch sizes random inputs; with --input files the batch is theirs (drop --batch)")
    if args.output:
        _check_output_path(args.output)
    model = load(args.artifact)
    if args.input:
        arrays = _input_files(args.input, model.input_names)
        source = "inputs from " + ", ".join(args.input)
    else:
        batch = _batch(model, args.batch)
        arrays = random_inputs(model.inputs, batch, args.seed)
        source = f"random inputs (seed {args.seed}, batch {batch})"
    start = time.perf_counter()
    outputs = model.run(arrays)
    ms = (time.perf_counter() - start) * 1000
    print(f"ran {args.artifact} ({model.target}) on {source} in {ms:.2f} ms (first call)")
    for name, array in zip(model.output_names, outputs):
        print(f"  {name}: {_array_summary(array)}")
    if args.output:
        _save_npz(args.output, dict(zip(model.output_names, outputs)))
        print(f"wrote {args.output}")
    return 0


def random_inputs(specs, batch: int, seed: int) -> list[np.ndarray]:
    """Arrays matching ``specs`` (``TensorSpec``s): floats standard normal, integers in
    [0, 10), booleans; symbolic dims take ``batch`` at axis 0 and 1 elsewhere."""
    rng = np.random.default_rng(seed)
    sizes: dict[str, int] = {}
    for spec in specs:
        for axis, d in enumerate(spec.shape):
            for symbol in sorted(dims.symbols_in(d)):
                sizes.setdefault(symbol, batch if axis == 0 else 1)
    arrays = []
    for spec in specs:
        try:
            dtype = np.dtype(spec.dtype)
        except TypeError:
            raise InputError(f"input '{spec.name}' has dtype {spec.dtype}, which numpy cannot make; "
                             "give it with --input") from None
        shape = dims.evaluate_shape(spec.shape, sizes)
        _check_random_size(spec.name, shape, dtype)
        if dtype == np.bool_:
            arrays.append(rng.integers(0, 2, shape).astype(np.bool_))
        elif dtype.kind in "iu":
            arrays.append(rng.integers(0, _RANDOM_INT_HIGH, shape).astype(dtype))
        else:
            arrays.append(rng.standard_normal(shape).astype(dtype))
    return arrays


# Random inputs are a convenience for trying an artifact; an artifact whose manifest asks for
# more than this (a crafted or absurd static shape) must be given its inputs with --input.
_RANDOM_INPUT_LIMIT_BYTES = 1 << 30


def _check_random_size(name: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
    nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if nbytes > _RANDOM_INPUT_LIMIT_BYTES:
        raise InputError(f"input '{name}' of shape {list(shape)} would take {nbytes / 2**30:.1f} GiB of random "
                         f"data, more than {_RANDOM_INPUT_LIMIT_BYTES >> 30} GiB; give it with --input")


def _batch(model, requested: int | None) -> int:
    """The batch size to run: ``requested`` (default 1) for a dynamic-batch artifact; a static
    artifact's own dim 0, which ``requested`` may only repeat."""
    ranked = [s for s in model.inputs if s.shape]
    if not ranked or any(isinstance(s.shape[0], str) for s in ranked):
        return requested or 1
    spec = ranked[0]
    static = spec.shape[0]
    if requested is not None and requested != static:
        raise InputError(f"{model.path} has a static batch of {static} (input {spec}); "
                         f"recompile it with --dynamic-batch to run batch {requested}")
    return static


def _input_files(values: list[str], names: Sequence[str]) -> dict[str, np.ndarray]:
    """--input values -> arrays by input name: NAME=file.npy, file.npz (arrays keyed by input
    name), or plain file.npy given in the signature's order."""
    named: dict[str, np.ndarray] = {}
    positional: list[tuple[str, np.ndarray]] = []
    for value in values:
        name, sep, path = value.partition("=")
        if sep and name not in names and not os.path.exists(value):
            raise InputError(f"--input {value}: the artifact has no input '{name}' (its inputs: {', '.join(names)})")
        if sep and name in names:
            _add_input(named, name, _load_array(path), value)
        elif value.endswith(".npz"):
            for key, array in _load_npz(value, names).items():
                _add_input(named, key, array, value)
        else:
            positional.append((value, _load_array(value)))
    if positional and named:
        raise InputError("give every --input by name (NAME=file.npy) or none by name, not a mix")
    if positional:
        if len(positional) != len(names):
            raise InputError(f"{len(positional)} --input files for {len(names)} inputs ({', '.join(names)})")
        return {name: array for name, (_path, array) in zip(names, positional)}
    missing = [n for n in names if n not in named]
    if missing:
        raise InputError(f"no --input for {', '.join(map(repr, missing))} (give every input, or none for "
                         "random inputs)")
    return named


def _add_input(named: dict[str, np.ndarray], name: str, array: np.ndarray, value: str) -> None:
    if name in named:
        raise InputError(f"input '{name}' is given twice (again by --input {value})")
    named[name] = array


def _load_array(path: str) -> np.ndarray:
    data = _np_load(path)
    if not isinstance(data, np.ndarray):
        raise InputError(f"{path} holds several arrays; give one .npy per input, or an .npz keyed by input name")
    return data


def _load_npz(path: str, names: Sequence[str]) -> dict[str, np.ndarray]:
    data = _np_load(path)
    unknown = [k for k in data if k not in names] if isinstance(data, dict) else []
    if unknown:
        raise InputError(f"{path} holds {', '.join(map(repr, unknown))}, which the artifact's inputs "
                         f"({', '.join(names)}) do not name")
    return data if isinstance(data, dict) else {names[0]: data}


def _np_load(path: str) -> np.ndarray | dict[str, np.ndarray]:
    """The array of an .npy file, or the arrays of an .npz file by key."""
    if not os.path.isfile(path):
        raise InputError(f"input file not found: {path}")
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic != b"\x93NUMPY" and not magic.startswith(b"PK"):  # numpy's own message would talk of pickles
        raise InputError(f"{path} is not a .npy or .npz file (write inputs with numpy.save or numpy.savez)")
    try:
        data = np.load(path, allow_pickle=False)
        if isinstance(data, np.ndarray):
            return data
        with data:
            return {k: data[k] for k in data.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path} is not a .npy or .npz file numpy can read ({one_line(exc, 200)})") from None


def _array_summary(a: np.ndarray) -> str:
    head = f"{a.dtype.name}[{', '.join(map(str, a.shape))}]"
    if a.size == 0:
        return f"{head} (empty)"
    if a.dtype.kind not in "biuf":
        return head
    values = a.astype(np.float64)
    return f"{head} min {values.min():.6g} max {values.max():.6g} mean {values.mean():.6g}"


def _check_output_path(path: str) -> None:
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        raise InputError(f"output directory does not exist: {directory} (create it first or choose another -o path)")
    if os.path.isdir(path):
        raise InputError(f"output path {path} is a directory; give a file name such as "
                         f"{os.path.join(path, 'outputs.npz')}")


def _save_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Write ``path`` whole or not at all: a temporary file in its directory, renamed into place."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


# -- bench -----------------------------------------------------------------------------------------
def bench(args: argparse.Namespace) -> int:
    """Time an artifact through ``load()`` on random numpy inputs: latency percentiles and throughput."""
    from compiler.driver.runtime import load

    for flag, value in (("--batch", args.batch), ("--threads", args.threads), ("--runs", args.runs),
                        ("--seconds", args.seconds)):
        _check_positive(flag, value)
    if args.warmup < 0:
        raise InputError(f"--warmup must be 0 or more, got {args.warmup}")
    if args.runs is not None and args.seconds is not None:
        raise InputError("give --runs or --seconds, not both")
    model = load(args.artifact, threads=args.threads)
    batch = _batch(model, args.batch)
    arrays = random_inputs(model.inputs, batch, args.seed)
    for _ in range(args.warmup):
        model.run(arrays)
    latencies = _time_runs(lambda: model.run(arrays), args.runs,
                           args.seconds if args.seconds is not None or args.runs is not None else 1.0)
    result = _bench_result(args, model.target, batch, latencies)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(_format_bench(result))
    return 0


def _time_runs(call: Callable[[], Any], runs: int | None, seconds: float | None) -> np.ndarray:
    """Seconds per call, for ``runs`` calls or as many as fit in ``seconds`` (at least one)."""
    latencies = []
    clock = time.perf_counter
    start = clock()
    while True:
        t0 = clock()
        call()
        t1 = clock()
        latencies.append(t1 - t0)
        if len(latencies) == runs or (runs is None and t1 - start >= seconds):
            return np.array(latencies)


def _bench_result(args: argparse.Namespace, target: str, batch: int, latencies: np.ndarray) -> dict[str, Any]:
    ms = latencies * 1000
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"artifact": args.artifact, "target": target, "batch": batch, "threads": args.threads,
            "warmup": args.warmup, "runs": len(ms), "seconds": float(latencies.sum()),
            "latency_ms": {"p50": float(p50), "p90": float(p90), "p99": float(p99), "min": float(ms.min()),
                           "mean": float(ms.mean()), "max": float(ms.max())},
            "throughput_samples_per_s": batch * len(ms) / float(latencies.sum())}


def _format_bench(r: dict[str, Any]) -> str:
    lat = r["latency_ms"]
    threads = r["threads"] or "default"
    return "\n".join([
        f"bench {r['artifact']} ({r['target']}): batch {r['batch']}, threads {threads}, "
        f"{r['warmup']} warmup + {r['runs']} timed runs in {r['seconds']:.2f} s",
        f"  latency:    p50 {lat['p50']:.3f} ms, p90 {lat['p90']:.3f} ms, p99 {lat['p99']:.3f} ms "
        f"(min {lat['min']:.3f}, mean {lat['mean']:.3f}, max {lat['max']:.3f})",
        f"  throughput: {r['throughput_samples_per_s']:.1f} samples/s",
    ])


def _check_positive(flag: str, value: float | None) -> None:
    if value is not None and value <= 0:
        raise InputError(f"{flag} must be positive, got {value}")


# -- sign and verify ------------------------------------------------------------------------------
def sign(args: argparse.Namespace) -> int:
    """Sign an existing artifact (in place, or into --output) with an EC private key."""
    from compiler.driver.signing import sign_artifact

    key = sign_artifact(args.artifact, args.key, args.output)
    print(f"signed {args.output or args.artifact} with {args.key} (public key sha256 {key.fingerprint[:16]})")
    return 0


def verify(args: argparse.Namespace) -> int:
    """Check an artifact's signature against trusted public keys and every hash, loading nothing."""
    from compiler.driver.signing import TRUSTED_KEYS_ENV, trust_policy, verify_artifact

    if args.key is None and TRUSTED_KEYS_ENV not in os.environ:
        raise InputError(f"give the trusted public key with --key PUB.pem (or set ${TRUSTED_KEYS_ENV})")
    policy = trust_policy(args.key, source="--key")
    key, manifest, _ = verify_artifact(args.artifact, policy)
    n = len(manifest["payload"])
    print(f"verified {args.artifact}: signed by {key}; manifest and {n} payload file{'' if n == 1 else 's'} intact")
    return 0


# -- bundle ----------------------------------------------------------------------------------------
def bundle(args: argparse.Namespace) -> int:
    """Write a runtime bundle: runs artifacts where only Python and numpy are installed."""
    from compiler.driver.bundle import build

    out = build(args.outdir, python=args.python, platform_tag=args.platform, artifacts=args.artifact,
                tarball=args.tarball, with_onnxruntime=args.with_onnxruntime)
    print(f"wrote runtime bundle {out} (python3 {out}/run.py ARTIFACT; see {out}/README.md)")
    if args.tarball:
        print(f"wrote {out}.tar.gz")
    return 0


# -- the command table -----------------------------------------------------------------------------
Argument = tuple[tuple[str, ...], dict[str, Any]]


def arg(*flags: str, **options: Any) -> Argument:
    """One ``add_argument`` call, as data."""
    return flags, options


@dataclass(frozen=True)
class Command:
    name: str
    summary: str
    run: Callable[[argparse.Namespace], int]
    arguments: tuple[Argument, ...]


ARTIFACT = arg("artifact", metavar="ARTIFACT", help="artifact file written by `compile`")
SEED = arg("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
BATCH = arg("--batch", type=int, metavar="N",
            help="batch of random inputs: the size of symbolic dim 0 (default 1); a static artifact "
                 "takes only its own")

COMMANDS: tuple[Command, ...] = (
    Command("info", "describe an artifact: target, signature, requirements, sizes, versions, compile report "
                    "(reads the manifest only: works for any target on any machine)", info,
            (ARTIFACT, arg("--json", action="store_true", help="print the description as JSON"))),
    Command("run", "run an artifact once on .npy inputs (or random ones) and summarise or save its outputs", run,
            (ARTIFACT,
             arg("-i", "--input", action="append", metavar="[NAME=]FILE",
                 help="an input: NAME=x.npy, x.npy (in signature order) or inputs.npz keyed by input name "
                      "(repeat per input; none: random inputs)"),
             arg("-o", "--output", metavar="OUT.npz", help="write the outputs to an .npz keyed by output name"),
             BATCH, SEED)),
    Command("bench", "time an artifact through load(): p50/p90/p99 latency and throughput", bench,
            (ARTIFACT, BATCH,
             arg("--threads", type=int, metavar="N", help="intra-op threads (default: the runtime's)"),
             arg("--warmup", type=int, default=5, metavar="N", help="untimed runs first (default 5)"),
             arg("--runs", type=int, metavar="N", help="timed runs (default: as many as fit in 1 s)"),
             arg("--seconds", type=float, metavar="S", help="time runs for S seconds"),
             SEED, arg("--json", action="store_true", help="print the results as JSON"))),
    Command("sign", "sign an artifact with an EC private key (model-signing; pip install 'aot-compiler[sign]')",
            sign,
            (ARTIFACT, arg("--key", required=True, metavar="KEY.pem", help="PEM EC private key (P-256, P-384, P-521)"),
             arg("-o", "--output", metavar="OUT.aot", help="write the signed artifact here (default: in place)"))),
    Command("verify", "check an artifact's signature against trusted public keys and all its hashes, "
                      "loading nothing (exit 0 ok, 2 with the reason)", verify,
            (ARTIFACT, arg("--key", action="append", metavar="PUB.pem",
                           help="a trusted PEM public key (repeat for several; default "
                                "$AOT_COMPILER_TRUSTED_KEYS)"))),
    Command("bundle", "write a runtime bundle: a directory (and tarball) running artifacts on a machine with only "
                      "Python and numpy (our runtime, TVM's runtime libraries, optionally artifacts)", bundle,
            (arg("outdir", metavar="OUTDIR", help="new or empty directory to write"),
             arg("--python", metavar="X.Y", help="Python version of the deploy machine (default: this one)"),
             arg("--platform", metavar="TAG", help="wheel platform tag of the deploy machine "
                                                   "(default manylinux_2_28_x86_64; e.g. manylinux2014_x86_64)"),
             arg("--artifact", action="append", metavar="PATH", help="an artifact to include (repeatable)"),
             arg("--tarball", action="store_true", help="also write OUTDIR.tar.gz"),
             arg("--with-onnxruntime", action="store_true",
                 help="add the onnxruntime wheel (wheels/) for onnx artifacts"))),
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="compiler",
        description="Inspect, run and time artifacts written by `compile` (numpy in and out; no torch needed).")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        sp = sub.add_parser(command.name, help=command.summary, description=command.summary, parents=[common])
        for flags, options in command.arguments:
            sp.add_argument(*flags, **options)
        sp.set_defaults(handler=command.run)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_with_exit_codes(lambda: args.handler(args), debug=args.debug)


def run_with_exit_codes(command, debug: bool) -> int:
    """Run a command-line tool's body with the exit-status contract every tool keeps: 0 done,
    1 verification failed, 2 bad input (one line), 3 internal error (one line; the traceback
    with --debug), 130 interrupted, 141 when the reader of our output went away."""
    try:
        return command()
    except CompileError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    except VerificationError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `compiler info x.aot | head`: the reader left; stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as exc:  # a bug: say so in one line unless --debug
        if debug:
            traceback.print_exc()
        else:
            print(f"internal error: {type(exc).__name__}: {one_line(exc)} "
                  "(this is a compiler bug; rerun with --debug for the traceback)", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
