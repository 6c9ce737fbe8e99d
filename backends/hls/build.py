"""Building the C-simulation shared library with g++ (the ap_types headers are located, never
copied: $AOT_HLS_AP_TYPES, then $XILINX_HLS/include, then the installed hls4ml wheel)."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from compiler.cache import cache_root
from compiler.errors import CompileError

CXXFLAGS = ["-O1", "-std=c++14", "-fPIC", "-shared", "-fno-gnu-unique", "-Wno-unknown-pragmas", "-w"]
LIB_NAME = "hls_csim.so"


class ToolchainMissing(CompileError):
    """g++ or the ap_types headers are not available here."""


def ap_types_dir() -> Path | None:
    candidates = []
    if os.environ.get("AOT_HLS_AP_TYPES"):
        candidates.append(Path(os.environ["AOT_HLS_AP_TYPES"]))
    if os.environ.get("XILINX_HLS"):
        candidates.append(Path(os.environ["XILINX_HLS"]) / "include")
    spec = importlib.util.find_spec("hls4ml")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            candidates.append(Path(loc) / "templates" / "vivado" / "ap_types")
    return next((c for c in candidates if (c / "ap_fixed.h").is_file()), None)


def compiler_path() -> str | None:
    return shutil.which(os.environ.get("CXX", "g++"))


def toolchain_problem() -> str | None:
    """None when a C simulation can be built here, else what is missing and how to get it."""
    if compiler_path() is None:
        return "g++ was not found on PATH (install g++ or set CXX)"
    if ap_types_dir() is None:
        return ("the ap_types headers were not found (set AOT_HLS_AP_TYPES to a folder holding ap_fixed.h, "
                "set XILINX_HLS, or pip install --no-deps hls4ml)")
    return None


def build_library(project_dir: Path, proj: str, out: Path) -> tuple[float, float]:
    """Compile the bridge (which includes the top function) into ``out``; returns (wall, CPU)
    seconds: the CPU time is the better measure on a loaded machine."""
    problem = toolchain_problem()
    if problem:
        raise ToolchainMissing(f"cannot build the HLS C simulation: {problem}")
    cmd = [compiler_path(), *CXXFLAGS, *precompiled_header(), "-isystem", str(ap_types_dir()),
           "-I", str(project_dir / "firmware"),
           str(project_dir / "bridge" / f"{proj}_bridge.cpp"),
           "-o", str(out)]
    start, cpu = time.perf_counter(), _children_cpu()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise CompileError(f"g++ failed to build the HLS C simulation (a backend bug; please report):\n"
                           f"{done.stderr[-4000:]}")
    return time.perf_counter() - start, _children_cpu() - cpu


PCH_HEADER = "aot_ap_types.h"


def precompiled_header() -> list[str]:
    """``-include`` flags for ap_fixed.h/ap_int.h precompiled once per (compiler, headers, flags)
    in the cache: parsing them is about a third of a small build. [] when it cannot be made
    (or AOT_HLS_NO_PCH is set); g++ falls back to the plain header when the PCH does not fit."""
    if os.environ.get("AOT_HLS_NO_PCH"):
        return []
    try:
        version = subprocess.run([compiler_path(), "--version"], capture_output=True, text=True, check=True).stdout
        key = sha256("\0".join([version, str(ap_types_dir()), *CXXFLAGS]).encode())[:16]
        folder = cache_dir() / f"pch-{key}"
        header, gch = folder / PCH_HEADER, folder / (PCH_HEADER + ".gch")
        if not gch.exists():
            folder.mkdir(parents=True, exist_ok=True)
            header.write_text('#include "ap_fixed.h"\n#include "ap_int.h"\n')
            tmp = folder / f"{PCH_HEADER}.{os.getpid()}.tmp"
            flags = [f for f in CXXFLAGS if f != "-shared"]
            subprocess.run([compiler_path(), *flags, "-isystem", str(ap_types_dir()), "-x", "c++-header", str(header),
                            "-o", str(tmp)], capture_output=True, check=True)
            os.replace(tmp, gch)
        return ["-include", str(header)]
    except (OSError, subprocess.CalledProcessError):
        return []


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def write_files(root: Path, files: dict[str, str | bytes]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text if isinstance(text, bytes) else text.encode())


def build_from_files(files: dict[str, str], proj: str) -> tuple[bytes, tuple[float, float]]:
    """Library bytes and (wall, CPU) build seconds for a generated project."""
    with tempfile.TemporaryDirectory(prefix="aot-hls-") as tmp:
        root = Path(tmp)
        write_files(root, files)
        seconds = build_library(root, proj, root / LIB_NAME)
        return (root / LIB_NAME).read_bytes(), seconds


def cache_dir() -> Path:
    return cache_root() / "hls"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
