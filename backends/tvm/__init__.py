"""The TVM targets: ``llvm`` (host CPU) and ``cuda``, emitted from our IR as a Relax IRModule."""
