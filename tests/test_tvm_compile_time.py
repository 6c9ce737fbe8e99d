"""The llvm emit phase: its CPU variants built side by side (forked processes, ``run_builds``)
give the same libraries as built one after the other, a failing or dying build surfaces as one
error, and the phase reports its progress per library (kernels scheduled, LLVM, built in)."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import textwrap
import zipfile

import pytest

pytest.importorskip("tvm")

import compiler  # noqa: E402
from backends.tvm import emit as tvm_emit  # noqa: E402
from compiler.driver.progress import Progress  # noqa: E402
from compiler.errors import CompileError  # noqa: E402
from models import get_model  # noqa: E402


def _compile(tmp_path, name: str, progress=False):
    model = get_model("lenet").factory().eval()
    return compiler.compile(model, model.example_inputs(1), target="llvm", output=tmp_path / name, verify=False,
                            progress=progress)


def _libraries(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {n: zf.read(n) for n in zf.namelist() if n.endswith(".so")}


def test_emit_reports_each_library_scheduled_and_built(tmp_path):
    stream = io.StringIO()
    # A long delay keeps the phase timer's own lines out: what is left comes from the emitter.
    art = _compile(tmp_path, "a.aot", Progress(stream=stream, delay=600))
    info = art.report.target_info
    lines = stream.getvalue().splitlines()
    functions = info["schedules"]["functions"]
    assert functions > 0
    for variant in info["variants"]:
        label = f"[compile] emit: llvm {variant['name']}"
        own = [line for line in lines if line.startswith(label + ":") or line.startswith(label + " ")]
        assert f"{label}: scheduled {functions}/{functions} kernels" in own
        assert any(line.startswith(f"{label}: building") for line in own)
        built = [line for line in own if re.fullmatch(re.escape(label) + r" built in \d+\.\d s", line)]
        assert len(built) == 1 and own[-1] == built[0]
        assert len(own) <= 6  # a few lines per library, not one per kernel
    assert lines[0].startswith("[compile] emit: llvm: prepared in ")


def test_quiet_compile_prints_nothing(tmp_path):
    stream = io.StringIO()
    _compile(tmp_path, "a.aot", Progress(enabled=False, stream=stream))
    assert stream.getvalue() == ""


def test_parallel_build_gives_the_same_libraries(tmp_path, monkeypatch):
    monkeypatch.setenv(tvm_emit.JOBS_ENV, "1")
    serial = _libraries(_compile(tmp_path, "serial.aot").path)
    monkeypatch.setenv(tvm_emit.JOBS_ENV, "2")
    parallel = _libraries(_compile(tmp_path, "parallel.aot").path)
    assert len(serial) == len(tvm_emit.cpu_variants(None))
    assert parallel == serial


# -- run_builds: the process plumbing, with stand-in builds -----------------------------------------
def _writer(value, lines=()):
    def build(say, path):
        for line in lines:
            say(line)
        with open(path, "w") as f:
            f.write(str(value))
        return {"value": value}

    return build


def _run(tmp_path, builds, jobs=2):
    said: list[str] = []
    paths = [str(tmp_path / f"lib{i}.so") for i in range(len(builds))]
    results = tvm_emit.run_builds(builds, paths, jobs, said.append, [f"llvm v{i}" for i in range(len(builds))])
    return results, said, paths


@pytest.mark.parametrize("jobs", [1, 2])
def test_results_files_and_lines_come_back_in_order(tmp_path, jobs):
    results, said, paths = _run(tmp_path, [_writer(i, [f"v{i} a", f"v{i} b"]) for i in range(3)], jobs)
    assert results == [{"value": i} for i in range(3)]
    assert [open(p).read() for p in paths] == ["0", "1", "2"]
    for i in range(3):  # each build's lines in its own order (builds may interleave)
        assert [line for line in said if line.startswith(f"v{i}")] == [f"v{i} a", f"v{i} b"]


def test_build_in_a_child_process_runs_elsewhere(tmp_path):
    def build(say, path):
        say(str(os.getpid()))
        open(path, "w").close()
        return os.getpid()

    results, said, _ = _run(tmp_path, [build, build])
    assert os.getpid() not in results and len(set(results)) == 2
    assert sorted(said) == sorted(str(pid) for pid in results)


def test_a_failing_build_raises_its_own_error(tmp_path):
    def fails(say, path):
        raise CompileError("no schedule fits kernel k; compile for --target onnx")

    with pytest.raises(CompileError, match="^no schedule fits kernel k; compile for --target onnx$"):
        _run(tmp_path, [_writer(0), fails])


def test_an_error_that_cannot_cross_processes_keeps_its_type_and_message(tmp_path):
    class Unpicklable(Exception):
        def __reduce__(self):
            raise TypeError("not picklable")

    def fails(say, path):
        raise Unpicklable("LLVM ERROR: bad thing")

    with pytest.raises(CompileError, match="^Unpicklable: LLVM ERROR: bad thing$"):
        _run(tmp_path, [fails, _writer(1)])


def test_a_dying_build_is_one_line_naming_the_library_and_the_way_out(tmp_path):
    def dies(say, path):
        os.kill(os.getpid(), signal.SIGKILL)

    with pytest.raises(CompileError) as err:
        _run(tmp_path, [_writer(0), dies])
    message = str(err.value)
    assert "\n" not in message
    assert "llvm v1 library" in message and f"signal {int(signal.SIGKILL)}" in message
    assert f"{tvm_emit.JOBS_ENV}=1" in message


_PARENT_RAN_KERNELS = textwrap.dedent("""
    import sys
    import numpy as np
    import torch
    import compiler
    from backends.tvm import emit

    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 8))
    x = torch.randn(64, 64)
    # verification runs the kernels here, on this thread: its TVM thread pool starts
    run = compiler.compile(model, (x,), target="llvm", output=sys.argv[1] + "/m.aot").load()
    want = run(x.numpy())

    def build(say, path):  # a build that runs kernels, as TVM's FoldConstant does
        open(path, "w").close()
        return bool(np.array_equal(run(x.numpy()), want))

    paths = [sys.argv[1] + "/a.so", sys.argv[1] + "/b.so"]
    print(emit.run_builds([build, build], paths, 2, lambda line: None, ["a", "b"]))
