"""The TVM targets' emitter: IR ``Graph`` -> Relax IRModule (``backends.tvm.lower``) -> compiled
library (``backends.tvm.pipeline.build``) -> artifact payload.

llvm, portable by default: one library per x86 feature level (``PORTABLE_VARIANTS``: AVX2+FMA
``x86-64-v3``, and AVX-512 with VNNI for Intel Cascade Lake and later servers and AMD Zen 4/5),
built from one shared Relax preparation; ``load()`` runs the best one the host supports.
Option ``cpu``: ``"host"`` (the build machine's CPU as LLVM names it) or an LLVM CPU name builds
a single library for that CPU. cuda: ``arch`` = option ``cuda_arch`` (``sm_XX`` or ``XX``), else
the local GPU's compute capability (``tvm.cuda(0)``, then ``nvidia-smi``), else ``sm_80``; its
host code is compiled for the portable baseline ``x86-64-v3``.

target_info: ``tvm_target`` (the TVM target dict of the baseline library; for cuda with its llvm
host), ``variants`` (llvm: ``[{name, mcpu, mattr?, features, library}]``, features sorted LLVM
names of the instruction-set extensions the code may use), ``requires`` (``arch`` and ``os`` of
the build triple, ``cpu_features``: what any of the libraries needs, i.e. the baseline's; cuda
also ``gpu_arch``), the TVM version, and
``runnable_here`` / ``not_runnable_reason`` when this machine cannot run it (cuda without a GPU,
a CPU lacking the features), so ``compile()`` skips verification with that note.

Weights: every constant of 4 KiB or more leaves the libraries when they add up to 1 MiB or more
(``params.py``: lifted into parameters of ``main`` once the pipeline's rewrites have made it
final, packed or transformed);
the payload stores each once in ``weights.bin`` (stored, page-aligned, each tensor 64-byte
aligned; ``weights.json`` its table), and each variant's manifest entry (cuda: target_info) lists
under ``params`` the tensors its library takes after the inputs, in order.
"""

from __future__ import annotations

import gc
import os
import subprocess
import tempfile
import time
from typing import Any

from compiler.ir import Graph

LIBRARY = "model.so"
PARAMS_SUFFIX = ".params"  # the folder beside a library its build saves the lifted weights in
DEFAULT_CUDA_ARCH = "sm_80"
HOST_CPU = "host"
# (variant name, LLVM target attributes), baseline first. The AVX-512 level is x86-64-v4 (F, CD,
# BW, DQ, VL) plus VNNI, common to Intel Cascade Lake and later servers and AMD Zen 4/5; without
# "-prefer-256-bit" LLVM's generic v4 tuning splits the 16-lane kernels into 256-bit halves
# (measured: zoo resnet 0.97 ms vs 0.78 ms as znver4; 0.83 ms without the preference).
PORTABLE_VARIANTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("x86-64-v3", {"mcpu": "x86-64-v3"}),
    ("x86-64-v4-vnni", {"mcpu": "x86-64-v4", "mattr": ["+avx512vnni", "-prefer-256-bit"]}),
)
PORTABLE_BASELINE = PORTABLE_VARIANTS[0][1]["mcpu"]


def supported_ops() -> set[str]:
    from .lower import supported_ops as ops

    return ops()


def target_dict(options: dict[str, Any]) -> dict[str, Any]:
    """The TVM target as a plain dict (recorded in the manifest): for llvm, the baseline variant's;
    for cuda, the arch with its limits (``cuda_arch_attrs``) and the llvm host."""
    if options.get("target") == "cuda":
        host = {"kind": "llvm", "mcpu": PORTABLE_BASELINE} if _builds_x86() else host_target(HOST_CPU)
        arch = _cuda_arch(options.get("cuda_arch"))
        return {"kind": "cuda", "arch": arch, **cuda_arch_attrs(arch), "host": host}
    return cpu_variants(options.get("cpu"))[0][1]


# What the GPU schedules (dlight) read from a cuda target, per compute capability. Limits common
# to every arch from sm_70 up: 1024 threads and 64K 32-bit registers per block, warps of 32, and
# 48 KiB of *static* shared memory per block. Larger shared memory (up to 227 KiB on sm_90) needs
# the dynamic opt-in, which the kernels TVM generates here (static ``__shared__`` arrays) do not
# use, so 48 KiB is the limit their tiles must fit, on every arch. The L2 size is that of the
# arch's data-center card (sm_86: A10, sm_89: L4, sm_90: H100/H200).
_CUDA_BLOCK_LIMITS = {"max_threads_per_block": 1024, "max_num_threads": 1024, "thread_warp_size": 32,
                      "registers_per_block": 65536, "max_shared_memory_per_block": 48 * 1024}
