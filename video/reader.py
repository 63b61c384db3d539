"""VideoReader: a file, image sequence, raw stdin or URL decoded into uint8 RGB chunks.

`VideoReader(source, ...)` opens the reader for the kind of source (info.classify says which):

    RawPipeReader        "-": raw RGB24 frames on stdin, of the size and rate the caller gives
    ImageSequenceReader  a folder of images, or a pattern like frames/%05d.png
    ContainerReader      a video file or URL, demuxed and decoded by FFmpeg (its audio passed on)

Each kind only opens its source and yields (frame, stream time) pairs; VideoReader itself does
the reading every kind shares: chunks, presentation times, damage reported after the frames
decoded before it.
"""

from __future__ import annotations

import logging
import os
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter


from .info import (
    DEFAULT_CHUNK_FRAMES,
    DEFAULT_IMAGE_SEQUENCE_FPS,
    IMAGE_EXTENSIONS,
    UNSPECIFIED_COLORSPACE,
    UNSPECIFIED_PRIMARIES,
    UNSPECIFIED_RANGE,
    UNSPECIFIED_TRC,
    VideoError,
    VideoInfo,
    _expand_printf_pattern,
    _list_image_directory,
    _parse_duration_tag,
    _stream_rate,
    classify,
    parse_rate,
    parse_size,
)

from .audio import AudioPassthrough

log = logging.getLogger(__name__)

DAMAGE_ADVICE = "the input is corrupt or truncated (--conceal-errors decodes through damage and goes on)"

# Demuxers that turn text into pictures (ANSI art, subtitles burnt in): not video sources.
TEXT_DEMUXERS = {"tty"}



def _frame_time(frame) -> Fraction | None:
    if frame.pts is None or frame.time_base is None:
        return None
    return frame.pts * Fraction(frame.time_base)


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

    def __new__(cls, source: str | os.PathLike | None = None, **options):
        if cls is VideoReader:       # VideoReader(source) opens the reader for the source's kind
            kind = classify(str(source))
            cls = RawPipeReader if kind == "pipe" else ImageSequenceReader if kind == "images" else ContainerReader
        return super().__new__(cls)

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
        self.kind = classify(self.source)
        # A live stream with packet loss has to be decoded through its errors; a file with
        # errors is damaged, and the caller should know.
        self.strict = (self.kind != "url") if strict is None else strict
        self.frames_read = 0
        self.audio_stream = None
        self._started = False
        self._pending_error: VideoError | None = None
        self._peeked: list[tuple[np.ndarray, Fraction | None]] = []  # (image, stream time) decoded ahead
        self._frames = iter(())  # (image, stream time) after the peeked ones; set by _open
        self._start_time = Fraction(0)
        self._last_time: Fraction | None = None  # of the last frame handed out, from the start
        self._time_offset = Fraction(0)  # added after a timestamp jump back (concatenated streams)
        self._closed = False
        self.info = self._open(raw_size=raw_size, raw_fps=raw_fps, options=options)

    def _open(self, *, raw_size, raw_fps, options) -> VideoInfo:
        """Opens the source: its VideoInfo; sets self._frames (and self._peeked)."""
        raise NotImplementedError

    def _first_read(self) -> None:
        """Called once, before the first frame is handed out."""

    # -- public API ---------------------------------------------------------------------

    def share_audio(self) -> AudioPassthrough:
        """Hand the input's audio packets to a writer (called by VideoWriter(audio_from=...)).

        Must happen before the first read, or audio demuxed meanwhile would be lost.
        """
        raise VideoError(f"{self.source} has no audio stream to pass through", source=self.source)

    def read(self, n: int = DEFAULT_CHUNK_FRAMES) -> np.ndarray:
        """Up to n frames as uint8 [t, H, W, 3] RGB; t == 0 at the end."""
        return self.read_timed(n)[0]

    def read_timed(self, n: int = DEFAULT_CHUNK_FRAMES) -> tuple[np.ndarray, list[Fraction]]:
        """read(n), and each frame's presentation time in seconds from the first frame.

        Times come from the stream (so a variable frame rate is kept); frames without one, image
        sequences and raw stdin are spaced 1/fps. Times only go up: where a stream's clock jumps
        back (concatenated MPEG-TS files), the frames after it continue 1/fps after the last one.
        """
        if n < 1:
            raise ValueError(f"read(n) needs n >= 1, got {n}")
        if self._closed:
            raise VideoError(f"{self.source}: reader is closed", source=self.source)
        if not self._started:
            self._started = True
            self._first_read()
        if self._pending_error is not None:
            error, self._pending_error = self._pending_error, None
            raise error
        chunk = np.empty((n, self.info.height, self.info.width, 3), dtype=np.uint8)
        times = []
        while len(times) < n:
            try:
                image, stream_time = self._peeked.pop(0) if self._peeked else next(self._frames)
            except StopIteration:
                break
            except VideoError as error:
                if not times:
                    raise
                # Return what was decoded; the error comes with the next read.
                self._pending_error = error
                break
            chunk[len(times)] = image
            times.append(self._presentation_time(stream_time))
        self.frames_read += len(times)
        return chunk[: len(times)], times

    def _presentation_time(self, stream_time: Fraction | None) -> Fraction:
        step = 1 / self.info.fps
        if stream_time is None:
            time = Fraction(0) if self._last_time is None else self._last_time + step
        else:
            time = stream_time - self._start_time + self._time_offset
            if self._last_time is not None and time <= self._last_time:
                self._time_offset += self._last_time + step - time
                time = self._last_time + step
        self._last_time = time
        return time

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
        if hasattr(self._frames, "close"):
            self._frames.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RawPipeReader(VideoReader):
    """Raw RGB24 frames on stdin ("-"), of the size and rate the caller gives (raw_size, raw_fps)."""

    def _open(self, *, raw_size, raw_fps, options) -> VideoInfo:
        if raw_size is None or raw_fps is None:
            raise VideoError("reading raw RGB24 frames from stdin needs their size and rate (--raw-size WxH --raw-fps RATE)", source="-")
        width, height = parse_size(raw_size) if isinstance(raw_size, str) else (int(raw_size[0]), int(raw_size[1]))
        fps = parse_rate(raw_fps)
        if sys.stdin is None:
            raise VideoError("reading frames from stdin, but this process has no stdin", source="-")
        self._frames = self._read_frames(sys.stdin.buffer, width, height)
        return VideoInfo(
            width=width,
            height=height,
            fps=fps,
            frame_count=None,
            time_base=1 / fps,
            source="stdin",
            pix_fmt="rgb24",
        )

    def _read_frames(self, stream, width: int, height: int):
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
            yield np.frombuffer(buffer, dtype=np.uint8).reshape(height, width, 3), None


