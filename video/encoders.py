"""Encoder choices for VideoWriter: which encoder, pixel format, quality options, colour tags and
time base an output gets."""

from __future__ import annotations

import math
from fractions import Fraction

import av

from .info import (
    CRF_ENCODERS,
    DEFAULT_CRF,
    FULL_RANGE,
    UNSPECIFIED_COLORSPACE,
    VideoError,
    VideoInfo,
)

# Encoders whose time base must fit in 16 bits (MPEG-4 part 2 and MPEG-2 store it so).
SHORT_TIME_BASE_ENCODERS = {"mpeg4", "mpeg2video", "mjpeg"}


def output_time_base(fps: Fraction, input_time_base: Fraction, codec: str) -> Fraction:
    """Ticks fine enough for the 1/fps grid and for every input timestamp: 1/lcm of the two
    denominators (1/30000 for 30000/1001 fps from Matroska's 1/1000, 1/90000 for 30 fps from
    MPEG-TS). A constant-rate input then stays exactly constant-rate and a variable-rate one
    keeps each frame's time."""
    grid = 1 / Fraction(fps)
    ticks = Fraction(1, math.lcm(grid.denominator, Fraction(input_time_base).denominator))
    if codec in SHORT_TIME_BASE_ENCODERS and ticks.denominator > 65535:
        return grid
    return ticks



def _encoder_exists(name: str) -> bool:
    try:
        av.Codec(name, "w")
        return True
    except Exception:  # PyAV raises UnknownCodecError (a ValueError) or a plain error
        return False


def _video_encoder_candidates(container_format: str) -> list[str]:
    # H.264 plays everywhere; WebM only allows VP8/VP9/AV1.
    if container_format == "webm":
        return ["libvpx-vp9", "libvpx", "libsvtav1"]
    return ["libx264", "libx265", "libvpx-vp9", "mpeg4"]


def _chroma_subsampled(pix_fmt: str) -> tuple[bool, bool]:
    """(horizontally, vertically) subsampled chroma, e.g. (True, True) for yuv420p."""
    fmt = av.VideoFormat(pix_fmt, 2, 2)
    chroma = [c for c in fmt.components if c.is_chroma]
    return any(c.width < 2 for c in chroma), any(c.height < 2 for c in chroma)


def choose_pix_fmt(codec: str, width: int, height: int, requested: str | None = None) -> str:
    """Pixel format for an encoder and output size.

    yuv420p plays everywhere but halves the chroma resolution, so it needs even
    dimensions. For odd sizes we use yuv444p (full chroma, every pixel kept) rather than
    cropping or padding; H.264 4:4:4 needs a player with High 4:4:4 support (FFmpeg, VLC,
    mpv, Chrome do; some hardware players don't).
    """
    try:
        supported = [f.name for f in (av.Codec(codec, "w").video_formats or [])]
    except Exception:
        supported = []
    odd_width, odd_height = width % 2 == 1, height % 2 == 1
    if requested is not None:
        if supported and requested not in supported:
            raise VideoError(f"encoder {codec} cannot take pix_fmt {requested}; it supports {', '.join(supported)}")
        sub_w, sub_h = _chroma_subsampled(requested)
        if (odd_width and sub_w) or (odd_height and sub_h):
            raise VideoError(
                f"pix_fmt {requested} subsamples chroma and needs even dimensions, but the output is "
                f"{width}x{height}; use yuv444p or an even size"
            )
        return requested
    preferred = ["yuv444p"] if (odd_width or odd_height) else ["yuv420p"]
    for name in preferred:
        if not supported or name in supported:
            return name
    for name in supported:
        sub_w, sub_h = _chroma_subsampled(name)
        if not ((odd_width and sub_w) or (odd_height and sub_h)):
            return name
    raise VideoError(
        f"encoder {codec} has no pixel format for the odd size {width}x{height}; "
        "use libx264/libx265/libvpx-vp9, an even size, or a PNG sequence"
    )


def _output_color_tags(info: VideoInfo, pix_fmt: str) -> dict[str, int]:
    """The input's colour tags, adjusted to what the output pixel format can mean.

    The matrix tag describes how YUV encodes RGB: an RGB-coded source (colorspace "rgb")
    written as YUV gets the swscale default matrix, so its tag becomes unspecified; an
    RGB output format is tagged "rgb". Full-range "yuvj" formats are full range.
    """
    colorspace, color_range = info.colorspace, info.color_range
    if av.VideoFormat(pix_fmt).is_rgb:
        colorspace, color_range = 0, FULL_RANGE
    elif colorspace == 0:
        colorspace = UNSPECIFIED_COLORSPACE
    if pix_fmt.startswith("yuvj"):
        color_range = FULL_RANGE
    return {
        "color_primaries": info.color_primaries,
        "color_trc": info.color_trc,
        "colorspace": colorspace,
        "color_range": color_range,
    }


def _encoder_options(codec: str, crf: int | None, target: str) -> dict[str, str]:
    """Constant-quality settings for a video encoder."""
    options = {}
    if codec in CRF_ENCODERS:
        options["crf"] = str(DEFAULT_CRF if crf is None else crf)
    elif crf is not None:
        raise VideoError(f"encoder {codec} has no CRF setting; leave --crf unset", source=target)
    if codec in ("libvpx-vp9", "libvpx"):
        # Constant quality needs a zero target bitrate; speed 4 and row threading keep
        # VP9 from being far slower than x264 at similar quality.
        options.update({"b": "0", "cpu-used": "4", "row-mt": "1"})
    if codec == "libx265":
        options["x265-params"] = "log-level=error"
    return options
