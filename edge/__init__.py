"""Edge stage: ONNX Runtime on a dashcam. Needs only onnxruntime, opencv and numpy; never imports torch."""