class ImageSequenceReader(VideoReader):
    """A folder of images (in natural order) or a pattern like frames/%05d.png, at raw_fps (default 25)."""

    def _open(self, *, raw_size, raw_fps, options) -> VideoInfo:
        self._reformatter = VideoReformatter()
        if os.path.isdir(self.source):
            files = _list_image_directory(Path(self.source))
        else:
            files = _expand_printf_pattern(self.source)
        if not files:
            raise VideoError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) found in {self.source}", source=self.source)
        fps = parse_rate(raw_fps) if raw_fps is not None else DEFAULT_IMAGE_SEQUENCE_FPS
        first = self._decode_image(files[0], 0)
        height, width = first.shape[:2]
        self._peeked = [(first, None)]
        self._frames = self._read_images(files[1:], width, height)
        return VideoInfo(
            width=width,
            height=height,
            fps=fps,
            frame_count=len(files),
            time_base=1 / fps,
            source=self.source,
            pix_fmt="rgb24",
            codec=files[0].suffix.lower().lstrip("."),
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

    def _read_images(self, files: list[Path], width: int, height: int):
        for offset, path in enumerate(files, start=1):
            image = self._decode_image(path, offset)
            if image.shape[:2] != (height, width):
                raise VideoError(
                    f"{path}: image is {image.shape[1]}x{image.shape[0]}, the sequence started at "
                    f"{width}x{height} (frame {offset})",
                    source=str(path),
                    frame_index=offset,
                )
            yield image, None


class ContainerReader(VideoReader):
    """A video file or URL: FFmpeg demuxes it, decodes its first video stream and collects its
    first audio stream's packets for a writer (share_audio)."""

    def _open(self, *, raw_size, raw_fps, options) -> VideoInfo:
        self._container = None
        self._audio: AudioPassthrough | None = None
        self._audio_shared = False
        self._reformatter = VideoReformatter()
        self._frame_size: tuple[int, int] | None = None
        self._warned_resize = False
        if self.kind == "file" and not self.source.startswith("file:") and not os.path.exists(self.source):
            raise VideoError(f"no such file: {self.source}", source=self.source, frame_index=0)
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
            if container.format.name in TEXT_DEMUXERS:
                # FFmpeg renders any text file as ANSI art; nobody means to restore that.
                raise VideoError(f"{self.source} is a text file, not a video", source=self.source, frame_index=0)
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
        info = self._container_info(video, fps)
        self._first_frame = None  # only needed for the tags; don't pin a decoder buffer
        return info

    def _container_info(self, video, fps: Fraction) -> VideoInfo:
        """The stream's facts, with the tags only the first decoded frame carries."""
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
        height, width = self._peeked[0][0].shape[:2]
        return VideoInfo(
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

    def _to_rgb(self, frame) -> np.ndarray:
        # Convert with the frame's own colour tags (swscale reads them). The size is fixed
        # by the first frame, so a mid-stream resolution change (adaptive live streams)
        # is scaled back instead of breaking the chunk shapes.
        if self._frame_size is None:
            self._frame_size = (frame.width, frame.height)
            self._first_frame = frame  # for the tags only frames carry (see _open)
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
        suspect = None  # a packet flagged corrupt, judged by what follows it
        try:
            for packet in self._container.demux(*streams):
                # packet.stream, not packet.stream_index: PyAV's end-of-stream flush
                # packets all carry stream_index 0.
                if packet.stream.index != video.index:
                    if packet.size and self._audio is not None:
                        self._audio.put(packet)
                    continue
                # The demuxer flags a packet corrupt both when the file ends inside it (truncation:
                # the decoder may not notice) and at a continuity break of a good stream (MPEG-TS
                # files joined with cat). Only a flagged packet that more video follows is decoded.
                if packet.is_corrupt and self.strict and packet.size:
                    if suspect is not None:
                        raise _Damage("corrupt packets")
                    suspect = packet
                    continue
                if suspect is not None and packet.size:
                    log.warning("%s: a packet near frame %d is flagged damaged but more video follows "
                                "(joined streams?); decoding on", self.source, decoded)
                    packet, suspect = [suspect, packet], None
                elif suspect is not None:
                    raise _Damage("corrupt or truncated packet")
                try:
                    frames = [f for p in (packet if isinstance(packet, list) else [packet]) for f in video.decode(p)]
                except av.FFmpegError as error:
                    if self.strict:
                        raise _Damage(str(error)) from error
                    log.warning("%s: skipping undecodable packet near frame %d: %s", self.source, decoded, error)
                    continue
                for frame in frames:
                    if frame.is_corrupt and self.strict:
                        raise _Damage("corrupt frame")
                    if frame.pts is not None and frame.time_base is not None:
                        last_end = frame.pts * frame.time_base + frame_duration
                    decoded += 1
                    yield self._to_rgb(frame), _frame_time(frame)
            if suspect is not None:
                raise _Damage("corrupt or truncated packet")
        except (av.FFmpegError, _Damage, OSError) as error:
            # Frames already inside the decoder (threading, reordering) were decoded
            # from good packets: hand them out before reporting the damage.
            try:
                for frame in video.decode(None):
                    if frame.is_corrupt:
                        break
                    decoded += 1
                    yield self._to_rgb(frame), _frame_time(frame)
            except av.FFmpegError:
                pass
            if self.strict:
                advice = DAMAGE_ADVICE
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
                    f"{float(self._declared_end):.3f}s; {DAMAGE_ADVICE}",
                    source=self.source,
                    frame_index=decoded,
                )

    def share_audio(self) -> AudioPassthrough:
        if self._audio is None:
            return super().share_audio()
        if self._started:
            raise VideoError("attach the writer's audio before reading frames, or audio is lost", source=self.source)
        if self._audio_shared:
            raise VideoError("the audio of this reader is already passed to another writer", source=self.source)
        self._audio_shared = True
        return self._audio

    def _first_read(self) -> None:
        if self._audio is not None and not self._audio_shared:
            # Nobody claimed the audio: stop collecting it.
            self._audio.close()

    def close(self) -> None:
        if not self._closed:
            super().close()
            if self._container is not None:
                self._container.close()


def probe(source: str | os.PathLike, **reader_options) -> VideoInfo:
    """VideoInfo of a source without keeping it open (decodes only the first frame)."""
    with VideoReader(source, **reader_options) as reader:
        return reader.info