_MIB = 1 << 20
CUDA_L2_BYTES = {70: 6 * _MIB, 75: 4 * _MIB, 80: 40 * _MIB, 86: 6 * _MIB, 87: 4 * _MIB, 89: 48 * _MIB,
                 90: 50 * _MIB}
# An arch newer than the table gets its newest entry's values, one older than all gets the smallest L2.
_OLDEST_L2 = min(CUDA_L2_BYTES.values())


def cuda_arch_attrs(arch: str) -> dict[str, int]:
    """The cuda target attributes for ``arch`` (``sm_XX``, with an optional ``a``/``f`` suffix):
    the per-block limits and the L2 size of the nearest known arch at or below it."""
    digits = arch.removeprefix("sm_").rstrip("af")
    version = int(digits) if digits.isdigit() else max(CUDA_L2_BYTES)
    known = [v for v in CUDA_L2_BYTES if v <= version]
    return {**_CUDA_BLOCK_LIMITS, "l2_cache_size_bytes": CUDA_L2_BYTES[max(known)] if known else _OLDEST_L2}


def cpu_variants(cpu: str | None) -> list[tuple[str, dict[str, Any]]]:
    """(name, llvm target dict) of each library to build for option ``cpu``: the portable set by
    default (on an x86 build machine), else the one CPU named (``host``: this machine's)."""
    if cpu is None and _builds_x86():
        return [(name, {"kind": "llvm", **attrs}) for name, attrs in PORTABLE_VARIANTS]
    tdict = host_target(cpu)
    return [(tdict["mcpu"], tdict)]


def host_target(cpu: str | None) -> dict[str, Any]:
    """The llvm target for CPU ``cpu`` (None or ``host``: this machine's CPU)."""
    import tvm

    if cpu in (None, HOST_CPU):
        cpu = str(tvm.target.codegen.llvm_get_system_cpu())
    return {"kind": "llvm", "mcpu": cpu}


def build_platform() -> dict[str, str]:
    """``{"arch", "os"}`` of the libraries built here (LLVM's host triple): what load() checks first."""
    import tvm

    from .cpu import triple_platform

    arch, os_name = triple_platform(str(tvm.target.codegen.llvm_get_system_triple()))
    return {"arch": arch, "os": os_name}


def _builds_x86() -> bool:
    return build_platform()["arch"] == "x86_64"


def target_features(tdict: dict[str, Any]) -> list[str]:
    """The instruction-set features (LLVM names, sorted) code for the llvm target ``tdict`` may use."""
    import tvm
    from tvm.target.codegen import llvm_get_cpu_features

    from .cpu import isa_features

    return isa_features(llvm_get_cpu_features(tvm.target.Target(tdict)))


def check_cpu_name(cpu: str) -> None:
    """CompileError (one line, a few valid names) unless LLVM knows the CPU ``cpu`` (or it is ``host``)."""
    import difflib

    import tvm
    from tvm.target import codegen

    from compiler.errors import CompileError

    if cpu == HOST_CPU:
        return
    triple = str(codegen.llvm_get_system_triple())
    if codegen.llvm_is_valid_cpu(cpu, triple):
        return
    known = [str(n) for n in codegen.llvm_get_cpu_archlist(tvm.target.Target({"kind": "llvm"}))]
    near = difflib.get_close_matches(cpu, known, n=3)
    examples = list(dict.fromkeys(near + [PORTABLE_BASELINE, "x86-64-v4", "skylake-avx512", "icelake-server",
                                          "znver4"]))
    raise CompileError(f"unknown --cpu '{cpu}': LLVM knows e.g. {', '.join(examples[:6])} "
                       f"(or 'host' for this machine's CPU; leave it out for the portable x86 default)")


def _cuda_arch(requested: str | None) -> str:
    if requested:
        arch = str(requested)
        return arch if arch.startswith("sm_") else "sm_" + arch.replace(".", "")
    local = local_gpu_arch()
    return local or DEFAULT_CUDA_ARCH


def local_gpu_arch() -> str | None:
    """``sm_XX`` of GPU 0 when one is present here, else None."""
    try:
        import tvm

        dev = tvm.cuda(0)
        if dev.exist:
            return "sm_" + str(dev.compute_version).replace(".", "")
    except Exception:  # no CUDA runtime/driver in this process: ask nvidia-smi
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout.split()
        return "sm_" + out[0].replace(".", "") if out else None
    except (OSError, subprocess.SubprocessError):
        return None


def gpu_present() -> bool:
    try:
        import tvm

        return bool(tvm.cuda(0).exist)
    except Exception:
        return False


