"""VideoWriter: uint8 RGB chunks encoded to a file, image sequence, raw stdout or URL."""

from __future__ import annotations

import logging
import os
import sys
import threading
from fractions import Fraction

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from .info import (
    DEFAULT_QSCALE,
    FF_QP2LAMBDA,
    FULL_RANGE,
    IMAGE_ENCODERS,
    LIMITED_RANGE,
    QSCALE_ENCODERS,
    STREAM_FORMAT_BY_SCHEME,
    SWS_COLORSPACE_BY_TAG,
    VideoError,
    VideoInfo,
    classify,
)
from .audio import AudioPassthrough
from .encoders import (
    _encoder_exists,
    _encoder_options,
    _output_color_tags,
    _video_encoder_candidates,
    choose_pix_fmt,
    output_time_base,
)
from .reader import VideoReader
from .target import image_pattern, partial_path, remove_images_after, remove_stale_partials

log = logging.getLogger(__name__)

class VideoWriter:
    """Encodes uint8 RGB frames [t, H, W, 3] to a file, image sequence, stdout or URL.

    File outputs are written to ".<name>.partial-<pid><ext>" beside the target and renamed
    onto the target by close() (or abort()), so the target name only ever holds a
    finished, playable file. discard() (and leaving a `with` block by an exception)
    removes the partial file instead (see target.py, which also says what a caller
    should refuse to overwrite).

    Video: every frame at its input frame's presentation time (write(frames, times)),
    or at frame index / info.fps when no times are given; frames on the 1/fps grid stay
    exactly on it, so a constant-rate input gives a constant-rate output at its exact
    rational rate. Colour tags, sample aspect ratio and rotation copied from info. Default
    encoder libx264 (VP9 for .webm) at CRF 18, yuv420p, or yuv444p for odd sizes
    (see choose_pix_fmt).
    Audio: with audio_from=reader, the reader's first audio stream is copied packet for
    packet (no re-encoding), shifted by the same amount as the video so sync is kept.
    Image sequences and raw stdout carry no audio and no timing: `notes` says so.

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
        self.notes: list[str] = []  # what the output cannot carry over from the input, for the user
        self._last_tick: int | None = None
        self._end_time = Fraction(0)  # seconds: where the video written so far ends
        self._warned_timing = False
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
        self.kind = classify(self.target, writing=True, container_format=container_format)
        if audio_from is not None and audio_from.audio_stream is not None and self.kind in ("pipe", "images"):
            what = "raw RGB24 output" if self.kind == "pipe" else "an image sequence"
            self.notes.append(f"the input's audio is not written: {what} cannot hold it")
        if self.kind == "images" and not os.path.splitext(self.target)[1] and not os.path.isdir(self.target):
            self.notes.append(f"{self.target} has no extension, so it is written as an image sequence "
                              f"{image_pattern(self.target)} (name it like out.mp4 for a video file)")
        if self.kind == "pipe":
            self.codec, self.pix_fmt = "rawvideo", "rgb24"
            self._pipe = sys.stdout.buffer
            self._time_base = 1 / self.fps
            return

        try:
            self._open_container(codec, crf, pix_fmt, container_format, options)
            if audio_from is not None and audio_from.audio_stream is not None and self.kind in ("file", "url"):
                self._add_audio(audio_from)
        except BaseException:
            self._drop_container()
            raise

    # -- opening ------------------------------------------------------------------------

    def _open_container(self, codec, crf, pix_fmt, container_format, options) -> None:
        if self.kind == "images":
            self._open_image_sequence(codec, pix_fmt)
            return
        self._container = self._open_muxer(container_format, options)
        stream = self._add_video_stream(codec)
        self.pix_fmt = choose_pix_fmt(self.codec, self.width, self.height, pix_fmt)
        stream.codec_context.options.update(_encoder_options(self.codec, crf, self.target))
        self._time_base = output_time_base(self.fps, self.info.time_base, self.codec)
        self._setup_video_stream(stream, _output_color_tags(self.info, self.pix_fmt))
        stream.time_base = self._time_base
        if self.info.sample_aspect_ratio:
            stream.codec_context.sample_aspect_ratio = self.info.sample_aspect_ratio
        if self.info.rotation:
            stream.set_display_rotation(self.info.rotation)

    def _open_muxer(self, container_format, options):
        """A URL is opened as it is; a file under its temporary name beside the target."""
        if self.kind == "url":
            scheme = self.target.split(":", 1)[0].lower()
            fmt = container_format or STREAM_FORMAT_BY_SCHEME.get(scheme)
            path = self.target
        else:
            directory = os.path.dirname(os.path.abspath(self.target))
            if not os.path.isdir(directory):
                raise VideoError(f"output directory does not exist: {directory}", source=self.target)
            remove_stale_partials(self.target)
            self._partial_path = partial_path(self.target)
            fmt, path = container_format, self._partial_path
        try:
            return av.open(path, "w", format=fmt, container_options=dict(options or {}))
        except (av.FFmpegError, ValueError, OSError) as error:
            hint = " (name the container with --format, e.g. --format mp4)" if fmt is None else ""
            raise VideoError(f"cannot open {self.target} for writing: {error}{hint}", source=self.target) from error

    def _add_video_stream(self, codec):
        # The muxer is the authority on what it can hold: PyAV's add_stream asks it, and
        # (unlike supported_codecs) accepts codecs it has no opinion on, like H.264 in MPEG-TS.
        candidates = [codec] if codec else _video_encoder_candidates(self._container.format.name)
        for name in candidates:
            if not _encoder_exists(name):
                continue
            try:
                stream = self._container.add_stream(name, rate=self.fps)
            except ValueError:
                continue
            self.codec = name
            return stream
        which = f"encoder {codec!r}" if codec else f"any of the encoders {candidates}"
        raise VideoError(
            f"{self._container.format.name} output cannot use {which} with this PyAV build", source=self.target
        )

    def _setup_video_stream(self, stream, color_tags: dict[str, int] | None) -> None:
        """Size, rate, fixed quantiser and colour tags: the same for videos and image sequences."""
        stream.width, stream.height, stream.pix_fmt = self.width, self.height, self.pix_fmt
        ctx = stream.codec_context
        ctx.time_base = self._time_base
        ctx.framerate = self.fps
        if self.codec in QSCALE_ENCODERS:
            ctx.qscale = True
            ctx.global_quality = DEFAULT_QSCALE * FF_QP2LAMBDA
        self._video_stream = stream
        self._color_tags = color_tags
        for name, value in (color_tags or {}).items():
            setattr(ctx, name, value)
        # RGB -> YUV with the matrix and range the tags announce, so players decode the
        # colours we meant (unspecified tags use swscale's default, as the reader did).
        tags = color_tags or {}
        self._dst_colorspace = SWS_COLORSPACE_BY_TAG.get(tags.get("colorspace"))
        range_tag = tags.get("color_range")
        self._dst_color_range = range_tag if range_tag in (LIMITED_RANGE, FULL_RANGE) else None

    def _open_image_sequence(self, codec, pix_fmt) -> None:
        target = self.target
        pattern = image_pattern(target)
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
        # Image files follow the encoder's own colour conventions (sRGB, JFIF): no tags.
        self._time_base = 1 / self.fps
        self._setup_video_stream(stream, None)

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
        self._audio_jump = 0  # ticks added after the audio clock jumped back
        self._audio_last_dts: int | None = None
        self._audio_end: int | None = None  # where the last packet muxed ends, in its ticks

    # -- writing ------------------------------------------------------------------------

    def write(self, frames: np.ndarray, times=None) -> None:
        """Encode frames, uint8 [t, H, W, 3] RGB (or one frame [H, W, 3]). `times`: each frame's
        presentation time in seconds from the start (VideoReader.read_timed gives them); default
        frame index / fps."""
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if times is None:
            times = [Fraction(self.frames_written + i) / self.fps for i in range(len(frames))]
        elif len(times) != len(frames):
            raise ValueError(f"write() got {len(frames)} frames but {len(times)} times")
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != (self.height, self.width, 3):
            raise VideoError(
                f"write() takes uint8 frames [t, {self.height}, {self.width}, 3], got {frames.dtype} {list(frames.shape)}",
                source=self.target,
            )
        with self._lock:
            if self.state != "open":
                raise VideoError(f"{self.target}: writer is already {self.state}", source=self.target)
            try:
                ticks = [self._tick(t) for t in times]
                if self._pipe is not None:
                    self._pipe.write(np.ascontiguousarray(frames).data)
                    self.frames_written += len(frames)
                    return
                for image, tick in zip(frames, ticks):
                    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
                    frame = self._reformatter.reformat(
                        frame,
                        format=self.pix_fmt,
                        dst_colorspace=self._dst_colorspace,
                        dst_color_range=self._dst_color_range,
                    )
                    for name, value in (self._color_tags or {}).items():
                        setattr(frame, name, value)
                    frame.pts = tick
                    frame.time_base = self._time_base
                    self._container.mux(self._video_stream.encode(frame))
                    self.frames_written += 1
                self._mux_audio(until=self._end_time)
            except (av.FFmpegError, OSError, ValueError) as error:
                raise VideoError(
                    f"{self.target}: writing failed at frame {self.frames_written}: {error}",
                    source=self.target,
                    frame_index=self.frames_written,
                ) from error

    def _tick(self, time: Fraction) -> int:
        """A frame's pts in the output time base. Times within half an input tick of the 1/fps grid
        are put on it (container time bases round them: 1/1000 in Matroska); ticks only go up.
        Image sequences and raw frames have no times: frame n is simply shown n/fps in."""
        time = Fraction(time)
        on_grid = round(time * self.fps) / self.fps
        if abs(time - on_grid) <= Fraction(self.info.time_base) / 2:
            time = on_grid
        if self.kind in ("pipe", "images"):
            tick = 0 if self._last_tick is None else self._last_tick + 1
        else:
            tick = round(time / self._time_base)
            if self._last_tick is not None and tick <= self._last_tick:
                tick = self._last_tick + 1
        if tick * self._time_base != time and not self._warned_timing:
            self._warned_timing = True
            held = "holds one frame every 1/fps" if self.kind in ("pipe", "images") else f"has {self._time_base} s ticks"
            log.warning("the input's frame times vary (variable frame rate), but %s %s: from frame %d on, frames "
                        "are not at their input times (first moved by %.3f s)", self.target, held,
                        tick, float(abs(tick * self._time_base - time)))
        self._last_tick = tick
        self._end_time = tick * self._time_base + 1 / self.fps
        return tick

    def _mux_audio(self, until: Fraction | None) -> None:
        if self._audio is None:
            return
        for packet in self._audio.take(until, shift=self._audio_shift):
            shift_ticks = round(self._audio_shift / packet.time_base) - self._audio_jump
            dts = packet.dts if packet.dts is not None else packet.pts
            if dts is not None and self._audio_end is not None and dts - shift_ticks <= self._audio_last_dts:
                # The audio clock jumped back (MPEG-TS files joined with cat), as the reader found for
                # the video: continue right after the last packet, as it continues the video.
                jump = self._audio_end - (dts - shift_ticks)
                self._audio_jump += jump
                shift_ticks -= jump
            if packet.pts is not None:
                packet.pts -= shift_ticks
            if packet.dts is not None:
                packet.dts -= shift_ticks
            if dts is not None:
                self._audio_last_dts = dts - shift_ticks
                self._audio_end = self._audio_last_dts + (packet.duration or 1)
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
                audio_until = None if state == "closed" else self._end_time
                self._finish_container(audio_until)
                if self._audio is not None:
                    self._audio.close()
                if self._partial_path is not None:
                    os.replace(self._partial_path, self.target)
                if self.kind == "images":
                    remove_images_after(self.pattern, self.frames_written)
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
