"""Video input and output for the streaming runtime.

The runtime runs a reader thread and a writer thread around the two classes here:

    reader = VideoReader("in.mp4")
    writer = VideoWriter("out.mp4", reader.info, width=2 * w, height=2 * h, audio_from=reader)
    # reader thread:  for chunk in reader: queue.put(chunk)      (uint8 [t, H, W, 3] RGB)
    # writer thread:  writer.write(restored_chunk) ... writer.close()
    # on Ctrl-C:      writer.abort()   -> a playable file with what was written so far

Only numpy, PyAV (FFmpeg bindings) and the standard library are used, so this module
imports without torch.

Sources: a video file, an image sequence (a directory, or a printf pattern such as
frames/%05d.png), "-" for raw RGB24 frames on stdin, or any URL FFmpeg can open
(rtmp://, rtsp://, srt://, udp://, http://...).
Targets: a video file (written under a temporary name and renamed on close), an image
sequence, "-" for raw RGB24 on stdout, or a streaming URL.

Frames are always 8-bit RGB in their stored orientation; `VideoInfo.rotation` says how
to display them and the writer carries it (and the colour tags) over to the output.
The output is constant frame rate at the input's exact rational rate.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import re
import sys
import threading
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import ColorPrimaries, ColorTrc, Colorspace, VideoReformatter

log = logging.getLogger(__name__)

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


# ---------------------------------------------------------------------------------------
# Small parsing helpers


def parse_size(text: str) -> tuple[int, int]:
    """'1920x1080' -> (1920, 1080)."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX*]\s*(\d+)\s*", str(text))
    if not match or int(match[1]) == 0 or int(match[2]) == 0:
        raise ValueError(f"size must look like 1920x1080, got {text!r}")
    return int(match[1]), int(match[2])


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


def _is_url(text: str) -> bool:
    return bool(URL_PATTERN.match(text))


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


# ---------------------------------------------------------------------------------------
# Audio hand-over between the reader thread and the writer thread


class AudioPassthrough:
    """Audio packets demuxed by the reader, waiting to be muxed (not re-encoded) by a writer.

    The reader puts packets in demux order; the writer takes the ones due before the
    video it has written. Memory stays bounded because the reader only runs ahead of the
    writer by the runtime's frame queue, so only that much audio waits here. Once the
    writer closes, further packets are dropped.
    """

    def __init__(self, stream):
        self.stream = stream  # the input audio stream, a template for the output stream
        self._packets: collections.deque = collections.deque()
        self._lock = threading.Lock()
        self._closed = False

    def put(self, packet) -> None:
        with self._lock:
            if not self._closed:
                self._packets.append(packet)

    def take(self, until: Fraction | None = None, shift: Fraction = Fraction(0)) -> list:
        """Pop the packets whose time (seconds, minus `shift`) is before `until`; all if None."""
        taken = []
        with self._lock:
            while self._packets:
                packet = self._packets[0]
                ts = packet.pts if packet.pts is not None else packet.dts
                if until is not None and ts is not None and ts * packet.time_base - shift >= until:
                    break
                taken.append(self._packets.popleft())
        return taken

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._packets.clear()


# ---------------------------------------------------------------------------------------
# Reading


class _Damage(Exception):
    """Corruption spotted by us rather than by FFmpeg (flags on packets or frames)."""


