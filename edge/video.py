"""Optional visual output: an annotated video file (--save-video) and a live window (--show).
Both draw the frame's verdict and the tile that decided it."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np

from pothole_edge.fileio import encodable

log = logging.getLogger("edge")
RED, GREEN = (0, 0, 255), (0, 160, 0)


def draw_tile(
    image_bgr: np.ndarray,
    box: tuple[float, ...] | np.ndarray,
    prob: float | None = None,
    colour: tuple[int, int, int] = RED,
) -> np.ndarray:
    """The hottest tile's box, and its probability, drawn onto the frame in place."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    thick = max(2, image_bgr.shape[0] // 240)
    cv2.rectangle(image_bgr, (x0, y0), (x1 - 1, y1 - 1), colour, thick)
    if prob is not None:
        cv2.putText(
            image_bgr, f"{prob:.2f}", (x0 + 4, max(14, y0 + 18)), cv2.FONT_HERSHEY_SIMPLEX, 0.6, colour, 2, cv2.LINE_AA
        )
    return image_bgr


class Annotator:
    def __init__(self, path: Path | None, show: bool, fps: float, threshold: float) -> None:
        self.path, self.fps, self.threshold = path, fps if fps and fps < 240 else 15.0, threshold
        self.writer = None
        self.show = show and _has_display()
        if show and not self.show:
            log.warning("--show ignored: no display (DISPLAY is unset) or OpenCV without a GUI backend")

    @property
    def active(self) -> bool:
        return self.path is not None or self.show

    def write(self, frame_bgr: np.ndarray, prob: float, pothole: bool, box: np.ndarray | None = None) -> bool:
        """Draw and emit one frame; False when the user closes the window."""
        if not self.active:
            return True
        image = frame_bgr.copy()
        colour = RED if pothole else GREEN
        cv2.rectangle(image, (0, 0), (image.shape[1] - 1, image.shape[0] - 1), colour, max(2, image.shape[0] // 80))
        cv2.putText(image, f"pothole {prob:.2f}", (10, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.8, colour, 2, cv2.LINE_AA)
        if box is not None and pothole:
            draw_tile(image, box, None, colour)
        if self.path is not None:
            if self.writer is None:
                self.size = (image.shape[1], image.shape[0])
                # OpenCV crashes on a path it cannot encode: such a video is written elsewhere and moved at close
                self.writing = self.path if encodable(str(self.path)) else Path(tempfile.mkdtemp()) / "annotated.mp4"
                self.writer = cv2.VideoWriter(str(self.writing), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, self.size)
            # image folders mix sizes; a video has one
            self.writer.write(image if (image.shape[1], image.shape[0]) == self.size else cv2.resize(image, self.size))
        if self.show:
            cv2.imshow("pothole-edge", image)
            if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                return False
        return True

    def stop_file(self) -> None:
        """Close the annotated video where it is (the disk is nearly full); a --show window goes on."""
        if self.path is not None:
            log.warning("the annotated video stops at this frame")
            self._finish()
            self.path = None

    def _finish(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None
            if self.writing != self.path:
                shutil.move(str(self.writing), self.path)
                self.writing.parent.rmdir()

    def close(self) -> None:
        self._finish()
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
