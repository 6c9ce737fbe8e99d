"""Layering: the core (compiler/) never imports passes, backends or the driver (compiler/driver/);
passes and backends import only the core; the IR, the interpreter and the passes import no torch,
onnx or tvm, and loading an artifact's package does not pull torch in."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT

LIGHT_MODULES = ["compiler", "compiler.ir", "compiler.ops", "compiler.interpreter", "compiler.text",
                 "compiler.dims", "passes", "compiler.driver.runtime", "compiler.driver.artifact",
                 "compiler.driver.tool"]


def test_core_modules_import_no_heavy_frameworks():
    code = (
        "import sys\n"
        f"for m in {LIGHT_MODULES!r}: __import__(m)\n"
        "heavy = [m for m in ('torch', 'onnx', 'onnxruntime', 'tvm') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"heavy imports: {out.stdout.strip()}"


# The layers, bottom to top. A module may import its own layer and those below it, never above:
# the core (IR, ops, interpreter, frontend) knows nothing of passes, backends or the driver;
# passes and backends build on the core only; the driver (compile, load, CLI) uses them all.
PROJECT_PACKAGES = ("compiler", "passes", "backends")


def _layer_of(module: str) -> str:
    if module == "compiler.driver" or module.startswith("compiler.driver."):
        return "driver"
    return module.split(".")[0] if module.split(".")[0] in ("passes", "backends") else "core"


def _project_imports(path):
    """Every project module a file imports, at the top or inside functions."""
    import ast

    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name.split(".")[0] in PROJECT_PACKAGES:
                yield node.lineno, name


def _allowed(importer_layer: str, imported: str) -> bool:
    layer = _layer_of(imported)
    if layer == "core":
        return True  # everything may use the core
    if importer_layer == "driver":
        return True
    return layer == importer_layer


def test_no_module_imports_a_layer_above_it():
    offenders = []
    for package in PROJECT_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            layer = _layer_of(module)
            for lineno, name in _project_imports(path):
                if not _allowed(layer, name):
                    offenders.append(f"{path.relative_to(ROOT)}:{lineno} ({layer}) imports {name} "
                                     f"({_layer_of(name)})")
    assert not offenders, "layering violations:\n" + "\n".join(offenders)


def test_layering_check_sees_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from compiler.driver.api import compile\n    import backends.registry\n")
    imported = [name for _line, name in _project_imports(bad)]
    assert "compiler.driver.api" in imported and "backends.registry" in imported
    assert not _allowed("core", "compiler.driver.api") and not _allowed("passes", "backends.registry")
    assert _allowed("driver", "passes.base") and _allowed("backends", "compiler.ir")
