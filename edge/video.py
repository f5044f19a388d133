"""Optional visual output: an annotated video file (--save-video) and a live window (--show)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger("edge")


class Annotator:
    def __init__(self, path: Path | None, show: bool, fps: float, threshold: float) -> None:
        self.path, self.fps, self.threshold = path, fps if fps and fps < 240 else 15.0, threshold
        self.writer = None
        self.show = show and _has_display()
        if show and not self.show:
            log.warning("--show ignored: no display (DISPLAY is unset) or OpenCV without a GUI backend")

    def write(self, frame: np.ndarray, prob: float, pothole: bool) -> bool:
        """Draw and emit one frame; False when the user closes the window."""
        if self.path is None and not self.show:
            return True
        image = frame.copy()
        colour = (0, 0, 255) if pothole else (0, 160, 0)
        cv2.rectangle(image, (0, 0), (image.shape[1] - 1, image.shape[0] - 1), colour, max(2, image.shape[0] // 80))
        cv2.putText(image, f"pothole {prob:.2f}", (10, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.8, colour, 2, cv2.LINE_AA)
        if self.path is not None:
            if self.writer is None:
                self.size = (image.shape[1], image.shape[0])
                self.writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, self.size)
            # image folders mix sizes; a video has one
            self.writer.write(image if (image.shape[1], image.shape[0]) == self.size else cv2.resize(image, self.size))
        if self.show:
            cv2.imshow("pothole-edge", image)
            if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                return False
        return True

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
        if self.show:
            cv2.destroyAllWindows()


def _has_display() -> bool:
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY") and os.name != "nt":
        return False
    try:
        cv2.namedWindow("pothole-edge")
        return True
    except cv2.error:
        return False
