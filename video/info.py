"""What a video source is: kinds of input and output, stream facts (VideoInfo), rates and sizes.

Shared by reader.py and writer.py; only numpy-free standard library and PyAV.
"""

from __future__ import annotations

import dataclasses
import os
import re
from fractions import Fraction
from pathlib import Path

from av.video.reformatter import ColorPrimaries, ColorTrc, Colorspace

from contract.sizes import parse_size  # noqa: F401  (one size syntax for the whole project)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")

# FFmpeg's "unspecified" values for the colour tags (AVCOL_*), used for sources that
# carry no tags (raw RGB, most image files).
UNSPECIFIED_PRIMARIES = 2
UNSPECIFIED_TRC = 2
UNSPECIFIED_COLORSPACE = 2
UNSPECIFIED_RANGE = 0
LIMITED_RANGE = 1  # "tv"/"mpeg" range
FULL_RANGE = 2  # "pc"/"jpeg" range

# FFmpeg's image2 demuxer assumes 25 fps for image sequences; do the same.
DEFAULT_IMAGE_SEQUENCE_FPS = Fraction(25)
DEFAULT_CRF = 18
DEFAULT_CHUNK_FRAMES = 24

# Which container to use for a streaming URL when the caller does not name one.
STREAM_FORMAT_BY_SCHEME = {
    "rtmp": "flv",
    "rtmps": "flv",
    "srt": "mpegts",
    "udp": "mpegts",
    "tcp": "mpegts",
    "rtp": "rtp_mpegts",
    "rtsp": "rtsp",
}

# Encoders that take a constant-quality "crf" option.
CRF_ENCODERS = {"libx264", "libx264rgb", "libx265", "libvpx", "libvpx-vp9", "libsvtav1", "libaom-av1"}
# Encoders with a fixed quantiser instead (-q:v in the ffmpeg CLI); 2 is near-transparent.
QSCALE_ENCODERS = {"mpeg4", "mpeg2video", "mjpeg"}
DEFAULT_QSCALE = 2
FF_QP2LAMBDA = 118  # FFmpeg's scale between quantiser and lambda (global_quality)

# Image sequence outputs: encoder and pixel format by file extension. PNG and TIFF are
# lossless RGB; JPEG uses full-resolution chroma so odd sizes and fine colour survive.
IMAGE_ENCODERS = {
    ".png": ("png", "rgb24"),
    ".jpg": ("mjpeg", "yuvj444p"),
    ".jpeg": ("mjpeg", "yuvj444p"),
    ".bmp": ("bmp", "bgr24"),
    ".tif": ("tiff", "rgb24"),
    ".tiff": ("tiff", "rgb24"),
}

# swscale needs the conversion matrix as an SWS_CS_* value, frames carry AVCOL_SPC_*.
SWS_COLORSPACE_BY_TAG = {
    1: Colorspace.ITU709,  # bt709
    4: Colorspace.FCC,
    5: Colorspace.ITU601,  # bt470bg
    6: Colorspace.SMPTE170M,
    7: Colorspace.SMPTE240M,
    9: Colorspace.BT2020,  # bt2020nc
    10: Colorspace.BT2020,  # bt2020c
}

URL_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
PRINTF_PATTERN = re.compile(r"%(0?\d*)d")


class VideoError(RuntimeError):
    """A source or target could not be read or written.

    `source` names the file/URL, `frame_index` is the number of frames read (or written)
    successfully before the failure, when that is meaningful.
    """

    def __init__(self, message: str, *, source: str | None = None, frame_index: int | None = None):
        super().__init__(message)
        self.source = source
        self.frame_index = frame_index


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: Fraction  # exact rational rate, e.g. 30000/1001
    frame_count: int | None  # None when unknown (live streams, pipes); may be estimated from the duration
    time_base: Fraction  # of the source's video stream
    source: str
    has_audio: bool = False
    # Colour tags as FFmpeg's AVCOL_* integers, so they can be set on the output as they are.
    color_primaries: int = UNSPECIFIED_PRIMARIES
    color_trc: int = UNSPECIFIED_TRC
    colorspace: int = UNSPECIFIED_COLORSPACE
    color_range: int = UNSPECIFIED_RANGE
    start_time: Fraction = Fraction(0)  # seconds, presentation time of the first frame
    rotation: int = 0  # degrees counter-clockwise to display the stored frames upright
    sample_aspect_ratio: Fraction | None = None
    pix_fmt: str | None = None  # of the source, before conversion to RGB
    codec: str | None = None

    def describe(self) -> str:
        count = "unknown length" if self.frame_count is None else f"{self.frame_count} frames"
        parts = [f"{self.width}x{self.height}", f"{self.fps} fps ({float(self.fps):.3f})", count]
        if self.codec:
            parts.append(f"{self.codec} {self.pix_fmt or ''}".strip())
        tags = [
            _enum_name(ColorPrimaries, self.color_primaries, UNSPECIFIED_PRIMARIES),
            _enum_name(ColorTrc, self.color_trc, UNSPECIFIED_TRC),
            _colorspace_name(self.colorspace),
            {LIMITED_RANGE: "limited", FULL_RANGE: "full"}.get(self.color_range),
        ]
        if any(tags):
            parts.append("colour " + "/".join(tag or "?" for tag in tags))
        if self.rotation:
            parts.append(f"rotated {self.rotation} deg")
        parts.append("audio" if self.has_audio else "no audio")
        return f"{self.source}: " + ", ".join(parts)


