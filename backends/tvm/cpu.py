"""x86 instruction-set features: what an llvm artifact's machine code needs, what this host has,
and which of an artifact's library variants it can run. Standard library and numpy only (no
tvm), so the pytest header and the benches can describe the host cheaply.

Features are named as LLVM names them (``avx512vnni``, ``fma``). Only instruction-set features
that compiled arithmetic code may use are tracked (``ISA_FEATURES``); LLVM's tuning flags
(``prefer-256-bit``, ``fast-gather``) and system features (``pku``, ``rdpid``) are not.

The host's features come from CPUID as numpy reads it at import (it also checks that the OS
saves the AVX/AVX-512 registers): that is what this process can execute, also under an emulator
such as ``qemu-x86_64 -cpu Haswell``, whose ``/proc/cpuinfo`` shows the real machine's flags.
Features numpy does not detect are taken from the ``flags`` line of ``/proc/cpuinfo``.
"""

from __future__ import annotations

import functools
import platform
import sys
from collections.abc import Iterable, Mapping
from typing import Any

# LLVM feature -> (its /proc/cpuinfo flag, numpy's name for it or None).
ISA_FEATURES: dict[str, tuple[str, str | None]] = {
    "cmov": ("cmov", None), "cx8": ("cx8", None), "x87": ("fpu", None), "mmx": ("mmx", "MMX"),
    "fxsr": ("fxsr", None), "sse": ("sse", "SSE"), "sse2": ("sse2", "SSE2"), "sse3": ("pni", "SSE3"),
    "ssse3": ("ssse3", "SSSE3"), "sse4.1": ("sse4_1", "SSE41"), "sse4.2": ("sse4_2", "SSE42"),
    "crc32": ("sse4_2", "SSE42"), "popcnt": ("popcnt", "POPCNT"), "cx16": ("cx16", "CX16"),
    "sahf": ("lahf_lm", "LAHF"), "avx": ("avx", "AVX"), "avx2": ("avx2", "AVX2"), "fma": ("fma", "FMA3"),
    "f16c": ("f16c", "F16C"), "bmi": ("bmi1", "BMI"), "bmi2": ("bmi2", "BMI2"), "lzcnt": ("abm", "LZCNT"),
    "movbe": ("movbe", "MOVBE"), "xsave": ("xsave", None),
    "avx512f": ("avx512f", "AVX512F"), "avx512cd": ("avx512cd", "AVX512CD"), "avx512bw": ("avx512bw", "AVX512BW"),
    "avx512dq": ("avx512dq", "AVX512DQ"), "avx512vl": ("avx512vl", "AVX512VL"),
    "avx512vnni": ("avx512_vnni", "AVX512VNNI"), "avx512bf16": ("avx512_bf16", "AVX512BF16"),
    "avx512ifma": ("avx512ifma", "AVX512IFMA"), "avx512vbmi": ("avx512vbmi", "AVX512VBMI"),
    "avx512vbmi2": ("avx512_vbmi2", "AVX512VBMI2"), "avx512bitalg": ("avx512_bitalg", "AVX512BITALG"),
    "avx512vpopcntdq": ("avx512_vpopcntdq", "AVX512VPOPCNTDQ"), "avx512fp16": ("avx512_fp16", "AVX512FP16"),
    "avx512vp2intersect": ("avx512_vp2intersect", None), "avxvnni": ("avx_vnni", None),
    "avxifma": ("avx_ifma", None), "avxvnniint8": ("avx_vnni_int8", None),
    "amx-tile": ("amx_tile", None), "amx-int8": ("amx_int8", None), "amx-bf16": ("amx_bf16", None),
    "amx-fp16": ("amx_fp16", None), "gfni": ("gfni", "GFNI"), "vaes": ("vaes", "VAES"),
    "vpclmulqdq": ("vpclmulqdq", "VPCLMULQDQ"), "aes": ("aes", None), "pclmul": ("pclmulqdq", None),
    "sha": ("sha_ni", None), "adx": ("adx", None),
}

# The x86-64 micro-architecture levels (psABI), each adding to the one before.
LEVELS: tuple[tuple[str, frozenset[str]], ...] = (
    ("x86-64-v2", frozenset({"cx16", "sahf", "popcnt", "sse3", "sse4.1", "sse4.2", "ssse3"})),
    ("x86-64-v3", frozenset({"avx", "avx2", "bmi", "bmi2", "f16c", "fma", "lzcnt", "movbe", "xsave"})),
    ("x86-64-v4", frozenset({"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"})),
)


def isa_features(llvm_features: Iterable[str]) -> list[str]:
    """The instruction-set features among LLVM's feature list for a target, sorted."""
    return sorted({str(f) for f in llvm_features} & ISA_FEATURES.keys())


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> tuple[frozenset[str], str]:
    """(flags, model name) of the first processor in /proc/cpuinfo; empty where there is none."""
    flags: frozenset[str] = frozenset()
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "flags" and not flags:
                    flags = frozenset(value.split())
                elif key == "model name" and not model:
                    model = value.strip()
                if flags and model:
                    break
    except OSError:
        pass
    return flags, model


