"""Export stage: a checkpoint becomes model.onnx with proof that ONNX Runtime reproduces it.

`export.metadata` is torch-free so the edge can read a model's metadata; everything else here
imports torch lazily.
"""
