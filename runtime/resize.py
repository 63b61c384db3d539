"""--resize: fit input frames to the size a bundle was built for, with FFmpeg's swscale.

Area averaging when shrinking (no aliasing), bicubic when enlarging. The aspect ratio is not kept:
a bundle has one input size, and the output is that size times the bundle's scale.
"""
import threading

import av
import numpy as np
from av.video.reformatter import VideoReformatter

# A reformatter keeps its swscale context between calls; one per thread, as it is not thread-safe.
_local = threading.local()


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 RGB [T, H, W, 3] -> [T, size[1], size[0], 3]."""
    width, height = size
    if frames.shape[1:3] == (height, width):
        return frames
    shrinking = width * height < frames.shape[1] * frames.shape[2]
    interpolation = "AREA" if shrinking else "BICUBIC"
    out = np.empty((len(frames), height, width, 3), np.uint8)
    if not hasattr(_local, "reformatter"):
        _local.reformatter = VideoReformatter()
    for i, image in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        resized = _local.reformatter.reformat(frame, width=width, height=height, interpolation=interpolation)
        out[i] = resized.to_ndarray()
    return out
