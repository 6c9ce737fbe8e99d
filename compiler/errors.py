"""Errors the compiler raises.

Every error a user can cause is a ``CompileError`` subclass with a message that fits on one line
and says what to do; the CLI prints it and exits with status 2. ``VerificationError`` (numbers
drifted beyond tolerance) exits with status 1. Anything else is a bug in the compiler.
"""

from __future__ import annotations


def one_line(text: object, limit: int = 600) -> str:
    """``text`` on one line (whitespace runs collapsed), cut to ``limit`` characters."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


class CompileError(Exception):
    """A problem with the user's input: model file, shapes, options or artifact."""

    exit_code = 2


class ModelLoadError(CompileError):
    """The model file or factory could not be read."""


class UnsupportedOpError(CompileError):
    """An operator (or an attribute of it) that a stage of the compiler does not handle."""

    def __init__(self, op: str, *, stage: str, location: str | None = None, detail: str = "",
                 hint: str = ""):
        self.op = op
        self.stage = stage
        self.location = location
        where = f" at {location}" if location else ""
        detail = f": {detail}" if detail else ""
        hint = hint or "rewrite that part of the model with supported ops, or open an issue"
        super().__init__(f"{stage} does not support {op}{where}{detail}; {hint}")


class ArtifactError(CompileError):
    """The artifact file is missing, truncated, tampered with or of an unknown format."""


class InputError(CompileError):
    """Wrong number, dtype or shape of inputs given to a loaded artifact."""


class VerificationError(Exception):
    """The compiled artifact's outputs differ from PyTorch beyond tolerance."""

    exit_code = 1


class IRError(Exception):
    """The IR broke one of its invariants (a compiler bug, reported by ``Graph.verify``)."""