def _enum_name(enum, value: int, unspecified: int) -> str | None:
    if value == unspecified:
        return None
    try:
        return enum(value).name.lower()
    except ValueError:
        return str(value)


def _colorspace_name(value: int) -> str | None:
    names = {0: "rgb", 1: "bt709", 4: "fcc", 5: "bt470bg", 6: "smpte170m", 7: "smpte240m", 9: "bt2020nc", 10: "bt2020c"}
    return None if value == UNSPECIFIED_COLORSPACE else names.get(value, str(value))


def parse_rate(value: str | int | float | Fraction) -> Fraction:
    """'30000/1001', '29.97', 30 or a Fraction -> exact Fraction.

    Decimal NTSC rates ('23.976', '29.97', '59.94') mean n*1000/1001, which is what
    everybody who types them means; other decimals are taken literally.
    """
    if isinstance(value, Fraction):
        rate = value
    elif isinstance(value, float):
        rate = Fraction(repr(value))
    else:
        try:
            rate = Fraction(str(value).strip())
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"frame rate must look like 30, 29.97 or 30000/1001, got {value!r}") from None
    if rate <= 0:
        raise ValueError(f"frame rate must be positive, got {value!r}")
    text = str(value).strip()
    if isinstance(value, (str, float)) and "." in text and rate.denominator != 1:
        decimals = len(text.split(".")[1])
        ntsc = Fraction(round(rate * Fraction(1001, 1000)) * 1000, 1001)
        if ntsc.denominator != 1 and round(float(ntsc), decimals) == round(float(rate), decimals):
            return ntsc
    return rate


def classify(target: str, *, writing: bool = False, container_format: str | None = None) -> str:
    """What a source or target names: "pipe" ("-"), "url", "images" (a folder or a pattern like
    frames/%05d.png) or "file". An output path without an extension is an image folder."""
    if target == "-":
        return "pipe"
    if URL_PATTERN.match(target) and not target.startswith("file:"):
        return "url"
    if container_format == "image2" or PRINTF_PATTERN.search(os.path.basename(target)) or os.path.isdir(target):
        return "images"
    if not writing or container_format is not None:
        return "file"
    ext = os.path.splitext(target)[1].lower()
    if target.endswith(("/", os.sep)) or not ext:
        return "images"
    if ext in IMAGE_EXTENSIONS:
        raise VideoError(
            f"{target} names one image; write a sequence to a directory or a pattern like frames/%05d{ext}",
            source=target,
        )
    return "file"


def _natural_key(path: Path):
    # "frame_2" sorts before "frame_10": compare digit runs as numbers.
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", path.stem)] + [
        (2, 0, path.suffix)
    ]


def _expand_printf_pattern(pattern: str) -> list[Path]:
    """Files matching an FFmpeg-style pattern like frames/%05d.png, in numeric order."""
    directory, name = os.path.split(pattern)
    matches = list(PRINTF_PATTERN.finditer(name))
    if len(matches) != 1:
        raise VideoError(f"image pattern must contain exactly one %d or %0Nd: {pattern!r}", source=pattern)
    match = matches[0]
    regex = re.compile(re.escape(name[: match.start()]) + r"(\d+)" + re.escape(name[match.end() :]) + "$")
    folder = Path(directory or ".")
    if not folder.is_dir():
        raise VideoError(f"no such directory for image pattern: {pattern}", source=pattern)
    numbered = []
    for entry in folder.iterdir():
        found = regex.match(entry.name)
        # Re-format the number to honour the padding (%05d must not match "7.png").
        if found and entry.is_file() and name % int(found[1]) == entry.name:
            numbered.append((int(found[1]), entry))
    return [path for _, path in sorted(numbered)]


def _list_image_directory(directory: Path) -> list[Path]:
    files = [p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(files, key=_natural_key)


def _parse_duration_tag(text: str | None) -> Fraction | None:
    # Matroska writers store a per-track "DURATION" tag like "00:01:02.033000000".
    match = re.fullmatch(r"(\d+):(\d\d):(\d\d(?:\.\d+)?)", (text or "").strip())
    if not match:
        return None
    return int(match[1]) * 3600 + int(match[2]) * 60 + Fraction(match[3])


def _stream_rate(stream) -> Fraction | None:
    """The exact frame rate of a video stream.

    FFmpeg's guess (from codec timing info and timestamps) gives exact rates like
    30000/1001. When it disagrees with the average rate by more than 1%, the stream has
    a variable frame rate; the average then keeps the total duration (and so audio
    sync over the whole video) right for a constant-rate output.
    """
    guessed, average = stream.guessed_rate, stream.average_rate
    if guessed and average and abs(average / guessed - 1) > Fraction(1, 100):
        return Fraction(average).limit_denominator(1_000_000)
    for rate in (guessed, average, stream.base_rate, stream.codec_context.framerate):
        if rate:
            return Fraction(rate)
    return None
