"""actionstream's service: serves an exported ONNX step model over gRPC. Never imports torch."""
