"""Calibration clips: decoded to RGB frames of the export's input size, with their sha256.

A clip of another size is resized (PyAV's swscale, bicubic) and the record says so: calibration
wants the activations the graphs will see, and the runtime resizes such a clip the same way.
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
    import av
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"calibration video {path} does not exist")
    width, height = size
    frames, source = [], None
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise CalibrationError(f"calibration video {path} has no video stream")
            for frame in container.decode(video=0):
                source = source or (frame.width, frame.height)
                frames.append(frame.reformat(width=width, height=height, format="rgb24",
                                             interpolation="BICUBIC").to_ndarray())
                if max_frames and len(frames) >= max_frames:
                    break
    except CalibrationError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise CalibrationError(f"calibration video {path} is unreadable: {e}") from None
    if not frames:
        raise CalibrationError(f"calibration video {path} has no decodable frames")
    notes = []
    if source != (width, height):
        notes.append(f"resized from {source[0]}x{source[1]} to the export's input size {width}x{height}")
    return Clip(str(path), sha256_file(path), np.stack(frames), source, notes)


def check_length(clip: Clip, clip_len: int) -> None:
    """A calibration clip must make a FIRST, a MIDDLE and a LAST chunk: every DiT graph (the MIDDLE
    chunk's latent count has its own) is then called, and the carried ReAE state is exercised."""
    need = 2 * clip_len + 5
    if len(clip.frames) < need:
        raise CalibrationError(f"calibration video {clip.path} is too short: {len(clip.frames)} frames; one chunk "
                               f"(clip_len {clip_len}: FIRST, MIDDLE and LAST chunks) needs at least {need}")
