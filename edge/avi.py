"""Motion-JPEG AVI, written from JPEG bytes as they are: the event clips' container.

The writer thread already JPEG-encodes every frame for the pre-event ring, so a clip made of those same bytes
costs no encoding at all, where re-encoding each frame to MPEG-4 took about 4 ms of a dashcam's CPU at 720p.
The layout is the classic AVI 1.0 one (RIFF 'AVI ', hdrl, movi, idx1) that FFmpeg, VLC and OpenCV read; the
sizes and frame counts in the headers are written when the clip is closed.
"""

from __future__ import annotations

import struct
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

AVIF_HASINDEX = 0x10
AVIIF_KEYFRAME = 0x10
MAX_BYTES = (1 << 31) - (1 << 24)  # AVI 1.0 offsets are 32-bit; a clip stops short of 2 GiB


class MjpegAvi:
    """`write(jpeg)` appends one frame; `close()` writes the index and the final sizes."""

    def __init__(self, path: str | Path, width: int, height: int, fps: float) -> None:
        rate = Fraction(fps).limit_denominator(1001)
        self.width, self.height, self.rate = width, height, rate
        self.frames, self._index, self._largest = 0, bytearray(), 0
        self._f: BinaryIO = open(path, "wb")  # closed in close()
        self._header()

    def _header(self) -> None:
        f = self._f
        f.write(b"RIFF\0\0\0\0AVI ")
        hdrl_start = self._list(b"hdrl")
        self._avih_at = f.tell() + 8
        f.write(b"avih" + struct.pack("<I", 56))
        f.write(self._avih())
        strl_start = self._list(b"strl")
        self._strh_at = f.tell() + 8
        f.write(b"strh" + struct.pack("<I", 56))
        f.write(self._strh())
        f.write(b"strf" + struct.pack("<I", 40))
        f.write(
            struct.pack(
                "<IiiHH4sIiiII", 40, self.width, self.height, 1, 24, b"MJPG", self.width * self.height * 3, 0, 0, 0, 0
            )
        )
        self._end_list(strl_start)
        self._end_list(hdrl_start)
        self._movi_start = self._list(b"movi")

    def _avih(self) -> bytes:
        us_per_frame = round(1e6 * self.rate.denominator / self.rate.numerator)
        return struct.pack(
            "<IIIIIIIIII16x",
            us_per_frame,
            0,
            0,
            AVIF_HASINDEX,
            self.frames,
            0,
            1,
            self._largest,
            self.width,
            self.height,
        )

    def _strh(self) -> bytes:
        return struct.pack(
            "<4s4sIHHIIIIIIIIhhhh",
            b"vids",
            b"MJPG",
            0,
            0,
            0,
            0,
            self.rate.denominator,
            self.rate.numerator,
            0,
            self.frames,
            self._largest,
            0xFFFFFFFF,
            0,
            0,
            0,
            self.width,
            self.height,
        )

    def _list(self, kind: bytes) -> int:
        start = self._f.tell()
        self._f.write(b"LIST\0\0\0\0" + kind)
        return start

    def _end_list(self, start: int) -> None:
        end = self._f.tell()
        self._f.seek(start + 4)
        self._f.write(struct.pack("<I", end - start - 8))
        self._f.seek(end)

    def full(self, jpeg_bytes: int) -> bool:
        """Whether a frame of this size would take the file, with its index, past the limit."""
        after = self._f.tell() + 8 + jpeg_bytes + 1 + len(self._index) + 16 + 8
        return after > MAX_BYTES

    def write(self, jpeg: bytes) -> None:
        if self.full(len(jpeg)):
            raise OSError("the clip reached the AVI size limit of 2 GiB")
        offset = self._f.tell() - (self._movi_start + 8)  # from the 'movi' tag, as idx1 counts
        self._f.write(b"00dc" + struct.pack("<I", len(jpeg)) + jpeg + (b"\0" if len(jpeg) % 2 else b""))
        self._index += b"00dc" + struct.pack("<III", AVIIF_KEYFRAME, offset, len(jpeg))
        self.frames += 1
        self._largest = max(self._largest, len(jpeg))

    def close(self) -> None:
        f = self._f
        self._end_list(self._movi_start)
        f.write(b"idx1" + struct.pack("<I", len(self._index)) + bytes(self._index))
        end = f.tell()
        f.seek(4)
        f.write(struct.pack("<I", end - 8))
        f.seek(self._avih_at)
        f.write(self._avih())
        f.seek(self._strh_at)
        f.write(self._strh())
        f.close()
