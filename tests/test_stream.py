"""python -m runtime.stream as a new user meets it: what it must never destroy, the timing it must
keep, how it ends on signals, the aspect ratio it writes, and the messages it prints.

Clips are made with PyAV directly; the model is test_runtime's tiny cpu bundle (17x16 -> 34x32).
"""
import os
import signal
import subprocess
import sys
import time
from fractions import Fraction

import av
import numpy as np
import pytest

from test_runtime import (PY, REPO, SIZE, cpu_bundle, make_clip, moving_frames, run_cli,  # noqa: F401 (fixture)
                          video_stream_facts)

from video import VideoError, VideoReader
from video.target import check_target


def hidden_files(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def frame_times(path):
    """Presentation times of the video frames, in seconds from the first."""
    with av.open(str(path)) as container:
        times = [f.pts * f.time_base for f in container.decode(video=0)]
    return [t - times[0] for t in times]


def audio_span(path):
    """(start, end) of the audio in seconds, from its packets' timestamps."""
    with av.open(str(path)) as container:
        packets = [p for p in container.demux(audio=0) if p.size]
    return packets[0].pts * packets[0].time_base, (packets[-1].pts + packets[-1].duration) * packets[-1].time_base


def first_video_pts(path):
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        return frame.pts * frame.time_base


def make_ts(path, count, seed=0, audio=False):
    """An H.264 MPEG-TS clip of the bundle's size at 25 fps, with silent AAC audio if asked."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = *SIZE, "yuv444p"
        sound = container.add_stream("aac", rate=48000, layout="mono") if audio else None
        for i, image in enumerate(moving_frames(count, *SIZE, seed=seed)):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if audio:
            for start in range(0, 48000 * count // 25, 1024):
                chunk = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
                chunk.sample_rate, chunk.pts = 48000, start
                container.mux(sound.encode(chunk))
            container.mux(sound.encode(None))


# ---- 1. the output must not destroy the input or an existing file -----------------------------

def test_output_that_is_the_input_is_refused_and_the_input_kept(cpu_bundle, tmp_path):
    clip = tmp_path / "x.ts"
    make_ts(clip, 16)
    before = clip.read_bytes()
    done = run_cli("--engine", cpu_bundle, clip, "-o", clip, "-y")        # even with -y
    assert done.returncode == 1 and b"is the input" in done.stderr, done.stderr.decode()
    assert clip.read_bytes() == before
    os.link(clip, tmp_path / "hard.ts")
    os.symlink(clip, tmp_path / "soft.ts")
    for other in ("hard.ts", "soft.ts"):
        with pytest.raises(VideoError, match="is the input"):
            check_target(str(clip), str(tmp_path / other), overwrite=True)


def test_image_pattern_that_would_overwrite_input_frames_is_refused(tmp_path):
    seq = tmp_path / "seq"
    seq.mkdir()
    for i in range(4):                                  # numbered from 0; an output would start at 1
        (seq / f"{i:05d}.png").write_bytes(b"")
    with pytest.raises(VideoError, match="would write over the input's images"):
        check_target(str(seq / "%05d.png"), str(seq / "%05d.png"), overwrite=True)
    with pytest.raises(VideoError, match="would write over the input's images"):
        check_target(str(seq), str(seq / "%05d.png"), overwrite=True)
    check_target(str(seq / "%05d.png"), str(tmp_path / "out" / "%05d.png"), overwrite=False)   # elsewhere: fine


def test_existing_output_needs_overwrite_and_n_never_overwrites(cpu_bundle, tmp_path):
    source, target = tmp_path / "in.mkv", tmp_path / "out.mp4"
    make_clip(source, moving_frames(6, *SIZE), audio=False)
    target.write_bytes(b"precious")
    for flags in ((), ("-n",)):
        done = run_cli("--engine", cpu_bundle, source, "-o", target, *flags)
        assert done.returncode == 1 and b"exists; pass -y/--overwrite" in done.stderr, done.stderr.decode()
        assert target.read_bytes() == b"precious"
    done = run_cli("--engine", cpu_bundle, source, "-o", target, "-y")
    assert done.returncode == 0, done.stderr.decode()
    assert video_stream_facts(target)["frames"] == 6 and hidden_files(tmp_path) == []
    help_text = run_cli("--help").stdout.decode()
    assert "-y, --overwrite" in help_text and "-n, --no-overwrite" in help_text


# ---- 2. variable frame rate: every frame keeps its time, audio in sync ------------------------

VFR_TIMES = [Fraction(i, 30) for i in range(30)] + [1 + Fraction(i, 10) for i in range(30)]   # 1 s @30, 3 s @10


def make_vfr_clip(path):
    """VFR_TIMES as H.264 in `path` (90 kHz ticks) with 4 s of AAC audio."""
    tick = Fraction(1, 90000)
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=30)
        video.width, video.height, video.pix_fmt = *SIZE, "yuv444p"
        video.codec_context.time_base = video.time_base = tick
        sound = container.add_stream("aac", rate=48000)
        sound.layout = "mono"
        for image, t in zip(moving_frames(len(VFR_TIMES), *SIZE), VFR_TIMES):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = int(t / tick), tick
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        for start in range(0, 4 * 48000, 1024):
            t = np.arange(start, start + 1024) / 48000
            chunk = av.AudioFrame.from_ndarray((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None],
                                               format="fltp", layout="mono")
            chunk.sample_rate, chunk.pts = 48000, start
            container.mux(sound.encode(chunk))
        container.mux(sound.encode(None))


@pytest.mark.parametrize("ext", [".mkv", ".mp4"])
def test_variable_frame_rate_keeps_every_frame_time_and_audio_sync(cpu_bundle, tmp_path, ext):
    source, target = tmp_path / "vfr.ts", tmp_path / f"out{ext}"
    make_vfr_clip(source)
    assert frame_times(source) == VFR_TIMES            # the clip is what we meant (90 kHz holds these exactly)
    done = run_cli("--engine", cpu_bundle, source, "-o", target)
    assert done.returncode == 0, done.stderr.decode()
    # Matroska stores milliseconds: times may move by half of one; MP4 keeps the ticks exactly.
    tolerance = Fraction(1, 2000) if ext == ".mkv" else 0
    got = frame_times(target)
    assert len(got) == len(VFR_TIMES)
    assert max(abs(a - b) for a, b in zip(got, VFR_TIMES)) <= tolerance, [float(t) for t in got[28:33]]
    # Audio: starts with the video (the input's offsets are shifted alike) and runs its 4 s. AAC's
    # priming and its last frame (1024 samples) may shift the ends by up to one frame, 21 ms.
    start, end = audio_span(target)
    aac_frame = Fraction(1024, 48000)
    assert abs(start - first_video_pts(target)) <= aac_frame
    assert abs(end - start - 4) <= 2 * aac_frame


def test_variable_rate_into_an_image_sequence_says_timing_is_lost(cpu_bundle, tmp_path):
    source = tmp_path / "vfr.ts"
    make_vfr_clip(source)
    done = run_cli("--engine", cpu_bundle, source, "-o", tmp_path / "frames" / "%03d.png")
    assert done.returncode == 0, done.stderr.decode()
    assert b"frame times vary" in done.stderr and b"audio is not written" in done.stderr
    assert len(list((tmp_path / "frames").iterdir())) == len(VFR_TIMES)


def test_joined_mpegts_files_read_through_with_rising_times(tmp_path):
    first, second, joined = tmp_path / "a.ts", tmp_path / "b.ts", tmp_path / "ab.ts"
    make_ts(first, 16)
    make_ts(second, 16, seed=1)
    joined.write_bytes(first.read_bytes() + second.read_bytes())     # `cat a.ts b.ts`
    with VideoReader(joined) as reader:
        frames, times = reader.read_timed(100)
    assert len(frames) == 32
    assert all(b - a == Fraction(1, 25) for a, b in zip(times, times[1:]))   # the clock restarts: continue it


def test_joined_mpegts_files_with_audio_restore_every_frame(cpu_bundle, tmp_path):
    parts = [tmp_path / "a.ts", tmp_path / "b.ts"]
    for seed, part in enumerate(parts):
        make_ts(part, 16, seed=seed, audio=True)
    joined, target = tmp_path / "ab.ts", tmp_path / "out.mp4"
    joined.write_bytes(b"".join(part.read_bytes() for part in parts))
    done = run_cli("--engine", cpu_bundle, joined, "-o", target)
    assert done.returncode == 0, done.stderr.decode()
    assert video_stream_facts(target)["frames"] == 32
    start, end = audio_span(target)                # the second part's audio follows the first's
    assert abs(end - start - Fraction(32, 25)) <= Fraction(2 * 1024, 48000)   # two AAC frames of slack


# ---- 3. SIGTERM / SIGHUP end like Ctrl-C; SIGKILL's leftovers are cleaned ---------------------

def start_run(bundle, source, target):
    process = subprocess.Popen([PY, "-m", "runtime.stream", "--engine", str(bundle), str(source), "-o", str(target)],
                               cwd=REPO, stderr=subprocess.PIPE, text=True)
    lines = []
    while not (lines and lines[-1].startswith("model:")):     # printed when the run starts
        lines.append(process.stderr.readline())
        assert lines[-1] or process.poll() is None, "".join(lines)
    # The output is open (the machine may be busy: poll), then some chunks are restored.
    deadline = time.monotonic() + 60
    while not list(target.parent.glob(".*.partial-*")):
        assert time.monotonic() < deadline and process.poll() is None, "the output was never opened"
        time.sleep(0.1)
    time.sleep(1.5)
    return process, lines


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_finish_a_playable_output(cpu_bundle, tmp_path, signum):
    source, target = tmp_path / "long.mkv", tmp_path / "out.mp4"
    total = 600
    make_clip(source, moving_frames(total, *SIZE))
    process, lines = start_run(cpu_bundle, source, target)
    process.send_signal(signum)
    stderr = "".join(lines) + process.communicate(timeout=60)[1]
    assert process.returncode == 128 + signum, stderr
    facts = video_stream_facts(target)
    assert 0 < facts["frames"] < total and facts["audio"] == 1, stderr
    assert f"interrupted: the output holds the first {facts['frames']} frames" in stderr
    assert hidden_files(tmp_path) == []


def test_a_killed_runs_partial_file_is_removed_by_the_next_run(cpu_bundle, tmp_path):
    source, target = tmp_path / "long.mkv", tmp_path / "out.mp4"
    make_clip(source, moving_frames(600, *SIZE), audio=False)
    process, _ = start_run(cpu_bundle, source, target)
    process.kill()
    process.communicate(timeout=60)
    assert hidden_files(tmp_path) == [f".out.partial-{process.pid}.mp4"] and not target.exists()
    short = tmp_path / "short.mkv"
    make_clip(short, moving_frames(3, *SIZE), audio=False)
    done = run_cli("--engine", cpu_bundle, short, "-o", target)
    assert done.returncode == 0, done.stderr.decode()
    assert hidden_files(tmp_path) == [] and video_stream_facts(target)["frames"] == 3


def test_ctrl_c_while_the_model_loads_writes_nothing_and_says_so(cpu_bundle, tmp_path, monkeypatch, capsys):
    from runtime import stream
    source, target = tmp_path / "in.mkv", tmp_path / "out.mp4"
    make_clip(source, moving_frames(4, *SIZE), audio=False)
    real_load = stream.load_model

    def load_and_get_interrupted(*args):
        os.kill(os.getpid(), signal.SIGINT)
        return real_load(*args)
    monkeypatch.setattr(stream, "load_model", load_and_get_interrupted)
    assert stream.main(["--engine", str(cpu_bundle), str(source), "-o", str(target)]) == 130
    err = capsys.readouterr().err
    assert "no output was written" in err and "first 0 frames" not in err
    assert not target.exists() and hidden_files(tmp_path) == []


# ---- 4. --resize keeps the displayed shape -------------------------------------------------------

CARPHONE_ASPECT = Fraction(128, 117)        # carphone's 176x144 pixels are 128/117 wide (PAL 4:3)


def make_anamorphic_clip(path, size, sample_aspect):
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = *size, "yuv420p"
        video.codec_context.sample_aspect_ratio = sample_aspect
        for i, image in enumerate(moving_frames(4, *size)):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            container.mux(video.encode(frame))
        container.mux(video.encode(None))


def displayed_aspect(path):
    with av.open(str(path)) as container:
        ctx = container.streams.video[0].codec_context
        return Fraction(ctx.width, ctx.height) * (ctx.sample_aspect_ratio or 1)


def test_resize_keeps_the_display_aspect_ratio_or_pads(cpu_bundle, tmp_path):
    source = tmp_path / "carphone.mkv"
    make_anamorphic_clip(source, (176, 144), CARPHONE_ASPECT)
    shown = Fraction(176, 144) * CARPHONE_ASPECT                      # 1.34:1
    done = run_cli("--engine", cpu_bundle, source, "-o", tmp_path / "stretch.mp4", "--resize")
    assert done.returncode == 0, done.stderr.decode()
    # H.264 stores the pixel aspect as two 16-bit numbers: FFmpeg rounds it to fit them.
    assert abs(displayed_aspect(tmp_path / "stretch.mp4") / shown - 1) < 1e-4
    assert b"pixel aspect" in done.stderr and b"displayed 1.34:1" in done.stderr
    done = run_cli("--engine", cpu_bundle, source, "-o", tmp_path / "pad.mkv", "--resize", "pad")
    assert done.returncode == 0, done.stderr.decode()
    assert displayed_aspect(tmp_path / "pad.mkv") == Fraction(34, 32) and b"black bars" in done.stderr


def test_a_bare_resize_before_the_input_is_stretch():
    """`--resize IN.mp4` once failed: argparse took IN.mp4 as --resize's optional mode ("invalid choice")."""
    from runtime.stream import parse_args
    assert parse_args(["--engine", "b.plan", "--resize", "in.mp4", "-o", "out.mkv"]).resize == "stretch"
    assert parse_args(["--engine", "b.plan", "--resize", "pad", "in.mp4", "-o", "out.mkv"]).resize == "pad"
    assert parse_args(["--engine", "b.plan", "in.mp4", "-o", "out.mkv", "--resize"]).resize == "stretch"
    assert parse_args(["--engine", "b.plan", "in.mp4", "-o", "out.mkv"]).resize is None
    a = parse_args(["--engine", "b.plan", "--resize", "in.mp4", "-o", "out.mkv"])
    assert (a.input, a.output) == ("in.mp4", "out.mkv")


def test_resize_pad_fits_the_picture_between_black_bars():
    from video.resize import pad_box, resize_frames
    frames = np.full((2, 144, 176, 3), 200, np.uint8)
    assert pad_box((176, 144), CARPHONE_ASPECT, (17, 16)) == (0, 1, 17, 13)      # 17 / 1.337 = 12.7 rows
    assert pad_box((176, 144), None, (96, 54)) == (15, 0, 66, 54)               # 54 x 176/144 = 66 columns
    padded = resize_frames(frames, (96, 54), "pad")
    assert padded.shape == (2, 54, 96, 3)
    assert padded[:, :, :15].max() == 0 and padded[:, :, 81:].max() == 0 and padded[:, :, 15:81].min() == 200


# ---- 5. image-folder outputs ---------------------------------------------------------------------

def test_image_folder_rerun_holds_only_the_new_frames(cpu_bundle, tmp_path):
    out = tmp_path / "out"
    runs = []
    for count, flags in ((24, ()), (5, ("-y",))):
        source = tmp_path / f"in{count}.mkv"
        make_clip(source, moving_frames(count, *SIZE), audio=True)
        runs.append(run_cli("--engine", cpu_bundle, source, "-o", out, *flags))
        assert runs[-1].returncode == 0, runs[-1].stderr.decode()
    assert sorted(p.name for p in out.iterdir()) == [f"{i:08d}.png" for i in range(1, 6)]
    assert b"no extension, so it is written as an image sequence" in runs[0].stderr
    assert b"audio is not written" in runs[0].stderr and b"audio is not written" in runs[1].stderr


# ---- 6. messages name the flags; bad arguments exit 2 before anything loads ----------------------

@pytest.mark.parametrize("args, says", [
    (["-", "-o", "x.mp4"], "--raw-size WxH and --raw-fps"),
    (["in.mp4", "-o", "x.mp4", "--in-flight", "0"], "--in-flight must be at least 1"),
    (["in.mp4", "-o", "x.mp4", "--threads", "-3"], "--threads must be at least 1"),
    (["in.mp4", "-o", "x.mp4", "--crf", "99"], "--crf must be 0..51"),
    (["in.mp4", "-o", "x.webm", "--crf", "64"], "--crf must be 0..63"),
    (["in.mp4", "-o", "x.mp4", "--codec", "nope264"], "--codec nope264: no such encoder"),
    (["in.mp4", "-o", "x.mp4", "--codec", "aac"], "is a audio encoder"),
    (["in.mp4", "-o", "x.mp4", "--pix-fmt", "yuv999p"], "--pix-fmt yuv999p: no such pixel format"),
    (["in.mp4", "-o", "x.mp4", "--format", "nonesuch"], "--format nonesuch: no such output container"),
    (["in.mp4", "-o", "x.mp4", "--raw-size", "12"], "size '12'"),
])
def test_bad_arguments_exit_2_naming_the_flag(args, says, capsys):
    from runtime.stream import parse_args
    with pytest.raises(SystemExit) as leaving:
        parse_args(["--engine", "never-loaded.plan", *args])
    assert leaving.value.code == 2 and says in capsys.readouterr().err


def test_damage_and_container_messages_name_flags(tmp_path):
    from video import VideoWriter, probe
    source = tmp_path / "in.mkv"
    make_clip(source, np.random.default_rng(0).integers(0, 256, (20, 16, 17, 3), dtype=np.uint8), audio=False)
    data = source.read_bytes()
    (tmp_path / "cut.mkv").write_bytes(data[: len(data) // 2])
    with VideoReader(tmp_path / "cut.mkv") as reader, pytest.raises(VideoError) as caught:
        while len(reader.read(8)):
            pass
    assert "--conceal-errors" in str(caught.value) and "strict" not in str(caught.value)
    with pytest.raises(VideoError) as caught:
        VideoWriter(tmp_path / "out.unknownext", probe(source), width=34, height=32)
    assert "--format" in str(caught.value) and "container_format" not in str(caught.value)


# ---- 7. the Session API says what was wrong ------------------------------------------------------

def test_session_flush_after_close_and_push_after_flush_say_what_happened(cpu_bundle):
    from runtime import Session, load_bundle
    model = load_bundle(cpu_bundle)
    session = Session(model)
    session.push(moving_frames(3, *SIZE))
    session.close()
    with pytest.raises(RuntimeError, match=r"flush\(\) on a closed Session"):
        session.flush()
    with Session(model) as session:
        session.push(moving_frames(3, *SIZE))
        assert len(session.flush()) == 3
        with pytest.raises(RuntimeError, match=r"push\(\) after flush\(\)"):
            session.push(moving_frames(1, *SIZE))


# ---- 8. small things -----------------------------------------------------------------------------

def test_a_text_file_is_not_a_video(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("\n".join(f"line {i} of some notes about the clips" for i in range(50)))
    with pytest.raises(VideoError, match="is a text file, not a video"):
        VideoReader(text)


def test_truncated_bundle_names_where_it_breaks(cpu_bundle, tmp_path):
    from contract.bundle import BundleError, open_bundle
    cut = tmp_path / "cut.plan"
    with open(cpu_bundle, "rb") as f:
        cut.write_bytes(f.read(cpu_bundle.stat().st_size // 2))
    with pytest.raises(BundleError) as caught:
        open_bundle(cut, verify=False)
    assert "after []" not in str(caught.value) and "truncated" in str(caught.value)


def test_inspect_into_head_ends_quietly(cpu_bundle):
    # `true` reads nothing and exits at once: every line inspect prints meets a closed pipe.
    done = subprocess.run(f"{PY} -m engines.inspect --no-verify {cpu_bundle} | true", shell=True, cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.stderr == "", done.stderr