def make_target(tdict: dict[str, Any]):
    import tvm

    if tdict["kind"] == "cuda":
        return tvm.target.Target({k: v for k, v in tdict.items() if k != "host"}, host=tdict["host"])
    return tvm.target.Target(tdict)


def emit_target(graph: Graph, options: dict[str, Any]) -> tuple[dict[str, bytes], dict[str, Any]]:
    """The registry's entry point: ``{"model.so": bytes}`` and target_info."""
    import tvm

    from . import params, pipeline
    from .lower import to_relax

    tdict = target_dict(options)
    target = make_target(tdict)
    weight_bytes = sum(v.const.nbytes for v in graph.constants.values())
    graph = _full_linear_inputs(graph.copy())  # prepare_graph rewrites in place: keep the caller's
    graph = pipeline.prepare_graph(graph, target)
    mod, notes = to_relax(graph, tdict["kind"])
    del graph
    info: dict[str, Any] = {"tvm_target": tdict, "tvm_version": tvm.__version__}
    if tdict["kind"] == "cuda":
        stats: dict[str, Any] = {}
        with _BuildProgress(options.get("progress") or (lambda line: None), f"cuda {tdict['arch']}") as progress, \
                tempfile.TemporaryDirectory(prefix="aot-tvm-") as tmp:
            folder = os.path.join(tmp, "params")
            executable = pipeline.build(mod, target, {**options, "stats": stats, "stage": progress.stage,
                                                      "before_codegen": params.saving_hook(folder)})
            progress.stage("writing the library (machine code, link)...")
            payload = {LIBRARY: export_bytes(executable)}
            weights, lists = params.weights_payload({LIBRARY: params.saved_arrays(folder)})
        payload.update(weights)
        if lists[LIBRARY]:
            info["params"] = lists[LIBRARY]
        info.update(library=LIBRARY, requires={**build_platform(), "cpu_features": target_features(tdict["host"]),
                                               "gpu_arch": tdict["arch"]})
    else:
        payload, stats = _build_cpu_variants(mod, options, info)
    del mod
    if weight_bytes >= RELEASE_BYTES:
        # The lowered modules hold the weights (their constants share the arrays' memory) inside
        # reference cycles of TVM and Python objects: collect them now, before the artifact is
        # written, not at some later collection (a 400 MB model held them through the write).
        gc.collect()
    if stats:
        info["schedules"] = stats
    if notes.get("dequantized"):
        info["dequantized"] = notes["dequantized"]
    if tdict["kind"] == "cuda" and not gpu_present():
        info["runnable_here"] = False
        info["not_runnable_reason"] = f"no NVIDIA GPU/driver on this machine to run the {tdict['arch']} module"
    elif tdict["kind"] == "llvm":
        _note_if_not_runnable(info)
    return payload, info


