"""Frames to predictions, with no gRPC in it: decoding, the ONNX step model, each
stream's state and queue, and the cross-stream batcher."""
