"""Tests for video/: readers and writers for files, image sequences, pipes, URLs.

Clips are made here with PyAV directly (not with the module under test), so a bug that
the reader and writer share cannot hide itself.
"""

import http.server
import io
import os
import queue
import socket
import subprocess
import sys
import threading
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from video import (
    VideoError,
    VideoInfo,
    VideoReader,
    VideoWriter,
    choose_pix_fmt,
    parse_rate,
    parse_size,
    probe,
)

REPO = Path(__file__).resolve().parents[1]
NTSC = Fraction(30000, 1001)
BT709 = 1
LIMITED = 1


def gradient_frames(count, width, height):
    """Smooth moving gradients (compress well, so a lossy round trip stays close)."""
    x = np.arange(width)[None, :] / width
    y = np.arange(height)[:, None] / height
    frames = np.empty((count, height, width, 3), np.uint8)
    for i in range(count):
        frames[i, ..., 0] = 128 + 100 * np.sin(2 * np.pi * (x + i / 30))
        frames[i, ..., 1] = 30 + 190 * y
        frames[i, ..., 2] = 128 + 60 * np.cos(2 * np.pi * (y + x + i / 20))
    return frames


def make_clip(path, frames, *, rate=NTSC, audio="aac", video_codec="libx264", pix_fmt=None, rotation=0,
              encoder_options=None, container_options=None, start_frames=0):
    """Encode RGB frames (bt709, limited range) plus a sine audio track with PyAV."""
    count, height, width = frames.shape[:3]
    with av.open(str(path), "w", container_options=container_options or {}) as container:
        video = container.add_stream(video_codec, rate=rate, options=encoder_options or {})
        video.width, video.height = width, height
        video.pix_fmt = pix_fmt or ("yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p")
        ctx = video.codec_context
        ctx.color_primaries, ctx.color_trc, ctx.colorspace, ctx.color_range = BT709, BT709, BT709, LIMITED
        if rotation:
            video.set_display_rotation(rotation)
        sound = None
        if audio:
            sound = container.add_stream(audio, rate=48000)
            sound.layout = "mono"
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(
                format=video.pix_fmt, dst_colorspace=BT709, dst_color_range=LIMITED
            )
            frame.pts = start_frames + i
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if sound is not None:
            step = sound.codec_context.frame_size or 960
            total = int(48000 * count / rate) + step
            first_sample = int(48000 * start_frames / rate)
            for start in range(0, total, step):
                t = np.arange(start, start + step) / 48000
                samples = (0.4 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
                chunk = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
                chunk.sample_rate, chunk.pts = 48000, first_sample + start
                container.mux(sound.encode(chunk))
            container.mux(sound.encode(None))
    return frames


def decode_all(path):
    """All frames of a file as RGB, with PyAV directly."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def audio_packets(path):
    """(payload bytes, presentation time in seconds) of every audio packet."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        return [(bytes(p), p.pts * p.time_base) for p in container.demux(stream) if p.size]


def first_video_time(path):
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        return frame.pts * frame.time_base


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 99.0 if mse == 0 else 10 * np.log10(255**2 / mse)


def copy_through(reader, target, **writer_options):
    """What the runtime does, minus the model: read chunks, write them back."""
    writer = VideoWriter(target, reader.info, width=reader.info.width, height=reader.info.height, **writer_options)
    for chunk in reader.chunks(7):
        writer.write(chunk)
    writer.close()
    return writer


def leftovers(directory):
    return sorted(p.name for p in Path(directory).iterdir() if ".partial" in p.name)


# -- helpers ------------------------------------------------------------------------------


def test_parse_size():
    assert parse_size("1920x1080") == (1920, 1080)
    assert parse_size(" 37X29 ") == (37, 29)
    for bad in ("1920", "0x10", "axb", "12x"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_parse_rate_keeps_exact_rationals():
    assert parse_rate("30000/1001") == NTSC
    assert parse_rate("29.97") == NTSC
    assert parse_rate("23.976") == Fraction(24000, 1001)
    assert parse_rate(25) == 25
    assert parse_rate("12.5") == Fraction(25, 2)
    assert parse_rate(NTSC) == NTSC
    with pytest.raises(ValueError):
        parse_rate("0")


def test_choose_pix_fmt_keeps_every_pixel_of_odd_sizes():
    assert choose_pix_fmt("libx264", 64, 48) == "yuv420p"
    assert choose_pix_fmt("libx264", 37, 29) == "yuv444p"
    with pytest.raises(VideoError, match="even"):
        choose_pix_fmt("libx264", 37, 29, "yuv420p")


# -- files: round trips -------------------------------------------------------------------


@pytest.mark.parametrize("ext", ["mp4", "mkv"])
def test_round_trip_keeps_frames_rate_colour_and_audio(tmp_path, ext):
    source = tmp_path / f"in.{ext}"
    original = make_clip(source, gradient_frames(30, 64, 48))
    target = tmp_path / f"out.{ext}"

    with VideoReader(source) as reader:
        info = reader.info
        assert (info.width, info.height, info.fps) == (64, 48, NTSC)
        assert info.frame_count == 30 and info.has_audio
        assert (info.color_primaries, info.color_trc, info.colorspace, info.color_range) == (1, 1, 1, 1)
        copy_through(reader, target, audio_from=reader)

    out = probe(target)
    assert out.fps == NTSC  # exactly, not 29.97
    assert (out.color_primaries, out.color_trc, out.colorspace, out.color_range) == (1, 1, 1, 1)
    decoded = decode_all(target)
    assert len(decoded) == 30
    assert psnr(decoded, original) > 30

    # Audio copied packet for packet, with the same timing relative to the video.
    source_audio, copied_audio = audio_packets(source), audio_packets(target)
    assert len(copied_audio) == len(source_audio) > 0
    assert [p for p, _ in copied_audio] == [p for p, _ in source_audio]
    offset_in = source_audio[0][1] - first_video_time(source)
    offset_out = copied_audio[0][1] - first_video_time(target)
    assert abs(offset_in - offset_out) < Fraction(1, 1000)
    assert leftovers(tmp_path) == []


def test_late_start_is_moved_to_zero_with_audio_in_sync(tmp_path):
    source = tmp_path / "late.mkv"
    make_clip(source, gradient_frames(10, 64, 48), start_frames=45)  # starts at 1.5 s
    with VideoReader(source) as reader:
        assert abs(reader.info.start_time - Fraction(45) / NTSC) <= Fraction(1, 1000)  # Matroska stores ms
        copy_through(reader, tmp_path / "out.mp4", audio_from=reader)
    assert first_video_time(tmp_path / "out.mp4") == 0
    offset_in = audio_packets(source)[0][1] - first_video_time(source)
    offset_out = audio_packets(tmp_path / "out.mp4")[0][1] - first_video_time(tmp_path / "out.mp4")
    assert abs(offset_in - offset_out) < Fraction(2, 1000)


def test_mkv_to_mp4_remuxes_audio_and_keeps_rate(tmp_path):
    source = tmp_path / "in.mkv"
    make_clip(source, gradient_frames(7, 64, 48))
    with VideoReader(source) as reader:
        assert reader.info.frame_count == 7  # estimated from the Matroska duration tag
        copy_through(reader, tmp_path / "out.mp4", audio_from=reader)
    assert probe(tmp_path / "out.mp4").fps == NTSC
    assert [p for p, _ in audio_packets(tmp_path / "out.mp4")] == [p for p, _ in audio_packets(source)]


def test_odd_size_round_trip_uses_444_and_keeps_every_pixel(tmp_path):
    source = tmp_path / "odd.mp4"
    original = make_clip(source, gradient_frames(7, 37, 29), audio=None)
    with VideoReader(source) as reader:
        assert (reader.info.width, reader.info.height) == (37, 29)
        assert [len(c) for c in reader.chunks(3)] == [3, 3, 1]
    with VideoReader(source) as reader:
        writer = copy_through(reader, tmp_path / "out.mp4")
    assert writer.pix_fmt == "yuv444p"
    with av.open(str(tmp_path / "out.mp4")) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height, stream.codec_context.pix_fmt) == (37, 29, "yuv444p")
    decoded = decode_all(tmp_path / "out.mp4")
    assert decoded.shape == (7, 29, 37, 3)
    assert psnr(decoded, original) > 30


def test_single_frame_clip(tmp_path):
    source = tmp_path / "one.mkv"
    make_clip(source, gradient_frames(1, 64, 48))
    with VideoReader(source) as reader:
        first = reader.read(24)
        assert first.shape == (1, 48, 64, 3) and first.dtype == np.uint8
        assert reader.read(24).shape == (0, 48, 64, 3)
    with VideoReader(source) as reader:
        copy_through(reader, tmp_path / "out.mp4", audio_from=reader)
    assert len(decode_all(tmp_path / "out.mp4")) == 1


def test_upscaled_output_and_colours_survive_the_bt709_matrix(tmp_path):
    # Saturated bars: converting with the wrong matrix (BT.601 instead of the tagged
    # BT.709) shifts these by 20+ levels.
    bars = np.zeros((5, 48, 64, 3), np.uint8)
    bars[:, :, :16] = (230, 20, 20)
    bars[:, :, 16:32] = (20, 230, 20)
    bars[:, :, 32:48] = (20, 20, 230)
    bars[:, :, 48:] = (200, 150, 50)
    info = VideoInfo(width=64, height=48, fps=NTSC, frame_count=5, time_base=1 / NTSC, source="bars",
                     color_primaries=1, color_trc=1, colorspace=1, color_range=1)
    with VideoWriter(tmp_path / "bars.mp4", info, width=128, height=96, crf=0) as writer:
        writer.write(bars.repeat(2, axis=1).repeat(2, axis=2))
    decoded = decode_all(tmp_path / "bars.mp4")  # PyAV converts with the file's own tags
    assert decoded.shape == (5, 96, 128, 3)
    centres = decoded[:, 48, [16, 48, 80, 112]].astype(int)
    expected = bars[:, 24, [8, 24, 40, 56]].astype(int)
    assert np.abs(centres - expected).max() <= 4


@pytest.mark.parametrize("ext, encoder", [("mp4", "libx264"), ("webm", "libvpx-vp9")])
def test_default_encoder_and_crf_reach_the_encoder(tmp_path, ext, encoder):
    info = VideoInfo(width=64, height=48, fps=Fraction(30), frame_count=None, time_base=Fraction(1, 30), source="noise")
    sizes = {}
    for crf in (0, 45):
        with VideoWriter(tmp_path / f"crf{crf}.{ext}", info, width=64, height=48, crf=crf) as writer:
            writer.write(noisy_frames(4))
        assert writer.codec == encoder
        sizes[crf] = (tmp_path / f"crf{crf}.{ext}").stat().st_size
    assert sizes[45] * 3 < sizes[0]


def test_rotation_is_carried_over(tmp_path):
    source = tmp_path / "rotated.mp4"
    make_clip(source, gradient_frames(3, 64, 48), audio=None, rotation=90)
    with VideoReader(source) as reader:
        assert reader.info.rotation == 90
        copy_through(reader, tmp_path / "out.mkv")
    assert probe(tmp_path / "out.mkv").rotation == 90


def test_webm_gets_vp9_and_copies_opus(tmp_path):
    source = tmp_path / "in.webm"
    make_clip(source, gradient_frames(5, 64, 48), audio="libopus", video_codec="libvpx-vp9")
    with VideoReader(source) as reader:
        writer = copy_through(reader, tmp_path / "out.webm", audio_from=reader)
    assert writer.codec == "libvpx-vp9"
    out = probe(tmp_path / "out.webm")
    assert (out.codec, out.fps) == ("vp9", NTSC)
    assert [p for p, _ in audio_packets(tmp_path / "out.webm")] == [p for p, _ in audio_packets(source)]


def test_audio_that_cannot_go_into_the_container_is_a_clear_error(tmp_path):
    source = tmp_path / "in.mp4"
    make_clip(source, gradient_frames(3, 64, 48))  # AAC: WebM only takes Opus/Vorbis
    with VideoReader(source) as reader:
        with pytest.raises(VideoError, match=r"aac.*\.mkv"):
            VideoWriter(tmp_path / "out.webm", reader.info, width=64, height=48, audio_from=reader)
    assert list(tmp_path.iterdir()) == [source]


def test_audio_must_be_claimed_before_reading(tmp_path):
    source = tmp_path / "in.mp4"
    make_clip(source, gradient_frames(3, 64, 48))
    with VideoReader(source) as reader:
        reader.read(1)
        with pytest.raises(VideoError, match="before reading"):
            reader.share_audio()


def test_reader_and_writer_in_threads_like_the_runtime(tmp_path):
    source = tmp_path / "in.mkv"
    original = make_clip(source, gradient_frames(30, 64, 48))
    target = tmp_path / "out.mp4"
    chunks = queue.Queue(maxsize=2)
    errors = []

    with VideoReader(source) as reader:
        writer = VideoWriter(target, reader.info, width=128, height=96, audio_from=reader)

        def read_all():
            for chunk in reader.chunks(4):
                chunks.put(chunk)
            chunks.put(None)

        def write_all():
            try:
                while (chunk := chunks.get()) is not None:
                    writer.write(chunk.repeat(2, axis=1).repeat(2, axis=2))
                writer.close()
            except Exception as error:  # surfaced below
                errors.append(error)

        threads = [threading.Thread(target=read_all), threading.Thread(target=write_all)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert errors == []
    decoded = decode_all(target)
    assert len(decoded) == 30
    assert psnr(decoded[:, ::2, ::2], original) > 30
    assert [p for p, _ in audio_packets(target)] == [p for p, _ in audio_packets(source)]


# -- one reader per kind of source ------------------------------------------------------------


def test_video_reader_opens_the_reader_of_the_sources_kind(tmp_path):
    from video.reader import ContainerReader, ImageSequenceReader, RawPipeReader
    make_clip(tmp_path / "in.mkv", gradient_frames(3, 32, 24), audio=None, video_codec="ffv1")
    av.VideoFrame.from_ndarray(gradient_frames(1, 32, 24)[0], format="rgb24").save(str(tmp_path / "0.png"))
    for source, kind, options in [(tmp_path / "in.mkv", ContainerReader, {}), (tmp_path, ImageSequenceReader, {}),
                                  (tmp_path / "%d.png", ImageSequenceReader, {}),
                                  ("-", RawPipeReader, {"raw_size": "32x24", "raw_fps": 25})]:
        with VideoReader(source, **options) as reader:
            assert type(reader) is kind and isinstance(reader, VideoReader), source
            assert (reader.info.width, reader.info.height) == (32, 24)


# -- image sequences ------------------------------------------------------------------------


def test_image_sequence_directory_in_numeric_order_and_png_out(tmp_path):
    frames = gradient_frames(12, 37, 29)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, image in enumerate(frames):  # 1.png ... 12.png: "10" must come after "9"
        av.VideoFrame.from_ndarray(image, format="rgb24").save(str(folder / f"{i + 1}.png"))
    (folder / "notes.txt").write_text("not a frame")

    with VideoReader(folder, raw_fps="24000/1001") as reader:
        assert reader.info.frame_count == 12 and reader.info.fps == Fraction(24000, 1001)
        read = np.concatenate(list(reader.chunks(5)))
    np.testing.assert_array_equal(read, frames)  # PNG is lossless

    with VideoReader(folder) as reader:
        writer = copy_through(reader, tmp_path / "restored")
    assert writer.kind == "images"
    written = sorted((tmp_path / "restored").iterdir())
    assert [p.name for p in written] == [f"{i:08d}.png" for i in range(1, 13)]
    np.testing.assert_array_equal(np.stack([decode_all(p)[0] for p in written]), frames)


def test_image_sequence_pattern_in_and_out(tmp_path):
    frames = gradient_frames(4, 64, 48)
    for i, image in enumerate(frames):
        av.VideoFrame.from_ndarray(image, format="rgb24").save(str(tmp_path / f"f{i:05d}.png"))
    (tmp_path / "f7.png").write_bytes(b"wrong padding: not part of the %05d sequence")

    with VideoReader(tmp_path / "f%05d.png") as reader:
        assert reader.info.frame_count == 4
        np.testing.assert_array_equal(reader.read(10), frames)
    with VideoReader(tmp_path / "f%05d.png") as reader:
        copy_through(reader, tmp_path / "out" / "img_%03d.jpg")
    jpegs = sorted((tmp_path / "out").iterdir())
    assert [p.name for p in jpegs] == ["img_001.jpg", "img_002.jpg", "img_003.jpg", "img_004.jpg"]
    assert psnr(np.stack([decode_all(p)[0] for p in jpegs]), frames) > 30


def test_unreadable_image_in_a_sequence_names_the_file(tmp_path):
    frames = gradient_frames(3, 64, 48)
    for i, image in enumerate(frames):
        av.VideoFrame.from_ndarray(image, format="rgb24").save(str(tmp_path / f"{i}.png"))
    (tmp_path / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with VideoReader(tmp_path) as reader:
        assert len(reader.read(3)) == 3
        with pytest.raises(VideoError, match=r"3\.png") as caught:
            reader.read(3)
    assert caught.value.frame_index == 3


# -- raw pipes -------------------------------------------------------------------------------

PIPE_SCRIPT = """
import sys
from video import VideoReader, VideoWriter
with VideoReader("-", raw_size="37x29", raw_fps="30000/1001") as reader:
    assert reader.info.fps.denominator == 1001
    writer = VideoWriter("-", reader.info, width=37, height=29)
    try:
        for chunk in reader.chunks(3):
            writer.write(chunk[..., ::-1])  # swap R and B, to prove frames went through us
    finally:
        writer.close()
"""


def run_pipe(data):
    return subprocess.run([sys.executable, "-c", PIPE_SCRIPT], input=data, capture_output=True, cwd=REPO, timeout=60)


def test_raw_rgb_stdin_to_stdout():
    frames = gradient_frames(7, 37, 29)
    result = run_pipe(frames.tobytes())
    assert result.returncode == 0, result.stderr.decode()
    np.testing.assert_array_equal(np.frombuffer(result.stdout, np.uint8).reshape(7, 29, 37, 3), frames[..., ::-1])


def test_truncated_stdin_keeps_complete_frames_then_fails():
    frames = gradient_frames(5, 37, 29)
    result = run_pipe(frames.tobytes() + frames[0].tobytes()[:1000])
    assert result.returncode != 0
    assert b"VideoError" in result.stderr and b"truncated frame 5" in result.stderr
    np.testing.assert_array_equal(np.frombuffer(result.stdout, np.uint8).reshape(5, 29, 37, 3), frames[..., ::-1])


def test_stdin_needs_size_and_rate():
    with pytest.raises(VideoError, match="--raw-size"):
        VideoReader("-")


# -- damaged inputs ----------------------------------------------------------------------------


def read_until_error(source):
    """Frames handed out before the VideoError, and the error."""
    got = []
    with VideoReader(source) as reader:
        with pytest.raises(VideoError) as caught:
            for chunk in reader.chunks(4):
                got.append(chunk)
    return (np.concatenate(got) if got else np.zeros((0,))), caught.value


def noisy_frames(count, width=64, height=48):
    # Noise barely compresses, so the frame data dominates the file and damage in the
    # middle hits frames rather than headers.
    return np.random.default_rng(0).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


def test_truncated_mkv_yields_what_decoded_then_raises(tmp_path):
    source = tmp_path / "clip.mkv"
    make_clip(source, noisy_frames(30), audio=None)
    clean = decode_all(source)
    data = source.read_bytes()
    damaged = tmp_path / "cut.mkv"
    damaged.write_bytes(data[: len(data) // 2])

    got, error = read_until_error(damaged)
    assert 5 <= len(got) < 30
    np.testing.assert_array_equal(got, clean[: len(got)])
    assert error.frame_index == len(got)
    assert "cut.mkv" in str(error) and f"after {len(got)} frames" in str(error)


def test_garbage_in_the_middle_of_an_mp4_raises_after_the_good_frames(tmp_path):
    source = tmp_path / "clip.mp4"
    make_clip(source, noisy_frames(30), audio=None)
    clean = decode_all(source)
    data = bytearray(source.read_bytes())
    middle, span = len(data) // 2, len(data) // 10
    data[middle - span : middle + span] = np.random.default_rng(1).integers(0, 256, 2 * span, dtype=np.uint8).tobytes()
    damaged = tmp_path / "garbled.mp4"
    damaged.write_bytes(bytes(data))

    got, error = read_until_error(damaged)
    assert 3 <= len(got) < 30
    np.testing.assert_array_equal(got, clean[: len(got)])
    assert error.frame_index == len(got) and "garbled.mp4" in str(error)


def test_cut_faststart_mp4_yields_every_complete_frame(tmp_path):
    # No B-frames: each complete packet decodes to one frame, in order. The decoder holds
    # a few frames (threading) when the damage shows up; those must come out too.
    source = tmp_path / "clip.mp4"
    make_clip(source, noisy_frames(30), audio=None, encoder_options={"bf": "0"},
              container_options={"movflags": "+faststart"})
    clean = decode_all(source)
    data = source.read_bytes()
    cut = int(len(data) * 0.6)
    with av.open(str(source)) as container:
        complete = sum(1 for p in container.demux(video=0) if p.size and p.pos + p.size <= cut)
    (tmp_path / "cut.mp4").write_bytes(data[:cut])

    got, error = read_until_error(tmp_path / "cut.mp4")
    assert 5 < complete < 30
    assert len(got) == complete == error.frame_index
    np.testing.assert_array_equal(got, clean[:complete])


def test_mp4_cut_in_half_cannot_be_opened(tmp_path):
    source = tmp_path / "clip.mp4"
    make_clip(source, noisy_frames(10), audio=None)
    (tmp_path / "half.mp4").write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    with pytest.raises(VideoError, match="half.mp4") as caught:
        VideoReader(tmp_path / "half.mp4")
    assert caught.value.frame_index == 0


def test_tolerant_mode_reads_through_damage(tmp_path):
    source = tmp_path / "clip.mkv"
    make_clip(source, noisy_frames(30), audio=None)
    data = source.read_bytes()
    (tmp_path / "cut.mkv").write_bytes(data[: len(data) // 2])
    with VideoReader(tmp_path / "cut.mkv", strict=False) as reader:
        assert 5 <= sum(len(c) for c in reader.chunks(8)) < 30  # no exception


# -- finishing outputs ---------------------------------------------------------------------------


def test_abort_leaves_a_playable_partial_file(tmp_path):
    source = tmp_path / "in.mp4"
    make_clip(source, gradient_frames(30, 64, 48))
    target = tmp_path / "out.mp4"
    with VideoReader(source) as reader:
        writer = VideoWriter(target, reader.info, width=64, height=48, audio_from=reader)
        writer.write(reader.read(10))
        assert not target.exists()  # still under the partial name
        assert leftovers(tmp_path) == [f".out.partial-{os.getpid()}.mp4"]
        writer.abort()
        writer.abort()  # idempotent
    assert len(decode_all(target)) == 10
    assert leftovers(tmp_path) == []
    # Audio stops with the video, and is what the input had up to there.
    copied = audio_packets(target)
    assert 0 < len(copied) < len(audio_packets(source))
    assert [p for p, _ in copied] == [p for p, _ in audio_packets(source)[: len(copied)]]
    assert copied[-1][1] < Fraction(10) / NTSC
    with pytest.raises(VideoError, match="aborted"):
        writer.write(np.zeros((1, 48, 64, 3), np.uint8))


def test_exception_before_close_leaves_no_file(tmp_path):
    info = VideoInfo(width=64, height=48, fps=NTSC, frame_count=None, time_base=1 / NTSC, source="test")
    target = tmp_path / "out.mkv"
    with pytest.raises(KeyError):
        with VideoWriter(target, info, width=64, height=48) as writer:
            writer.write(gradient_frames(5, 64, 48))
            raise KeyError("the model failed")
    assert list(tmp_path.iterdir()) == []

    # A failing write (wrong shape) is reported, and discard() cleans up too.
    writer = VideoWriter(target, info, width=64, height=48)
    writer.write(gradient_frames(2, 64, 48))
    with pytest.raises(VideoError, match=r"\[t, 48, 64, 3\]"):
        writer.write(gradient_frames(2, 32, 24))
    writer.discard()
    assert list(tmp_path.iterdir()) == []


def test_a_single_image_name_is_not_taken_for_a_video(tmp_path):
    info = VideoInfo(width=64, height=48, fps=NTSC, frame_count=None, time_base=1 / NTSC, source="test")
    with pytest.raises(VideoError, match="pattern"):
        VideoWriter(tmp_path / "frame.png", info, width=64, height=48)


def test_close_without_frames_is_an_error_and_leaves_no_file(tmp_path):
    info = VideoInfo(width=64, height=48, fps=NTSC, frame_count=None, time_base=1 / NTSC, source="test")
    writer = VideoWriter(tmp_path / "empty.mp4", info, width=64, height=48)
    with pytest.raises(VideoError, match="no frames"):
        writer.close()
    assert list(tmp_path.iterdir()) == []


# -- URLs (served on the loopback interface) -----------------------------------------------------


def test_reads_a_url(tmp_path):
    source = tmp_path / "clip.mkv"
    make_clip(source, gradient_frames(9, 64, 48))

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a, **k: Quiet(*a, directory=str(tmp_path), **k)
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with VideoReader(f"http://127.0.0.1:{server.server_address[1]}/clip.mkv") as reader:
            assert reader.kind == "url" and not reader.strict
            assert reader.info.fps == NTSC and reader.info.has_audio
            assert sum(len(c) for c in reader) == 9
    finally:
        server.shutdown()


def test_streams_mpegts_to_a_tcp_url(tmp_path):
    source = tmp_path / "in.mp4"
    make_clip(source, gradient_frames(10, 64, 48))
    listener = socket.create_server(("127.0.0.1", 0))
    received = bytearray()

    def receive():
        connection, _ = listener.accept()
        with connection:
            while data := connection.recv(65536):
                received.extend(data)

    thread = threading.Thread(target=receive, daemon=True)
    thread.start()
    with VideoReader(source) as reader:
        writer = copy_through(reader, f"tcp://127.0.0.1:{listener.getsockname()[1]}", audio_from=reader)
    thread.join(timeout=30)
    listener.close()
    assert writer.kind == "url"
    with av.open(io.BytesIO(bytes(received)), format="mpegts") as container:
        assert container.streams.audio  # the AAC track went along
        assert sum(1 for _ in container.decode(video=0)) == 10
