"""pothole-edge's torch-free core: what every stage shares, importing no stage.

Installed as `pothole_edge`; the stages are `pothole_edge.train`, `.export`, `.edge` and `.benchmarks`.
Heavy optional libraries (OpenCV, ONNX Runtime, onnx, click) are imported inside the functions that use them.
"""

__version__ = "0.2.0"
