"""Calibration clips: decoded to RGB frames of the export's input size, with their sha256.

Calibration wants the activations the graphs will see, so a clip is read as the runtime reads its
input: video.VideoReader decodes it, and a clip of another size is resized by video/resize.py as
`runtime.stream --resize` resizes one (stretched; area averaging when shrinking, bicubic when
enlarging). The record says so.
"""
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from contract.files import sha256_file


class CalibrationError(ValueError):
    """Bad calibration input or request: one line that says what to do."""


@dataclass
class Clip:
    path: str
    sha256: str
    frames: np.ndarray          # [T, H, W, 3] uint8, the export's input size
    source_size: tuple[int, int]
    notes: list[str] = field(default_factory=list)

    def record(self, role: str, used: int) -> dict:
        return {"path": self.path, "sha256": self.sha256, "role": role, "frames_decoded": len(self.frames),
                "frames_used": used, "source_size": list(self.source_size), "notes": self.notes}


def read_clip(path, size: tuple[int, int], max_frames: int | None = None) -> Clip:
    """Decode up to `max_frames` frames of `path` as `size` (W, H) RGB; CalibrationError if unreadable."""
    from video import VideoError, VideoReader
    from video.resize import resize_frames
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"calibration video {path} does not exist")
    batches, count = [], 0
    try:
        # VideoReader refuses a file without a decodable frame, and raises on damage after the frames before it.
        with VideoReader(path) as reader:
            source = (reader.info.width, reader.info.height)
            while not (max_frames and count >= max_frames):
                frames = reader.read(min(24, max_frames - count) if max_frames else 24)
                if not len(frames):
                    break
                batches.append(resize_frames(frames, size))
                count += len(frames)
    except VideoError as e:
        raise CalibrationError(f"calibration video {path} is unreadable: {e}") from None
    notes = []
    if source != tuple(size):
        notes.append(f"resized from {source[0]}x{source[1]} to the export's input size {size[0]}x{size[1]}")
    return Clip(str(path), sha256_file(path), np.concatenate(batches), source, notes)


def check_length(clip: Clip, clip_len: int) -> None:
    """A calibration clip must make a FIRST, a MIDDLE and a LAST chunk: every DiT graph (the MIDDLE
    chunk's latent count has its own) is then called, and the carried ReAE state is exercised."""
    need = 2 * clip_len + 5
    if len(clip.frames) < need:
        raise CalibrationError(f"calibration video {clip.path} is too short: {len(clip.frames)} frames; one chunk "
                               f"(clip_len {clip_len}: FIRST, MIDDLE and LAST chunks) needs at least {need}")
