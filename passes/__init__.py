"""Graph passes. Each pass is one small module whose docstring states its rewrite.

Pipelines are explicit lists (``default_pipeline``), never discovered by scanning. Passes import
no torch, onnx or tvm.
"""

from __future__ import annotations

from passes.base import Pass, PassDriftError, PassManager, PassRecord, PassResult
from passes.eliminate_common_subexpressions import EliminateCommonSubexpressions
from passes.eliminate_dead_code import EliminateDeadCode
from passes.fold_batch_norm import FoldBatchNorm
from passes.fold_constants import FoldConstants
from passes.fuse_activation import FuseActivation
from passes.fuse_attention import FuseAttention
from passes.fuse_gelu import FuseGelu
from passes.fuse_layer_norm import FuseLayerNorm
from passes.prune_channels import PruneChannels
from passes.prune_magnitude import PruneMagnitude
from passes.share_weights import ShareWeights
from passes.simplify import Simplify

PASSES: dict[str, type[Pass]] = {p.name: p for p in (
    FoldConstants, Simplify, EliminateCommonSubexpressions, FoldBatchNorm, FuseGelu, FuseLayerNorm,
    FuseAttention, FuseActivation, EliminateDeadCode,
    # compression (not in the default pipeline; compile(prune=..., weight_sharing_bits=...) runs them)
    PruneMagnitude, PruneChannels, ShareWeights,
)}
DEFAULT_PIPELINE = ("fold", "simplify", "cse", "fold_bn", "fuse_gelu", "fuse_layernorm", "fuse_attention",
                    "fuse_act", "dce")


def make_pipeline(names: str | list[str] | tuple[str, ...] | None = None) -> list[Pass]:
    """Passes for a comma-separated spec ("fold,dce"), "none", or the default when None."""
    if names is None:
        names = DEFAULT_PIPELINE
    if isinstance(names, str):
        names = [] if names.strip() == "none" else [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in names if n not in PASSES]
    if unknown:
        from compiler.errors import CompileError

        raise CompileError(f"unknown pass(es) {', '.join(unknown)}; known: {', '.join(PASSES)} (or 'none')")
    return [PASSES[n]() for n in names]


__all__ = ["Pass", "PassResult", "PassManager", "PassRecord", "PassDriftError", "PASSES",
           "DEFAULT_PIPELINE", "make_pipeline", "FoldConstants", "EliminateDeadCode", "Simplify",
           "EliminateCommonSubexpressions", "FoldBatchNorm", "PruneMagnitude", "PruneChannels", "ShareWeights"]
