"""--resize: fit input frames to the size a bundle was built for, with FFmpeg's swscale.

Area averaging when shrinking (no aliasing), bicubic when enlarging. Two ways to fit:
  stretch  scale to the bundle's size; the picture's shape changes, and the output's pixel aspect
           ratio is set so that players still show it at the input's display aspect ratio.
  pad      scale to fit inside the bundle's size, keeping the shape, with black bars around it;
           the output has square pixels.
"""
import threading
from fractions import Fraction

import av
import numpy as np
from av.video.reformatter import VideoReformatter

RESIZE_MODES = ("stretch", "pad")

# A reformatter keeps its swscale context between calls; one per thread, as it is not thread-safe.
_local = threading.local()


def display_aspect(size: tuple[int, int], sample_aspect: Fraction | None) -> Fraction:
    """Width / height as shown: the frame's shape times the shape of its pixels."""
    return Fraction(size[0], size[1]) * (sample_aspect or 1)


def pad_box(source_size, sample_aspect, size) -> tuple[int, int, int, int]:
    """(x, y, width, height) of the picture inside `size` when padded: as large as fits, centred."""
    aspect, (width, height) = display_aspect(source_size, sample_aspect), size
    if aspect >= Fraction(width, height):
        inner = (width, max(1, min(height, round(width / aspect))))
    else:
        inner = (max(1, min(width, round(height * aspect))), height)
    return (width - inner[0]) // 2, (height - inner[1]) // 2, inner[0], inner[1]


def output_sample_aspect(source_size, sample_aspect, output_size, mode: str | None) -> Fraction | None:
    """The pixel aspect ratio that shows the output at the input's display aspect ratio (None:
    square pixels, left unspecified as in an untagged input)."""
    if mode == "pad":
        return None
    ratio = display_aspect(source_size, sample_aspect) / Fraction(output_size[0], output_size[1])
    return None if ratio == 1 and not sample_aspect else ratio


def describe_resize(source_size, sample_aspect, model_size, output_size, mode: str) -> str:
    shown = f"{float(display_aspect(source_size, sample_aspect)):.2f}:1"
    line = f"resize: {source_size[0]}x{source_size[1]} (displayed {shown}) -> {model_size[0]}x{model_size[1]}"
    if mode == "pad":
        x, y, w, h = pad_box(source_size, sample_aspect, model_size)
        return f"{line}: picture {w}x{h} with black bars, so the {output_size[0]}x{output_size[1]} output keeps its shape"
    sar = output_sample_aspect(source_size, sample_aspect, output_size, mode) or 1
    return (f"{line}, stretched; the {output_size[0]}x{output_size[1]} output has pixel aspect {sar} "
            f"so it is displayed {shown} (--resize pad keeps square pixels with black bars)")


def resize_frames(frames: np.ndarray, size: tuple[int, int], mode: str = "stretch",
                  sample_aspect: Fraction | None = None) -> np.ndarray:
    """uint8 RGB [T, H, W, 3] -> [T, size[1], size[0], 3]."""
    width, height = size
    if frames.shape[1:3] == (height, width) and mode == "stretch":
        return frames
    x, y, inner_w, inner_h = (pad_box((frames.shape[2], frames.shape[1]), sample_aspect, size) if mode == "pad"
                              else (0, 0, width, height))
    shrinking = inner_w * inner_h < frames.shape[1] * frames.shape[2]
    interpolation = "AREA" if shrinking else "BICUBIC"
    out = np.zeros((len(frames), height, width, 3), np.uint8)
    if not hasattr(_local, "reformatter"):
        _local.reformatter = VideoReformatter()
    for i, image in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        resized = _local.reformatter.reformat(frame, width=inner_w, height=inner_h, interpolation=interpolation)
        out[i, y:y + inner_h, x:x + inner_w] = resized.to_ndarray()
    return out
