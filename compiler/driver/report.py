"""The compile report: what was compiled, how big it is, where the time went, and how close the
artifact's numbers are to PyTorch. Printed by the CLI, returned as ``.report``, stored as JSON
in the artifact's manifest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Verification:
    cases: int
    max_abs_error: float
    max_rel_error: float
    rtol: float
    atol: float
    passed: bool
    worst_case: str = ""
    reference: str = "PyTorch"

    def summary(self) -> str:
        verdict = "ok" if self.passed else "FAILED"
        return (f"{verdict} against {self.reference}: {self.cases} input sets, max abs error {self.max_abs_error:.3g}, "
                f"max rel error {self.max_rel_error:.3g} (rtol {self.rtol:g}, atol {self.atol:g})")


@dataclass
class CompileReport:
    model: str
    target: str
    output: str = ""
    source_kind: str = ""
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    ops: dict[str, int] = field(default_factory=dict)
    nodes: int = 0
    parameters: int = 0
    parameter_bytes: int = 0
    artifact_bytes: int = 0
    phases: dict[str, float] = field(default_factory=dict)
    passes: list[dict[str, Any]] = field(default_factory=list)
    verification: Verification | None = None
    target_info: dict[str, Any] = field(default_factory=dict)
    compression: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        def sig(entries):
            return ", ".join(f"{e['name']}: {e['dtype']}[{', '.join(str(d) for d in e['shape'])}]" for e in entries)

        lines = [
            f"compiled {self.model} ({self.source_kind}) for target {self.target} -> {self.output}",
            f"  inputs:     {sig(self.inputs)}",
            f"  outputs:    {sig(self.outputs)}",
            f"  nodes:      {self.nodes} ({', '.join(f'{op} x{n}' for op, n in self.ops.items())})",
            f"  parameters: {self.parameters:,} ({format_size(self.parameter_bytes)})",
            f"  artifact:   {format_size(self.artifact_bytes)}",
            "  time:       " + ", ".join(f"{k} {v:.2f} s" for k, v in self.phases.items())
            + f" (total {sum(self.phases.values()):.2f} s)",
        ]
        for p in self.passes:
            lines.append(f"  pass {p['name']:<15} nodes {p['nodes_before']:>4} -> {p['nodes_after']:<4} "
                         f"params {p['params_before']:,} -> {p['params_after']:,}, "
                         f"MFLOPs {p['flops_before'] / 1e6:.2f} -> {p['flops_after'] / 1e6:.2f}, "
                         f"{p['seconds'] * 1000:.1f} ms")
        lines += _compression_lines(self.compression)
        lines += _schedule_lines(self.target_info.get("schedules"))
        lines += _cpu_code_lines(self.target_info)
        if self.verification is not None:
            lines.append(f"  verify:     {self.verification.summary()}")
        elif self.target_info.get("runnable_here", True):
            lines.append("  verify:     skipped (--no-verify)")
        else:
            lines.append(f"  verify:     skipped ({self.target_info.get('not_runnable_reason', 'cannot run here')})")
        lines += _evaluation_lines(self.evaluation)
        return "\n".join(lines)


def _schedule_lines(s: dict[str, Any] | None) -> list[str]:
    """TVM CPU builds: where each fused function's schedule came from."""
    if not s or "functions" not in s:
        return []
    n, db, own = s["functions"], s.get("from_database", 0), s.get("by_pipeline", 0)
    line = f"  schedules:  {n} fused functions: {db} from the tuning database, {n - db - own} by the search-free rules"
    if own:
        line += f", {own} scheduled by the pipeline itself (Winograd kernels)"
    if "tuning_s" in s:
        line += f" (searched {s.get('trials', '?')} trials in {s['tuning_s']:.0f} s)"
    lines = [line]
    fallen = s.get("unscheduled") or []
    if fallen:
        shown = ", ".join(fallen[:8]) + (f", ... ({len(fallen) - 8} more)" if len(fallen) > 8 else "")
        lines.append(f"  fell back:  {len(fallen)} fused function(s) no rule schedules run on TVM's default "
                     f"lowering (correct, slower): {shown}")
    return lines


def _cpu_code_lines(info: dict[str, Any]) -> list[str]:
    """TVM builds: which CPU variants the artifact holds (x86 level of each), or its cuda host code."""
    from backends.tvm.cpu import feature_level, has_vnni

    def level(features):
        return feature_level(features) + (" + VNNI" if has_vnni(features) else "")

    variants = info.get("variants")
    if variants:
        names = ", ".join(f"{v['name']} ({level(v['features'])})" for v in variants)
        how = ("load() runs the best one the CPU supports" if len(variants) > 1
               else "one CPU variant (--cpu): CPUs without its features refuse to load it")
        tuned = f"; tuned schedules in {info['tuned_variant']}" if info.get("tuned_variant") else ""
        return [f"  cpu code:   {names}; {how}{tuned}"]
    requires = info.get("requires") or {}
    if "gpu_arch" in requires:
        return [f"  host code:  {level(requires.get('cpu_features', []))} (cuda {requires['gpu_arch']})"]
    return []


def _compression_lines(c: dict[str, Any] | None) -> list[str]:
    if not c:
        return []
    lines = [f"  compress:   parameters {c['parameters_before']:,} ({format_size(c['parameter_bytes_before'])}) -> "
             f"{c['parameters_after']:,} ({format_size(c['parameter_bytes_after'])})"]
    for key in ("pruning", "weight_sharing", "quantization"):
        section = c.get(key)
        if isinstance(section, dict) and section.get("summary"):
            lines.append(f"  {key + ':':<11} {section['summary']}")
    if "max_abs_drift_vs_pytorch" in c:
        lines.append(f"  drift:      max abs {c['max_abs_drift_vs_pytorch']:.3g} from the float PyTorch model "
                     "on the example inputs")
    for note in c.get("notes", []):
        lines.append(f"  note:       {note}")
    return lines


def _evaluation_lines(e: dict[str, Any] | None) -> list[str]:
    if not e:
        return []
    line = (f"  evaluate:   {e['samples']} samples, accuracy PyTorch {e['accuracy_pytorch']:.2%}, "
            f"artifact {e['accuracy_artifact']:.2%}")
    if "accuracy_uncompressed" in e:
        line += (f" (uncompressed {e['accuracy_uncompressed']:.2%}); size "
                 f"{format_size(e['baseline_artifact_bytes'])} uncompressed; latency x{e['latency_ratio']:.2f} of "
                 "uncompressed")
    return [line]


def format_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