def _numpy_cpuid() -> dict[str, bool]:
    try:
        from numpy._core._multiarray_umath import __cpu_features__  # numpy >= 2
    except ImportError:
        try:
            from numpy.core._multiarray_umath import __cpu_features__  # numpy 1.x
        except ImportError:
            return {}
    return dict(__cpu_features__)


@functools.lru_cache(maxsize=1)
def host_features() -> frozenset[str]:
    """The ISA features (LLVM names) this process can execute: numpy's CPUID reading where it
    has one for the feature, else the /proc/cpuinfo flag."""
    cpuid = _numpy_cpuid()
    flags, _ = _cpuinfo()
    have = set()
    for feature, (flag, numpy_name) in ISA_FEATURES.items():
        if numpy_name is not None and numpy_name in cpuid:
            if cpuid[numpy_name]:
                have.add(feature)
        elif flag in flags:
            have.add(feature)
    return frozenset(have)


def missing_features(required: Iterable[str], host: Iterable[str] | None = None) -> list[str]:
    """The features of ``required`` the host (``host``, default this process's CPU) lacks, sorted."""
    have = host_features() if host is None else frozenset(host)
    return sorted(set(required) - have)


def feature_level(features: Iterable[str]) -> str:
    """The highest x86-64 level (``x86-64``, ``-v2``, ``-v3``, ``-v4``) ``features`` cover."""
    have = frozenset(features)
    level = "x86-64"
    for name, needs in LEVELS:
        if not needs <= have:
            break
        level = name
    return level


def has_vnni(features: Iterable[str]) -> bool:
    have = frozenset(features)
    return "avx512vnni" in have or "avxvnni" in have


def host_summary() -> str:
    """One line: the host CPU's model and feature level, e.g. ``AMD EPYC, x86-64-v4, VNNI yes``
    (for the pytest header and the benches)."""
    machine = platform.machine()
    model = _cpuinfo()[1] or platform.processor() or machine
    if not is_x86(machine):
        return f"{model} ({machine}, not x86)"
    have = host_features()
    return f"{model}, {feature_level(have)}, VNNI {'yes' if has_vnni(have) else 'no'}"


def is_x86(machine: str | None = None) -> bool:
    return normal_arch(machine or platform.machine()) == "x86_64"


def normal_arch(machine: str) -> str:
    """An architecture name as LLVM triples spell it (``AMD64`` -> ``x86_64``, ``arm64`` -> ``aarch64``)."""
    machine = machine.lower()
    return {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def triple_platform(triple: str) -> tuple[str, str]:
    """(architecture, OS) of an LLVM target triple such as ``x86_64-conda-linux-gnu``."""
    parts = triple.lower().split("-")
    os_name = next((o for o in ("linux", "darwin", "windows") if any(p.startswith(o) for p in parts[1:])), "")
    return normal_arch(parts[0]), os_name


def platform_problem(arch: str, os_name: str) -> str | None:
    """Why this host cannot run a library built for ``arch`` / ``os_name`` (as ``triple_platform``
    gives them), or None."""
    machine = normal_arch(platform.machine())
    if arch and machine != arch:
        return f"it holds {arch} machine code and this host is {machine or 'unknown'}"
    host_os = "windows" if sys.platform.startswith(("win", "cygwin")) else sys.platform
    if os_name and not host_os.startswith(os_name):
        return f"its library is a {os_name} shared object and this host runs {sys.platform}"
    return None


def check_variants(variants: Any, libraries: Iterable[str]) -> list[dict[str, Any]]:
    """``target_info["variants"]`` checked for shape: a non-empty list of ``{"name", "features",
    "library"}`` with ``features`` a list of known feature names and ``library`` one of
    ``libraries``. Raises ValueError naming the first bad entry."""
    if not isinstance(variants, list) or not variants:
        raise ValueError("'variants' is not a non-empty list")
    names = set(libraries)
    for i, v in enumerate(variants):
        if not isinstance(v, Mapping) or not isinstance(v.get("name"), str) or not isinstance(v.get("library"), str):
            raise ValueError(f"variants[{i}] is not {{name, features, library}}")
        check_feature_list(v.get("features"), f"variants[{i}].features")
        if v["library"] not in names:
            raise ValueError(f"variants[{i}] names library {v['library']!r}, which the artifact does not hold")
    return list(variants)


def check_feature_list(features: Any, where: str) -> list[str]:
    """``features`` if it is a list of known ISA feature names, else ValueError naming ``where``."""
    if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
        raise ValueError(f"{where} is not a list of feature names")
    unknown = [f for f in features if f not in ISA_FEATURES]
    if unknown:
        raise ValueError(f"{where} names unknown feature(s) {', '.join(map(repr, unknown[:3]))}")
    return features


def best_variant(variants: list[dict[str, Any]], host: Iterable[str] | None = None) -> dict[str, Any] | None:
    """The variant with the most features among those the host supports, or None."""
    runnable = [v for v in variants if not missing_features(v["features"], host)]
    return max(runnable, key=lambda v: len(v["features"]), default=None)


__all__ = ["ISA_FEATURES", "LEVELS", "best_variant", "check_feature_list", "check_variants", "feature_level",
           "has_vnni", "host_features", "host_summary", "is_x86", "isa_features", "missing_features",
           "normal_arch", "platform_problem", "triple_platform"]