""")


def test_forked_builds_run_kernels_after_the_parent_ran_some(tmp_path):
    """TVM's thread pool is per thread and a fork keeps none of its workers: a build that runs a
    kernel in a child of a process whose thread had run kernels waited forever (seen: a graph
    whose constant index_put TVM's FoldConstant evaluates, compiled after another model)."""
    process = subprocess.Popen([sys.executable, "-c", _PARENT_RAN_KERNELS, str(tmp_path)], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True, start_new_session=True,
                               cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        out, _ = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the children too
        process.communicate()
        pytest.fail("a forked build hung running a kernel")
    assert process.returncode == 0 and out.strip().splitlines()[-1] == "[True, True]"


def test_jobs_default_to_the_cores_and_follow_the_environment(monkeypatch):
    monkeypatch.delenv(tvm_emit.JOBS_ENV, raising=False)
    cores = len(os.sched_getaffinity(0))
    assert tvm_emit.build_jobs(2) == min(2, cores)
    assert tvm_emit.build_jobs(1) == 1
    monkeypatch.setenv(tvm_emit.JOBS_ENV, "1")
    assert tvm_emit.build_jobs(2) == 1
    monkeypatch.setenv(tvm_emit.JOBS_ENV, "8")
    assert tvm_emit.build_jobs(2) == 2
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv(tvm_emit.JOBS_ENV, bad)
        with pytest.raises(CompileError, match=f"^{tvm_emit.JOBS_ENV} must be a positive number"):
            tvm_emit.build_jobs(2)
