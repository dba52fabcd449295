"""INT8 for DEIMv2: calibration sets (data), quantization recipes (recipe), ONNX Runtime QDQ quantization (qdq),
the sensitivity search (sensitivity), the accuracy gate (gate) and the INT8 plan every backend follows (int8)."""
