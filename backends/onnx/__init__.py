"""The ONNX target: IR -> ONNX emitter and the onnxruntime runner."""
