"""An ahead-of-time compiler for PyTorch models.

    import compiler
    art = compiler.compile(model, (x,), target="onnx", output="model.aot")
    m = compiler.load("model.aot")     # needs numpy and the target's runtime, not torch
    y = m(x.numpy())

Importing this package is cheap: the public names load their modules on first use, and only
``compile`` imports torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "compile": "compiler.driver.api", "CompiledArtifact": "compiler.driver.api",
    "load": "compiler.driver.runtime", "LoadedModel": "compiler.driver.runtime",
    "VerifyOptions": "compiler.driver.options", "QuantizeOptions": "compiler.driver.options",
    "PruneOptions": "compiler.driver.options", "PassOptions": "compiler.driver.options",
    "OnnxOptions": "backends.options", "LlvmOptions": "backends.options", "CudaOptions": "backends.options",
    "HlsOptions": "backends.options",
    "CompileError": "compiler.errors", "ModelLoadError": "compiler.errors",
    "UnsupportedOpError": "compiler.errors", "ArtifactError": "compiler.errors",
    "InputError": "compiler.errors", "VerificationError": "compiler.errors",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'compiler' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