class VideoReader:
    """Decodes a source into uint8 RGB frames, chunk by chunk.

    `read(n)` returns an array [t, H, W, 3] with t <= n; t == 0 means the end. Iterating
    gives chunks of DEFAULT_CHUNK_FRAMES frames, `chunks(n)` chunks of n frames.
    If the source is corrupt or truncated, every frame decoded before the damage is
    returned first and the next read raises VideoError (with the frame index reached).

    strict (default: True for files, False for URLs): treat decoder errors, corrupt
    packets/frames and a stream ending before its declared duration as errors. With
    strict=False they are logged and decoding goes on, which is what a live stream with
    packet loss needs. (Unreadable images and short raw frames are always errors.)
    `options` are passed to FFmpeg when opening a file or URL (e.g. {"rtsp_transport": "tcp"}
    or {"rw_timeout": "5000000"}).
    raw_size/raw_fps describe raw RGB24 frames on stdin ("-"); raw_fps also sets the rate
    of image sequences (default 25, like FFmpeg).
    """

    def __init__(
        self,
        source: str | os.PathLike,
        *,
        raw_size: tuple[int, int] | str | None = None,
        raw_fps: Fraction | int | float | str | None = None,
        strict: bool | None = None,
        options: dict[str, str] | None = None,
    ):
        self.source = str(source)
        self.frames_read = 0
        self.audio_stream = None
        self._audio: AudioPassthrough | None = None
        self._audio_shared = False
        self._started = False
        self._pending_error: VideoError | None = None
        self._peeked: list[np.ndarray] = []
        self._container = None
        self._reformatter = VideoReformatter()
        self._frame_size: tuple[int, int] | None = None
        self._warned_resize = False
        self._closed = False

        if self.source == "-":
            self.kind = "stdin"
        elif _is_url(self.source) and not self.source.startswith("file:"):
            self.kind = "url"
        elif PRINTF_PATTERN.search(os.path.basename(self.source)) or os.path.isdir(self.source):
            self.kind = "images"
        else:
            self.kind = "file"
        # A live stream with packet loss has to be decoded through its errors; a file with
        # errors is damaged, and the caller should know.
        self.strict = (self.kind != "url") if strict is None else strict

        if self.kind == "stdin":
            self._open_stdin(raw_size, raw_fps)
        elif self.kind == "images":
            if os.path.isdir(self.source):
                files = _list_image_directory(Path(self.source))
            else:
                files = _expand_printf_pattern(self.source)
            self._open_images(files, raw_fps)
        else:
            if self.kind == "file" and not self.source.startswith("file:") and not os.path.exists(self.source):
                raise VideoError(f"no such file: {self.source}", source=self.source, frame_index=0)
            self._open_container(options)

    # -- opening ------------------------------------------------------------------------

    def _open_stdin(self, raw_size, raw_fps) -> None:
        if raw_size is None or raw_fps is None:
            raise VideoError("reading raw RGB24 frames from stdin needs raw_size=(W, H) and raw_fps", source="-")
        width, height = parse_size(raw_size) if isinstance(raw_size, str) else (int(raw_size[0]), int(raw_size[1]))
        fps = parse_rate(raw_fps)
        if sys.stdin is None:
            raise VideoError("reading frames from stdin, but this process has no stdin", source="-")
        self.info = VideoInfo(
            width=width,
            height=height,
            fps=fps,
            frame_count=None,
            time_base=1 / fps,
            source="stdin",
            pix_fmt="rgb24",
        )
        self._frames = self._read_raw_stdin(sys.stdin.buffer)

    def _open_images(self, files: list[Path], raw_fps) -> None:
        if not files:
            raise VideoError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) found in {self.source}", source=self.source)
        fps = parse_rate(raw_fps) if raw_fps is not None else DEFAULT_IMAGE_SEQUENCE_FPS
        first = self._decode_image(files[0], 0)
        height, width = first.shape[:2]
        self.info = VideoInfo(
            width=width,
            height=height,
            fps=fps,
            frame_count=len(files),
            time_base=1 / fps,
            source=self.source,
            pix_fmt="rgb24",
            codec=files[0].suffix.lower().lstrip("."),
        )
        self._peeked = [first]
        self._frames = self._read_images(files[1:])

    def _open_container(self, options) -> None:
        try:
            self._container = av.open(self.source, "r", options=dict(options or {}))
        except (av.FFmpegError, OSError) as error:
            raise VideoError(
                f"cannot open {self.source}: {error} (not a video, or truncated/damaged)",
                source=self.source,
                frame_index=0,
            ) from error
        container = self._container
        try:
            if not container.streams.video:
                raise VideoError(f"{self.source} has no video stream", source=self.source, frame_index=0)
            video = container.streams.video[0]
            # Frame threading keeps both cores busy on big frames; the added latency is
            # a few frames, nothing next to a 24-frame chunk.
            video.thread_type = "AUTO"
            self._video = video
            if container.streams.audio:
                self.audio_stream = container.streams.audio[0]
                # Collect audio from the very first packet; if no writer claims it before
                # the first read, it is dropped (see share_audio).
                self._audio = AudioPassthrough(self.audio_stream)
            fps = _stream_rate(video)
            if fps is None:
                raise VideoError(f"{self.source}: the video stream has no frame rate", source=self.source, frame_index=0)
            self._fps = fps
            self._declared_end = self._declared_video_end(video)

            # Decode the first frame now: it validates the source and carries the tags
            # that only frames have (rotation, and colour tags some demuxers omit).
            self._first_frame = None
            self._frames = self._decode_container()
            self._peeked = [next(self._frames)]
        except StopIteration:
            self.close()
            raise VideoError(f"{self.source} contains no decodable video frames", source=self.source, frame_index=0) from None
        except BaseException:
            self.close()
            raise

        first = self._first_frame
        ctx = video.codec_context

        def tag(name: str, unspecified: int) -> int:
            value = int(getattr(ctx, name))
            return value if value != unspecified else int(getattr(first, name))

        time_base = Fraction(video.time_base) if video.time_base else 1 / fps
        if first.pts is not None:
            start_time = first.pts * time_base
        elif video.start_time is not None:
            start_time = video.start_time * time_base
        else:
            start_time = Fraction(0)
        self._start_time = start_time
        height, width = self._peeked[0].shape[:2]
        self.info = VideoInfo(
            width=width,
            height=height,
            fps=fps,
            frame_count=self._estimate_frame_count(video, fps, start_time),
            time_base=time_base,
            source=self.source,
            has_audio=self.audio_stream is not None,
            color_primaries=tag("color_primaries", UNSPECIFIED_PRIMARIES),
            color_trc=tag("color_trc", UNSPECIFIED_TRC),
            colorspace=tag("colorspace", UNSPECIFIED_COLORSPACE),
            color_range=tag("color_range", UNSPECIFIED_RANGE),
            start_time=start_time,
            rotation=int(first.rotation or 0) % 360,
            sample_aspect_ratio=Fraction(ctx.sample_aspect_ratio) if ctx.sample_aspect_ratio else None,
            pix_fmt=ctx.pix_fmt,
            codec=ctx.name,
        )
        self._first_frame = None  # only needed for the tags; don't pin a decoder buffer

    def _declared_video_end(self, video) -> Fraction | None:
        """End time of the video track as the container declares it, for spotting truncation.

        Matroska/WebM record it in a per-track DURATION tag that survives truncation
        (FFmpeg reports no error when such a file just stops). MP4/MOV truncation is
        reported by FFmpeg itself (missing index, or short reads flagged corrupt).
        """
        return _parse_duration_tag(video.metadata.get("DURATION") or video.metadata.get("duration"))

    def _estimate_frame_count(self, video, fps: Fraction, start_time: Fraction) -> int | None:
        if video.frames:
            return int(video.frames)
        if video.duration and video.time_base:
            return round(video.duration * video.time_base * fps)
        if self._declared_end is not None:
            return max(0, round((self._declared_end - start_time) * fps))
        return None

    # -- frame generators ---------------------------------------------------------------

    def _to_rgb(self, frame) -> np.ndarray:
        # Convert with the frame's own colour tags (swscale reads them). The size is fixed
        # by the first frame, so a mid-stream resolution change (adaptive live streams)
        # is scaled back instead of breaking the chunk shapes.
        if self._frame_size is None:
            self._frame_size = (frame.width, frame.height)
            self._first_frame = frame  # for the tags only frames carry (see _open_container)
        elif (frame.width, frame.height) != self._frame_size and not self._warned_resize:
            log.warning(
                "%s: frame size changed from %dx%d to %dx%d; scaling back",
                self.source, *self._frame_size, frame.width, frame.height,
            )
            self._warned_resize = True
        width, height = self._frame_size
        return self._reformatter.reformat(frame, width=width, height=height, format="rgb24").to_ndarray()

    def _decode_container(self):
        video, audio = self._video, self._audio
        streams = [video] + ([self.audio_stream] if audio is not None else [])
        decoded = 0
        last_end: Fraction | None = None
        frame_duration = 1 / self._fps
        try:
            for packet in self._container.demux(*streams):
                # packet.stream, not packet.stream_index: PyAV's end-of-stream flush
                # packets all carry stream_index 0.
                if packet.stream.index != video.index:
                    if packet.size and self._audio is not None:
                        self._audio.put(packet)
                    continue
                if packet.is_corrupt and self.strict:
                    raise _Damage("corrupt or truncated packet")
                try:
                    frames = video.decode(packet)
                except av.FFmpegError as error:
                    if self.strict:
                        raise
                    log.warning("%s: skipping undecodable packet near frame %d: %s", self.source, decoded, error)
                    continue
                for frame in frames:
                    if frame.is_corrupt and self.strict:
                        raise _Damage("corrupt frame")
                    if frame.pts is not None and frame.time_base is not None:
                        last_end = frame.pts * frame.time_base + frame_duration
                    decoded += 1
                    yield self._to_rgb(frame)
        except (av.FFmpegError, _Damage, OSError) as error:
            # Frames already inside the decoder (threading, reordering) were decoded
            # from good packets: hand them out before reporting the damage.
            try:
                for frame in video.decode(None):
                    if frame.is_corrupt:
                        break
                    decoded += 1
                    yield self._to_rgb(frame)
            except av.FFmpegError:
                pass
            if self.strict:
                advice = "the input is corrupt or truncated (strict=False conceals decoding errors and goes on)"
            else:
                advice = "the stream broke off"
            raise VideoError(
                f"{self.source}: {error} at frame {decoded} ({decoded} frames decoded before it); {advice}",
                source=self.source,
                frame_index=decoded,
            ) from error
        # A Matroska/WebM file cut short ends silently: compare with its declared length.
        if self.strict and self._declared_end is not None and last_end is not None:
            missing = self._declared_end - last_end
            if missing > max(2 * frame_duration, (self._declared_end - self._start_time) / 100):
                raise VideoError(
                    f"{self.source}: ended at {float(last_end):.3f}s after {decoded} frames but declares "
                    f"{float(self._declared_end):.3f}s; the file is truncated or damaged",
                    source=self.source,
                    frame_index=decoded,
                )

    def _decode_image(self, path: Path, index: int) -> np.ndarray:
        try:
            with av.open(str(path), "r") as container:
                frame = next(container.decode(video=0))
                return self._reformatter.reformat(frame, format="rgb24").to_ndarray()
        except (av.FFmpegError, OSError, StopIteration, IndexError) as error:
            reason = "no image in it" if isinstance(error, (StopIteration, IndexError)) else error
            raise VideoError(
                f"{path}: cannot decode image (frame {index} of {self.source}): {reason}",
                source=str(path),
                frame_index=index,
            ) from None

    def _read_images(self, files: list[Path]):
        for offset, path in enumerate(files, start=1):
            image = self._decode_image(path, offset)
            if image.shape[:2] != (self.info.height, self.info.width):
                raise VideoError(
                    f"{path}: image is {image.shape[1]}x{image.shape[0]}, the sequence started at "
                    f"{self.info.width}x{self.info.height} (frame {offset})",
                    source=str(path),
                    frame_index=offset,
                )
            yield image

    def _read_raw_stdin(self, stream):
        width, height = self.info.width, self.info.height
        frame_bytes = width * height * 3
        index = 0
        while True:
            buffer = bytearray(frame_bytes)
            view, filled = memoryview(buffer), 0
            while filled < frame_bytes:
                got = stream.readinto(view[filled:])
                if not got:
                    break
                filled += got
            if filled == 0:
                return
            if filled < frame_bytes:
                raise VideoError(
                    f"stdin: truncated frame {index}: got {filled} of {frame_bytes} bytes "
                    f"({width}x{height} RGB24); {index} complete frames were read",
                    source="-",
                    frame_index=index,
                )
            index += 1
            yield np.frombuffer(buffer, dtype=np.uint8).reshape(height, width, 3)

    # -- public API ---------------------------------------------------------------------

    def share_audio(self) -> AudioPassthrough:
        """Hand the input's audio packets to a writer (called by VideoWriter(audio_from=...)).

        Must happen before the first read, or audio demuxed meanwhile would be lost.
        """
        if self._audio is None:
            raise VideoError(f"{self.source} has no audio stream to pass through", source=self.source)
        if self._started:
            raise VideoError("attach the writer's audio before reading frames, or audio is lost", source=self.source)
        if self._audio_shared:
            raise VideoError("the audio of this reader is already passed to another writer", source=self.source)
        self._audio_shared = True
        return self._audio

    def read(self, n: int = DEFAULT_CHUNK_FRAMES) -> np.ndarray:
        """Up to n frames as uint8 [t, H, W, 3] RGB; t == 0 at the end."""
        if n < 1:
            raise ValueError(f"read(n) needs n >= 1, got {n}")
        if self._closed:
            raise VideoError(f"{self.source}: reader is closed", source=self.source)
        if not self._started:
            self._started = True
            if self._audio is not None and not self._audio_shared:
                # Nobody claimed the audio: stop collecting it.
                self._audio.close()
        if self._pending_error is not None:
            error, self._pending_error = self._pending_error, None
            raise error
        chunk = np.empty((n, self.info.height, self.info.width, 3), dtype=np.uint8)
        count = 0
        while count < n:
            if self._peeked:
                chunk[count] = self._peeked.pop(0)
                count += 1
                continue
            try:
                chunk[count] = next(self._frames)
                count += 1
            except StopIteration:
                break
            except VideoError as error:
                if count == 0:
                    raise
                # Return what was decoded; the error comes with the next read.
                self._pending_error = error
                break
        self.frames_read += count
        return chunk[:count]

    def chunks(self, n: int = DEFAULT_CHUNK_FRAMES):
        """Yield arrays [t, H, W, 3] of n frames (the last may be shorter) until the end."""
        while True:
            chunk = self.read(n)
            if len(chunk) == 0:
                return
            yield chunk

    def __iter__(self):
        return self.chunks(DEFAULT_CHUNK_FRAMES)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        frames = getattr(self, "_frames", None)
        if frames is not None and hasattr(frames, "close"):
            frames.close()
        if self._container is not None:
            self._container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def probe(source: str | os.PathLike, **reader_options) -> VideoInfo:
    """VideoInfo of a source without keeping it open (decodes only the first frame)."""
    with VideoReader(source, **reader_options) as reader:
        return reader.info


