"""Frames to model inputs with OpenCV, following the preprocessing spec in the model's metadata.

The size and crop arithmetic is torchvision's (shorter side to `resize`, longer side truncated,
centre crop offsets rounded), so a frame lands on the same pixels as in training. Scaling,
normalisation and layout happen inside the ONNX graph.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np


def resized_size(height: int, width: int, shorter: int) -> tuple[int, int]:
    if height <= width:
        return shorter, int(shorter * width / height)
    return int(shorter * height / width), shorter


def to_input(frame_bgr: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """A BGR uint8 frame (H, W, 3) to the model's (crop, crop, 3) uint8 RGB input."""
    h, w = frame_bgr.shape[:2]
    new_h, new_w = resized_size(h, w, spec["resize"])
    # INTER_AREA is OpenCV's antialiased downscale, the nearest match to PIL's bilinear filter
    shrinking = new_h < h and spec.get("antialias", True)
    resized = cv2.resize(frame_bgr, (new_w, new_h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    crop = spec["crop"]
    top, left = round((new_h - crop) / 2.0), round((new_w - crop) / 2.0)
    return cv2.cvtColor(resized[top : top + crop, left : left + crop], cv2.COLOR_BGR2RGB)


def read_image(path: str) -> np.ndarray | None:
    """An image file as a BGR uint8 frame, alpha composited over white; None when unreadable."""
    image = cv2.imread(path, cv2.IMREAD_UNCHANGED | cv2.IMREAD_ANYCOLOR)
    if image is None:
        cap = cv2.VideoCapture(path)  # GIFs: OpenCV builds without the GIF codec read them as video
        ok, image = cap.read()
        cap.release()
        if not ok:
            return None
    if image.dtype != np.uint8:
        image = (image / 256).astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        alpha = image[:, :, 3:4].astype(np.float32) / 255
        return (image[:, :, :3] * alpha + 255 * (1 - alpha) + 0.5).astype(np.uint8)
    return image