def _build_cpu_variants(mod, options: dict[str, Any], info: dict[str, Any]):
    """One library per CPU variant from one shared preparation of ``mod``; fills
    ``info["variants"]`` and ``info["requires"]``. Returns (payload, schedule stats). The variants
    are built side by side in forked processes when this machine has the cores (``build_jobs``):
    each build is single-threaded (TVM's lowering and LLVM), and they share nothing after the
    preparation."""
    from . import params, pipeline
    from .cpu import best_variant

    say = options.get("progress") or (lambda line: None)
    chosen = cpu_variants(options.get("cpu"))
    variants = [{"name": name, **{k: v for k, v in tdict.items() if k != "kind"}, "features": target_features(tdict),
                 "library": LIBRARY if len(chosen) == 1 else f"model.{name}.so"}
                for name, tdict in chosen]
    # Tuning measures on this machine: the search (or the saved database) serves the variant this
    # machine runs best; the other variants get the search-free rules.
    tuned = best_variant(variants) if options.get("tune") or options.get("tuning_db") else None
    if options.get("rpc_tracker") and len(variants) == 1:  # timed on the RPC servers: --cpu names their CPU
        tuned = variants[0]
    start = time.perf_counter()
    prepared = pipeline.prepare_portable(mod)
    # The builds pack the big weights by recipe: their packed copies are made here, while written.
    deferred = params.DeferredWeights(prepared)
    # A search times candidates on this machine's cores: a second build beside it would skew them.
    jobs = 1 if tuned is not None else build_jobs(len(variants))
    say(f"emit: llvm: prepared in {time.perf_counter() - start:.1f} s; building {len(variants)} "
        f"librar{'y' if len(variants) == 1 else 'ies'} ({', '.join(v['name'] for v in variants)})"
        + (f", {jobs} at a time" if jobs > 1 else ""))

    def builder(variant):
        tdict = {"kind": "llvm", **{k: variant[k] for k in ("mcpu", "mattr") if k in variant}}
        own = dict(options) if variant is tuned else {k: v for k, v in options.items()
                                                      if k not in ("tune", "tuning_db")}

        def build(say_line, path: str) -> dict[str, Any]:
            own_stats: dict[str, Any] = {}
            with _BuildProgress(say_line, f"llvm {variant['name']}") as progress:
                # A tuned build runs here, never forked (jobs 1): the search reports to the caller's own progress.
                # The weights leave the library: saved next to it, for the parent to store once.
                executable = pipeline.build(prepared, make_target(tdict),
                                            {**own, "stats": own_stats, "stage": progress.stage,
                                             "deferred_weights": deferred,
                                             "before_codegen": params.saving_hook(path + PARAMS_SUFFIX, deferred)},
                                            prepared=True)
                progress.stage("writing the library (machine code, link)...")
                executable.export_library(path)
            return own_stats

        return build

    with tempfile.TemporaryDirectory(prefix="aot-tvm-") as tmp:
        paths = [os.path.join(tmp, variant["library"]) for variant in variants]
        all_stats = run_builds([builder(v) for v in variants], paths, jobs, say,
                               [f"llvm {v['name']}" for v in variants])
        payload: dict[str, Any] = {}
        for variant, path in zip(variants, paths):
            with open(path, "rb") as f:
                payload[variant["library"]] = f.read()
        # Memory-mapped: the mappings outlive the folder's removal; the writer streams from them.
        weights, lists = params.weights_payload({v["library"]: params.saved_arrays(p + PARAMS_SUFFIX, deferred)
                                                 for v, p in zip(variants, paths)})
    payload.update(weights)
    for variant in variants:
        if lists[variant["library"]]:
            variant["params"] = lists[variant["library"]]
    stats = all_stats[variants.index(tuned)] if tuned is not None else all_stats[0]
    info["variants"] = variants
    info["requires"] = {**build_platform(), "cpu_features": min((v["features"] for v in variants), key=len)}
    if tuned is not None and len(variants) > 1:
        info["tuned_variant"] = tuned["name"]
    return payload, stats


JOBS_ENV = "AOT_COMPILE_JOBS"
RELEASE_BYTES = 64 << 20  # weights from which a full garbage collection (~0.3 s) pays after emit


def build_jobs(builds: int) -> int:
    """How many library builds run at once: one per usable core, at most ``builds``; the
    environment variable ``AOT_COMPILE_JOBS`` overrides it (1: one after the other, in this process)."""
    from compiler.errors import CompileError

    value = os.environ.get(JOBS_ENV, "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise CompileError(f"{JOBS_ENV} must be a positive number of processes, got {value!r}")
        return max(1, min(builds, int(value)))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(builds, cores))


def run_builds(builds, paths: list[str], jobs: int, say, labels: list[str]) -> list[Any]:
    """Run each ``build(say, path)`` (writes its library to ``path``, returns a picklable value);
    returns their values in order. ``jobs > 1``: in forked processes, ``jobs`` at a time, their
    progress lines relayed to ``say``; the first error is raised here (the others are stopped),
    as its own exception when it can cross the process boundary, else as a one-line CompileError."""
    if jobs <= 1 or len(builds) <= 1:
        return [build(say, path) for build, path in zip(builds, paths)]
    import multiprocessing
    from multiprocessing.connection import wait

    from compiler.errors import CompileError

    # fork: the children inherit the prepared module (no serialization of its weights) and
    # the imported TVM; they only lower and compile, never run kernels in TVM's thread pool.
    context = multiprocessing.get_context("fork")
    results: list[Any] = [None] * len(builds)
    done = [False] * len(builds)
    pending = list(range(len(builds)))
    running: dict[Any, tuple[int, Any]] = {}
    try:
        while pending or running:
            while pending and len(running) < jobs:
                index = pending.pop(0)
                reader, writer = context.Pipe(duplex=False)
                process = context.Process(target=_build_child, args=(builds[index], paths[index], writer),
                                          name=f"aot-build-{labels[index]}", daemon=True)
                process.start()
                writer.close()  # the child holds the only writer: its exit is the reader's EOF
                running[reader] = (index, process)
            for reader in wait(list(running)):
                index, process = running[reader]
                try:
                    kind, value = reader.recv()
                except EOFError:
                    process.join()
                    reader.close()
                    del running[reader]
                    if not done[index]:
                        how = (f"was killed by signal {-process.exitcode}" if (process.exitcode or 0) < 0
                               else f"exited with status {process.exitcode}")
                        raise CompileError(f"building the {labels[index]} library: its worker process {how} "
                                           f"(out of memory?); set {JOBS_ENV}=1 to build one library at a time")
                    continue
                if kind == "say":
                    say(value)
                elif kind == "done":
                    results[index], done[index] = value, True
                else:
                    raise value
    finally:
        for reader, (_index, process) in running.items():
            if process.is_alive():
                process.kill()
            process.join()
            reader.close()
    return results