# ---------------------------------------------------------------------------------------
# Writing


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


class VideoWriter:
    """Encodes uint8 RGB frames [t, H, W, 3] to a file, image sequence, stdout or URL.

    File outputs are written to ".<name>.partial<ext>" beside the target and renamed
    onto the target by close() (or abort()), so the target name only ever holds a
    finished, playable file. discard() (and leaving a `with` block by an exception)
    removes the partial file instead.

    Video: constant frame rate at info.fps exactly (stream time base 1/fps, pts = frame
    index), colour tags, sample aspect ratio and rotation copied from info. Default
    encoder libx264 (VP9 for .webm) at CRF 18, yuv420p, or yuv444p for odd sizes
    (see choose_pix_fmt).
    Audio: with audio_from=reader, the reader's first audio stream is copied packet for
    packet (no re-encoding), shifted by the same amount as the video so sync is kept.
    Image sequences and raw stdout carry no audio.

    Targets: "-" (raw RGB24 on stdout); a URL (container from the scheme: flv for rtmp,
    mpegts for srt/udp/tcp; else pass container_format); a directory, a path without
    extension or a pattern like out/%05d.png (an image sequence numbered from 1, format
    from the extension: png, jpg, bmp, tif); anything else is a video file whose format
    comes from the extension or container_format. `options` go to the muxer (e.g.
    {"movflags": "+faststart"}).
    """

    def __init__(
        self,
        target: str | os.PathLike,
        info: VideoInfo,
        *,
        width: int,
        height: int,
        codec: str | None = None,
        crf: int | None = None,
        pix_fmt: str | None = None,
        audio_from: VideoReader | None = None,
        container_format: str | None = None,
        options: dict[str, str] | None = None,
    ):
        self.target = str(target)
        self.info = info
        self.width, self.height = int(width), int(height)
        self.fps = Fraction(info.fps)
        self.frames_written = 0
        self.state = "open"  # -> "closed" | "aborted" | "discarded"
        self._lock = threading.Lock()
        self._container = None
        self._pipe = None
        self._audio: AudioPassthrough | None = None
        self._audio_stream = None
        self._partial_path: str | None = None
        self._reformatter = VideoReformatter()

        if self.width < 1 or self.height < 1:
            raise VideoError(f"output size must be positive, got {width}x{height}", source=self.target)
        self.kind = self._target_kind(container_format)
        if self.kind == "stdout":
            self.codec, self.pix_fmt = "rawvideo", "rgb24"
            self._pipe = sys.stdout.buffer
            return

        try:
            self._open_container(codec, crf, pix_fmt, container_format, options)
            if audio_from is not None and audio_from.audio_stream is not None and self.kind in ("file", "url"):
                self._add_audio(audio_from)
        except BaseException:
            self._drop_container()
            raise

    # -- opening ------------------------------------------------------------------------

    def _target_kind(self, container_format: str | None) -> str:
        target = self.target
        if target == "-":
            return "stdout"
        if _is_url(target) and not target.startswith("file:"):
            return "url"
        if container_format == "image2":
            return "images"
        if PRINTF_PATTERN.search(os.path.basename(target)):
            return "images"
        ext = os.path.splitext(target)[1].lower()
        if container_format is None and (os.path.isdir(target) or target.endswith(("/", os.sep)) or not ext):
            return "images"
        if container_format is None and ext in IMAGE_EXTENSIONS:
            raise VideoError(
                f"{target} names one image; write a sequence to a directory or a pattern like frames/%05d{ext}",
                source=target,
            )
        return "file"

    def _open_container(self, codec, crf, pix_fmt, container_format, options) -> None:
        if self.kind == "images":
            self._open_image_sequence(codec, pix_fmt)
            return

        if self.kind == "url":
            scheme = self.target.split(":", 1)[0].lower()
            fmt = container_format or STREAM_FORMAT_BY_SCHEME.get(scheme)
            path = self.target
        else:
            directory, name = os.path.split(os.path.abspath(self.target))
            if not os.path.isdir(directory):
                raise VideoError(f"output directory does not exist: {directory}", source=self.target)
            stem, ext = os.path.splitext(name)
            self._partial_path = os.path.join(directory, f".{stem}.partial{ext}")
            fmt, path = container_format, self._partial_path
        try:
            self._container = av.open(path, "w", format=fmt, container_options=dict(options or {}))
        except (av.FFmpegError, ValueError, OSError) as error:
            hint = " (name the container with container_format=...)" if fmt is None else ""
            raise VideoError(f"cannot open {self.target} for writing: {error}{hint}", source=self.target) from error

        # The muxer is the authority on what it can hold: PyAV's add_stream asks it, and
        # (unlike supported_codecs) accepts codecs it has no opinion on, like H.264 in MPEG-TS.
        candidates = [codec] if codec else _video_encoder_candidates(self._container.format.name)
        stream = None
        for name in candidates:
            if not _encoder_exists(name):
                continue
            try:
                stream = self._container.add_stream(name, rate=self.fps)
            except ValueError:
                continue
            codec = name
            break
        if stream is None:
            which = f"encoder {codec!r}" if codec else f"any of the encoders {candidates}"
            raise VideoError(
                f"{self._container.format.name} output cannot use {which} with this PyAV build",
                source=self.target,
            )
        self.codec = codec
        self.pix_fmt = choose_pix_fmt(codec, self.width, self.height, pix_fmt)

        codec_options = {}
        if codec in CRF_ENCODERS:
            codec_options["crf"] = str(DEFAULT_CRF if crf is None else crf)
        elif crf is not None:
            raise VideoError(f"encoder {codec} has no CRF setting; leave crf unset", source=self.target)
        if codec == "libvpx-vp9" or codec == "libvpx":
            # Constant quality needs a zero target bitrate; speed 4 and row threading keep
            # VP9 from being far slower than x264 at similar quality.
            codec_options.update({"b": "0", "cpu-used": "4", "row-mt": "1"})
        if codec == "libx265":
            codec_options["x265-params"] = "log-level=error"

        stream.codec_context.options.update(codec_options)
        stream.width, stream.height, stream.pix_fmt = self.width, self.height, self.pix_fmt
        ctx = stream.codec_context
        ctx.time_base = 1 / self.fps
        stream.time_base = 1 / self.fps
        if codec in QSCALE_ENCODERS:
            ctx.qscale = True
            ctx.global_quality = DEFAULT_QSCALE * FF_QP2LAMBDA
        info = self.info
        self._color_tags = _output_color_tags(info, self.pix_fmt)
        for name, value in self._color_tags.items():
            setattr(ctx, name, value)
        if info.sample_aspect_ratio:
            ctx.sample_aspect_ratio = info.sample_aspect_ratio
        if info.rotation:
            stream.set_display_rotation(info.rotation)
        self._video_stream = stream
        # RGB -> YUV with the matrix and range the tags announce, so players decode the
        # colours we meant (unspecified tags use swscale's default, as the reader did).
        self._dst_colorspace = SWS_COLORSPACE_BY_TAG.get(self._color_tags["colorspace"])
        range_tag = self._color_tags["color_range"]
        self._dst_color_range = range_tag if range_tag in (LIMITED_RANGE, FULL_RANGE) else None

    def _open_image_sequence(self, codec, pix_fmt) -> None:
        target = self.target
        if PRINTF_PATTERN.search(os.path.basename(target)):
            pattern = target
        else:
            # ffmpeg numbers image sequences from 1; so do we.
            pattern = os.path.join(target, "%08d.png")
        directory = os.path.dirname(pattern) or "."
        os.makedirs(directory, exist_ok=True)
        ext = os.path.splitext(pattern)[1].lower()
        if ext not in IMAGE_ENCODERS:
            raise VideoError(f"image sequences can be written as {', '.join(IMAGE_ENCODERS)}, not {ext!r}", source=target)
        default_codec, default_pix_fmt = IMAGE_ENCODERS[ext]
        self.codec = codec or default_codec
        self.pix_fmt = pix_fmt or default_pix_fmt
        self.pattern = pattern
        try:
            # atomic_writing: each image appears complete under its name or not at all.
            self._container = av.open(
                pattern, "w", format="image2", container_options={"start_number": "1", "atomic_writing": "1"}
            )
            stream = self._container.add_stream(self.codec, rate=self.fps)
        except (av.FFmpegError, ValueError, OSError) as error:
            raise VideoError(f"cannot write images to {pattern}: {error}", source=target) from error
        stream.width, stream.height, stream.pix_fmt = self.width, self.height, self.pix_fmt
        stream.codec_context.time_base = 1 / self.fps
        if self.codec in QSCALE_ENCODERS:
            stream.codec_context.qscale = True
            stream.codec_context.global_quality = DEFAULT_QSCALE * FF_QP2LAMBDA
        self._video_stream = stream
        self._color_tags = None  # image files: the encoder's own conventions (sRGB, JFIF)
        self._dst_colorspace = None
        self._dst_color_range = None

    def _add_audio(self, reader: VideoReader) -> None:
        template = reader.audio_stream
        try:
            self._audio_stream = self._container.add_stream_from_template(template)
        except ValueError as error:
            name = template.codec_context.name
            raise VideoError(
                f"{self._container.format.name} cannot hold the input's {name} audio without re-encoding "
                f"({error}); write to .mkv (holds any audio) or .mp4/.mov instead",
                source=self.target,
            ) from error
        self._audio = reader.share_audio()
        # Shift audio like the video: the output video starts at 0, the input's first
        # frame was at info.start_time.
        self._audio_shift = self.info.start_time

    # -- writing ------------------------------------------------------------------------

    def write(self, frames: np.ndarray) -> None:
        """Encode frames, uint8 [t, H, W, 3] RGB (or one frame [H, W, 3])."""
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != (self.height, self.width, 3):
            raise VideoError(
                f"write() takes uint8 frames [t, {self.height}, {self.width}, 3], got {frames.dtype} {list(frames.shape)}",
                source=self.target,
            )
        with self._lock:
            if self.state != "open":
                raise VideoError(f"{self.target}: writer is already {self.state}", source=self.target)
            try:
                if self._pipe is not None:
                    self._pipe.write(np.ascontiguousarray(frames).data)
                    self.frames_written += len(frames)
                    return
                for image in frames:
                    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
                    frame = self._reformatter.reformat(
                        frame,
                        format=self.pix_fmt,
                        dst_colorspace=self._dst_colorspace,
                        dst_color_range=self._dst_color_range,
                    )
                    for name, value in (self._color_tags or {}).items():
                        setattr(frame, name, value)
                    frame.pts = self.frames_written
                    frame.time_base = 1 / self.fps
                    self._container.mux(self._video_stream.encode(frame))
                    self.frames_written += 1
                self._mux_audio(until=self.frames_written / self.fps)
            except (av.FFmpegError, OSError, ValueError) as error:
                raise VideoError(
                    f"{self.target}: writing failed at frame {self.frames_written}: {error}",
                    source=self.target,
                    frame_index=self.frames_written,
                ) from error

    def _mux_audio(self, until: Fraction | None) -> None:
        if self._audio is None:
            return
        for packet in self._audio.take(until, shift=self._audio_shift):
            shift_ticks = round(self._audio_shift / packet.time_base)
            if packet.pts is not None:
                packet.pts -= shift_ticks
            if packet.dts is not None:
                packet.dts -= shift_ticks
            packet.stream = self._audio_stream  # mux() rescales to the output stream's time base
            self._container.mux(packet)

    def _finish_container(self, audio_until: Fraction | None) -> None:
        self._container.mux(self._video_stream.encode(None))
        self._mux_audio(until=audio_until)
        self._container.close()
        self._container = None

    def close(self) -> None:
        """Flush and finalise; file outputs are renamed onto the target name."""
        self._finish("closed")

    def abort(self) -> None:
        """Finalise what was written so far into a playable output (on Ctrl-C).

        Audio is cut where the video ends. Safe to call from another thread than the
        one writing: it waits for the chunk being encoded to finish, and later write()
        calls raise VideoError. With no frames written, nothing is left behind.
        """
        self._finish("aborted")

    def _finish(self, state: str) -> None:
        with self._lock:
            if self.state != "open":
                return
            self.state = state
            try:
                if self._pipe is not None:
                    self._pipe.flush()
                    return
                if self.frames_written == 0:
                    self._drop_container()
                    if state == "closed":
                        raise VideoError(f"{self.target}: no frames were written", source=self.target, frame_index=0)
                    return
                # close() copies all audio the reader demuxed (the input may have audio past
                # its last frame); abort() stops with the video.
                audio_until = None if state == "closed" else self.frames_written / self.fps
                self._finish_container(audio_until)
                if self._audio is not None:
                    self._audio.close()
                if self._partial_path is not None:
                    os.replace(self._partial_path, self.target)
            except (av.FFmpegError, OSError, ValueError) as error:
                self._drop_container()
                raise VideoError(f"{self.target}: finalising failed: {error}", source=self.target) from error
            except BaseException:
                self._drop_container()
                raise

    def discard(self) -> None:
        """Stop without producing a file: the partial output is deleted."""
        with self._lock:
            if self.state != "open":
                return
            self.state = "discarded"
            self._drop_container()

    def _drop_container(self) -> None:
        if self._audio is not None:
            self._audio.close()
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # closing a broken muxer may fail too; the file goes anyway
                pass
            self._container = None
        if self._partial_path is not None and os.path.exists(self._partial_path):
            os.remove(self._partial_path)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # An exception must not leave a half-written file under the target name.
        if exc_type is None:
            self.close()
        else:
            self.discard()
