"""Frame sizes: named resolutions and how input pixels map to output, padded and latent grids.

Free of torch (the export, the engines and the runtime all use it). Sizes are (width, height).
"""
from dataclasses import dataclass
import re

RESOLUTIONS = {
    "360p": (640, 360), "480p": (854, 480), "540p": (960, 540), "720p": (1280, 720),
    "1080p": (1920, 1080), "1440p": (2560, 1440), "2160p": (3840, 2160),
}
PAD_MULTIPLE = 32        # ReAE: pixel-unshuffle 2 then three stride-2 convs, DiT patch 2
PIXELS_PER_LATENT = 16
DEFAULT_SCALE = 4        # the reference pipeline's upscale factor


def parse_size(text: str) -> tuple[int, int]:
    """'1920x1080' or a resolution name -> (width, height)."""
    if text in RESOLUTIONS:
        return RESOLUTIONS[text]
    match = re.fullmatch(r"(\d+)[xX](\d+)", text.strip())
    if not match:
        raise ValueError(f"size {text!r} is neither WIDTHxHEIGHT nor one of {', '.join(RESOLUTIONS)}")
    width, height = int(match[1]), int(match[2])
    if width < 1 or height < 1:
        raise ValueError(f"size {text!r} must be positive")
    return width, height


def resolution_name(size: tuple[int, int]) -> str:
    """'1080p' for a named size, else 'WxH'."""
    for name, known in RESOLUTIONS.items():
        if known == tuple(size):
            return name
    return f"{size[0]}x{size[1]}"


def padded(n: int) -> int:
    return -(-n // PAD_MULTIPLE) * PAD_MULTIPLE


@dataclass(frozen=True)
class FrameGeometry:
    input_size: tuple[int, int]      # frames as they arrive
    crop_size: tuple[int, int]       # after the reference's crop to multiples of 8 (= input_size in our mode)
    output_size: tuple[int, int]     # restored frames
    padded_size: tuple[int, int]     # output zero-padded bottom/right to a multiple of 32
    latent_size: tuple[int, int]     # padded / 16

    @property
    def scale(self) -> float:
        return self.output_size[1] / self.crop_size[1]


def frame_geometry(input_size: tuple[int, int], output_size: tuple[int, int] | None = None,
                   scale: float | None = None, crop_to_8: bool = False) -> FrameGeometry:
    """Output = input * scale unless given. `crop_to_8` is the reference's top-left crop of the input
    to multiples of 8 (it loses up to 7 rows and columns; off by default)."""
    width, height = input_size
    if crop_to_8:
        width, height = width // 8 * 8, height // 8 * 8
        if not width or not height:
            raise ValueError(f"input {input_size[0]}x{input_size[1]} is smaller than 8x8")
    if output_size is None:
        scale = DEFAULT_SCALE if scale is None else scale
        output_size = (round(width * scale), round(height * scale))
    out_w, out_h = output_size
    if out_w < PAD_MULTIPLE or out_h < PAD_MULTIPLE:
        raise ValueError(f"output {out_w}x{out_h} is smaller than one DiT token ({PAD_MULTIPLE}x{PAD_MULTIPLE} pixels)")
    pad_w, pad_h = padded(out_w), padded(out_h)
    return FrameGeometry((input_size[0], input_size[1]), (width, height), (out_w, out_h), (pad_w, pad_h),
                         (pad_w // PIXELS_PER_LATENT, pad_h // PIXELS_PER_LATENT))
