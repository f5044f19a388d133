"""Export stage: a checkpoint becomes model.onnx with proof that ONNX Runtime reproduces it."""