def _build_child(build, path: str, writer) -> None:
    """A forked build: progress lines, then ("done", value) or ("error", exception) to ``writer``.

    The build runs on a new thread. TVM's CPU thread pool is per thread (thread_local) and a
    fork copies the forking thread's pool without its workers: had the parent run a parallel
    kernel on this thread (verifying an earlier artifact), a kernel run here by the build (TVM's
    FoldConstant evaluates constant subgraphs) would wait for those workers forever. A new
    thread starts a pool of its own."""
    import threading

    worker = threading.Thread(target=_run_build, args=(build, path, writer), name="aot-build", daemon=True)
    worker.start()
    worker.join()


def _run_build(build, path: str, writer) -> None:
    import pickle
    import threading

    lock = threading.Lock()  # the progress reminders come from a timer thread

    def send(message) -> None:
        with lock:
            writer.send(message)

    try:
        send(("done", build(lambda line: send(("say", line)), path)))
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the parent as one error
        try:
            pickle.loads(pickle.dumps(exc))
        except Exception:  # TVM's errors may not cross processes: keep their type name and message
            from compiler.errors import CompileError

            exc = CompileError(f"{type(exc).__name__}: {exc}")
        send(("error", exc))
    finally:
        writer.close()


class _BuildProgress:
    """The progress lines of one library build (``emit: LABEL: ...``): one per stage, a reminder
    with the time so far while a stage lasts (every ``every`` seconds), and the total at the end."""

    def __init__(self, say, label: str, every: float = 15.0):
        import threading

        self.say, self.label, self.every = say, label, every
        self.start = time.perf_counter()
        self.current = ""
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._remind, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, exc_type, *_):
        self.stopped.set()
        self.thread.join()
        if exc_type is None:
            self.say(f"emit: {self.label} built in {time.perf_counter() - self.start:.1f} s")

    def stage(self, text: str) -> None:
        self.current = text
        self.say(f"emit: {self.label}: {text}")

    def _remind(self) -> None:
        while not self.stopped.wait(self.every):
            if self.current.endswith("..."):
                self.say(f"emit: {self.label}: {self.current} ({time.perf_counter() - self.start:.0f} s)")


def _note_if_not_runnable(info: dict[str, Any]) -> None:
    """Mark an llvm artifact this machine cannot run (built for a newer CPU), so compile() skips
    verification with the reason instead of failing."""
    from .cpu import best_variant, missing_features, platform_problem

    problem = platform_problem(info["requires"]["arch"], info["requires"]["os"])
    if problem is None and best_variant(info["variants"]) is None:
        problem = (f"this machine's CPU lacks {', '.join(missing_features(info['requires']['cpu_features']))} "
                   f"needed by the {info['variants'][0]['name']} library")
    if problem:
        info["runnable_here"] = False
        info["not_runnable_reason"] = problem


def _full_linear_inputs(graph: Graph) -> Graph:
    """Give every bias-less ``linear`` an explicit absent bias (3 inputs): prepare_graph's
    padding reads ``inputs[2]``."""
    for node in list(graph.nodes):
        if node.op == "linear" and len(node.inputs) == 2:
            new = graph.insert_before(node, "linear", [*node.inputs, None], dict(node.attrs), location=node.location)
            name = node.output.name
            graph.replace_all_uses_with(node.output, new.output)
            graph.remove_node(node)
            graph.rename_value(node.output, name + "_old")
            graph.rename_value(new.output, name)
    return graph


def export_bytes(executable) -> bytes:
    """The executable as a shared library, read back into memory."""
    with tempfile.TemporaryDirectory(prefix="aot-tvm-") as tmp:
        path = os.path.join(tmp, LIBRARY)
        executable.export_library(path)
        with open(path, "rb") as f:
            return f.read()


__all__ = ["CUDA_L2_BYTES", "DEFAULT_CUDA_ARCH", "HOST_CPU", "LIBRARY", "PORTABLE_VARIANTS", "check_cpu_name",
           "cpu_variants", "cuda_arch_attrs", "emit_target", "host_target", "local_gpu_arch", "supported_ops",
           "target_dict", "target_features"]
