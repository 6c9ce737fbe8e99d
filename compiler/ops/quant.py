"""Quantization ops: quantize_linear / dequantize_linear (ONNX semantics) and friends."""

from __future__ import annotations
