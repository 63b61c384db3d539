"""The streaming runtime (runtime/): Session, pipeline and CLI against the torch ground truth.

The ground truth is swiftvr.pipeline.Restorer (protocol "full") with the tiny preset and random
weights seed 0. Frames are compared before any lossy codec (Session API, raw RGB on stdout):
  * torch backend:         bit-identical (same functions, same order of operations);
  * ONNX Runtime (cpu bundle, fp32): |difference| <= 1 on uint8 and on < 1e-3 of the values
    (float rounding lands on the other side of a .5 now and then).
The mp4 path is checked separately for frame count, exact rate, colour tags and audio packets.
"""
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
NTSC = Fraction(30000, 1001)
BT709, LIMITED = 1, 1
CLIP_LEN = 8
UINT8_TOL = 1                    # ONNX Runtime vs torch, per value
UINT8_TOL_FRACTION = 1e-3        # ... and on at most this fraction of the values


# ---- clips and reference ---------------------------------------------------------------------

def moving_frames(count, width, height, seed=0):
    """Smooth moving patterns plus a little noise: compress well, still exercise the model."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = np.empty((count, height, width, 3), np.uint8)
    for i in range(count):
        base = np.stack([np.sin(x / 5 + i / 3), np.cos(y / 4 - i / 5), np.sin((x + y) / 7 + i / 4)], -1)
        frames[i] = np.clip(128 + 90 * base + rng.normal(0, 4, base.shape), 0, 255)
    return frames


def make_clip(path, frames, rate=NTSC, audio=True):
    """Lossless video (ffv1 4:4:4, bt709 tags) plus FLAC audio interleaved with it, as real files
    are, written with PyAV directly (not with the module under test)."""
    count, height, width = frames.shape[:3]
    with av.open(str(path), "w") as container:
        video = container.add_stream("ffv1", rate=rate)
        video.width, video.height, video.pix_fmt = width, height, "yuv444p"
        ctx = video.codec_context
        ctx.color_primaries, ctx.color_trc, ctx.colorspace, ctx.color_range = BT709, BT709, BT709, LIMITED
        sound = container.add_stream("flac", rate=48000, layout="mono") if audio else None
        total, step, sample = int(48000 * count / rate), 1024, 0
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(
                format="yuv444p", dst_colorspace=BT709, dst_color_range=LIMITED)
            frame.pts = i
            container.mux(video.encode(frame))
            while sound is not None and sample < min(total, 48000 * (i + 1) / rate):
                t = np.arange(sample, min(total, sample + step)) / 48000
                chunk = av.AudioFrame.from_ndarray((12000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)[None],
                                                   format="s16", layout="mono")
                chunk.sample_rate, chunk.pts = 48000, sample
                container.mux(sound.encode(chunk))
                sample += step
        container.mux(video.encode(None))
        if sound is not None:
            container.mux(sound.encode(None))


def decoded_frames(path):
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def audio_payloads(path):
    with av.open(str(path)) as container:
        return [bytes(p) for p in container.demux(container.streams.audio[0]) if p.size]


def video_stream_facts(path):
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        frames = sum(1 for _ in container.decode(video=0))
        ctx = video.codec_context
        return {"frames": frames, "rate": Fraction(video.guessed_rate or video.average_rate),
                "size": (ctx.width, ctx.height), "audio": len(container.streams.audio),
                "tags": (int(ctx.color_primaries), int(ctx.color_trc), int(ctx.colorspace))}


@pytest.fixture(scope="session")
def tiny_torch():
    from swiftvr.random_checkpoint import random_model
    return random_model("tiny", 0)


def reference(model, frames, scale=2, clip_len=CLIP_LEN, dit_overlap=0):
    """The torch ground truth for a whole clip (protocol "full": one frame out per frame in)."""
    import torch
    from swiftvr.pipeline import Restorer, RestoreSettings
    restorer = Restorer(model, (frames.shape[2], frames.shape[1]), RestoreSettings(clip_len, dit_overlap), scale=scale)
    return torch.cat([restorer.push(torch.from_numpy(frames)), restorer.flush()]).numpy()


def check_close(got, expected, tol=UINT8_TOL, fraction=UINT8_TOL_FRACTION):
    assert got.shape == expected.shape, (got.shape, expected.shape)
    diff = np.abs(got.astype(np.int16) - expected.astype(np.int16))
    assert diff.max() <= tol, f"max |diff| {diff.max()} > {tol}"
    assert (diff > 0).mean() <= fraction, f"{(diff > 0).mean():.2e} of the values differ"
    return diff


def push_in_pieces(session, frames, sizes=(5, 1, 9, 3)):
    out, at, i = [], 0, 0
    while at < len(frames):
        n = sizes[i % len(sizes)]
        out.append(session.push(frames[at:at + n]))
        at, i = at + n, i + 1
    out.append(session.flush())
    return np.concatenate(out)


def run_cli(*args, stdin=None, timeout=120, env=None):
    return subprocess.run([PY, "-m", "runtime.stream", *map(str, args)], cwd=REPO, input=stdin,
                          capture_output=True, timeout=timeout, env=env)


# ---- the cpu bundle every ONNX Runtime test uses (built once per test session) -----------------

SIZE = (17, 16)          # odd width; x2 -> 34x32 output, padded to 64x32 (ReAE needs multiples of 32)


@pytest.fixture(scope="session")
def cpu_bundle(tmp_path_factory):
    """Export the tiny preset (random weights seed 0, fp32, clip_len 8) and bundle it for the `cpu`
    target. Built once per test run: pytest-xdist workers share it through a lock file."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):      # workers' temp folders share this run's parent
        base = base.parent
    root = base / "runtime-cpu-bundle"
    root.mkdir(exist_ok=True)
    export_dir, bundle = root / "export", root / "bundles" / "tiny.plan"
    with open(root / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not bundle.exists():
            output = f"{2 * SIZE[0]}x{2 * SIZE[1]}"
            steps = [[PY, "-m", "export", "--preset", "tiny", "--random-weights", "0", "--res", output, "--scale", "2",
                      "--clip-len", str(CLIP_LEN), "--precision", "fp32", "--quiet", "--overwrite",
                      "--out", str(export_dir)],
                     [PY, "-m", "engines", "--export", str(export_dir), "--gpu", "cpu", "--out", str(bundle)]]
            for step in steps:
                done = subprocess.run(step, cwd=REPO, capture_output=True, text=True, timeout=600)
                assert done.returncode == 0, f"python -m {step[2]} failed:\n{done.stderr[-3000:]}"
    return bundle


@pytest.fixture(scope="session")
def cpu_model(cpu_bundle):
    from runtime import load_bundle
    return load_bundle(cpu_bundle)


@pytest.fixture(scope="session")
def bundle_reference(tiny_torch, cpu_model):
    """reference(frames) with the bundle's sizes and chunk settings."""
    spec = cpu_model.spec
    assert spec.input_size == SIZE and spec.output_size == (2 * SIZE[0], 2 * SIZE[1]), spec
    return lambda frames: reference(tiny_torch, frames, clip_len=spec.clip_len, dit_overlap=spec.dit_overlap)


# ---- Session API -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def torch_model():
    from runtime import load_torch
    from runtime.backends.torch import TorchSource
    return load_torch(TorchSource(preset="tiny", seed=0), SIZE, scale=2, clip_len=CLIP_LEN)


@pytest.mark.parametrize("in_flight,overlap", [(1, False), (3, True)])
def test_torch_session_is_bit_identical_to_the_restorer(tiny_torch, torch_model, in_flight, overlap):
    from runtime import Session
    frames = moving_frames(23, *SIZE)
    with Session(torch_model, in_flight=in_flight, overlap=overlap) as session:
        got = push_in_pieces(session, frames)
    assert got.shape == (23, 32, 34, 3)
    np.testing.assert_array_equal(got, reference(tiny_torch, frames))


@pytest.mark.parametrize("total", [1, 6, 14])
def test_every_frame_comes_out_for_short_and_odd_clips(tiny_torch, torch_model, total):
    from runtime import Session
    frames = moving_frames(total, *SIZE, seed=total)
    with Session(torch_model, in_flight=2, overlap=True) as session:
        got = push_in_pieces(session, frames, sizes=(3,))
    np.testing.assert_array_equal(got, reference(tiny_torch, frames))


@pytest.mark.parametrize("in_flight,overlap", [(1, False), (3, True)])
def test_onnx_session_matches_the_restorer(cpu_model, bundle_reference, in_flight, overlap):
    from runtime import Session
    frames = moving_frames(23, *SIZE, seed=5)
    with Session(cpu_model, in_flight=in_flight, overlap=overlap) as session:
        got = push_in_pieces(session, frames)
    check_close(got, bundle_reference(frames))


def test_sessions_interleaved_and_in_threads_equal_each_alone(cpu_model):
    from runtime import Session
    clips = [moving_frames(n, *SIZE, seed=n) for n in (17, 10, 21)]
    alone = []
    for clip in clips:
        with Session(cpu_model) as s:
            alone.append(push_in_pieces(s, clip))
    # interleaved in one thread, sharing one loaded model
    sessions = [Session(cpu_model, in_flight=2, overlap=True) for _ in clips]
    outs = [[] for _ in clips]
    for at in range(0, 21, 4):
        for s, clip, out in zip(sessions, clips, outs):
            out.append(s.push(clip[at:at + 4]))
    for s, out, expected in zip(sessions, outs, alone):
        out.append(s.flush())
        s.close()
        np.testing.assert_array_equal(np.concatenate(out), expected)
    # one Session per thread, all at once
    results = [None] * len(clips)

    def work(i):
        with Session(cpu_model, in_flight=3, overlap=True) as s:
            results[i] = push_in_pieces(s, clips[i])
    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(clips))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, expected in zip(results, alone):
        np.testing.assert_array_equal(got, expected)


def test_wrong_frame_size_is_a_clear_error(cpu_model):
    from runtime import InputSizeError, Session
    with Session(cpu_model) as s:
        with pytest.raises(InputSizeError, match=r"frames are 40x30, the model takes 17x16.*resize"):
            s.push(np.zeros((2, 30, 40, 3), np.uint8))


def test_session_takes_a_loaded_model_and_its_default_in_flight(cpu_model, cpu_bundle, monkeypatch):
    """A Session loads nothing itself (callers load once, with load_bundle), and in flight, unless
    told, is what the model says (decided in LoadedModel.default_in_flight only)."""
    from runtime import Session
    with pytest.raises(TypeError, match=r"load_bundle"):
        Session(str(cpu_bundle))
    monkeypatch.setattr(type(cpu_model), "default_in_flight", property(lambda self: 3))   # as on a GPU
    with Session(cpu_model) as s:
        assert (s.in_flight, s.overlap) == (3, True)
    with Session(cpu_model, in_flight=1) as s:
        assert (s.in_flight, s.overlap) == (1, False)


def test_stats_cover_every_stage(cpu_model):
    from runtime import Session
    with Session(cpu_model) as s:
        push_in_pieces(s, moving_frames(21, *SIZE))    # FIRST 12, MIDDLE 8, LAST 1 frames
        summary = s.stats.summary()
    assert list(summary) == ["upload", "encode", "dit", "decode", "download"]
    assert all(v["count"] == 3 and v["median_ms"] >= 0 for v in summary.values())


def test_work_and_buffers_stay_bounded_on_a_long_stream(cpu_model):
    """Memory is flat: at most in_flight chunks under way and one chunk of frames waiting."""
    from runtime import Session
    frames = moving_frames(8, *SIZE)
    most_buffered = most_pending = out = 0
    with Session(cpu_model, in_flight=3, overlap=True) as s:
        for i in range(120):
            out += len(s.push(frames[i % 8]))
            most_buffered, most_pending = max(most_buffered, len(s.buffer.frames)), max(most_pending, len(s.pending))
        out += len(s.flush())
    assert out == 120
    assert most_buffered <= CLIP_LEN + 4 + 1 and most_pending <= 3

# ---- without torch -----------------------------------------------------------------------------

BLOCK = """
import sys
class Blocker:
    def __init__(self, names): self.names = names
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            raise ImportError(f"{name} is blocked for this test")
sys.meta_path.insert(0, Blocker(BLOCKED))
"""


def run_python(code: str, blocked=("torch",), timeout=120, args=()):
    script = BLOCK.replace("BLOCKED", repr(set(blocked))) + code
    return subprocess.run([PY, "-c", script, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_runtime_imports_without_torch():
    result = run_python(
        "import runtime, runtime.stream, runtime.session, runtime.restore_video, runtime.throughput, runtime.load\n"
        "import runtime.backends.onnxruntime, runtime.backends.tensorrt, runtime.backends.cuda, video\n"
        "assert 'torch' not in sys.modules\n"
        "from runtime.stream import main\n"
        "raise SystemExit(main(['--backend', 'torch', '--preset', 'tiny', '--random-weights', '0', '--res', "
        "'64x64', '--benchmark']))\n")
    assert result.returncode == 1, result.stderr
    assert "needs the Python module 'torch'" in result.stderr and "pip install torch" in result.stderr


def test_missing_onnxruntime_names_the_package(tmp_path):
    (tmp_path / "export.json").write_text(json.dumps({"format": "swiftvr-export", "version": 1}))
    result = run_python("from runtime import load_bundle\nload_bundle(sys.argv[1])\n", blocked=("onnxruntime",),
                        args=[str(tmp_path)])
    assert "MissingPackageError" in result.stderr and "pip install onnxruntime" in result.stderr


# ---- TensorRT bundles on a machine that cannot run them -----------------------------------------

def fake_trt_bundle(path, version):
    """A bundle whose manifest says TensorRT-RTX engines (the engine bytes are not real)."""
    from contract.bundle import write_bundle
    engine = path.parent / "encoder.engine"
    engine.write_bytes(b"\0" * 4096)
    manifest = {"target": {"gpu": "rtx4090", "flavour": "tensorrt-rtx", "compute_capabilities": ["8.9"]},
                "builder": {"flavour": "tensorrt-rtx", "module": "tensorrt_rtx", "version": version},
                "precision": "fp16", "sizes": {"input_size": [32, 32], "output_size": [64, 64]},
                "chunk": {"clip_len": 8, "dit_overlap": 0}, "state": {"encoder": [], "decoder": []},
                "engines": [{"name": "encoder", "role": "encoder", "member": "encoder.engine", "inputs": [],
                             "outputs": []}]}
    write_bundle(path, manifest, [("encoder.engine", engine)])
    return path


def test_tensorrt_bundle_errors_say_what_to_do(tmp_path):
    from runtime import RuntimeSetupError, load_bundle
    trt = pytest.importorskip("tensorrt_rtx")
    old = fake_trt_bundle(tmp_path / "old.plan", "0.0.1")
    with pytest.raises(RuntimeSetupError, match=r"built with tensorrt-rtx 0\.0\.1.*rebuild: python -m engines"):
        load_bundle(old)
    current = fake_trt_bundle(tmp_path / "current.plan", trt.__version__)
    with pytest.raises(RuntimeSetupError) as caught:
        load_bundle(current)
    # no cuda-python here: the package to install; with it but without a GPU: what to use instead
    assert ("pip install" in str(caught.value) and "cuda-python" in str(caught.value)) or \
        "no CUDA GPU found" in str(caught.value) or "cannot run here" in str(caught.value)
    with pytest.raises(RuntimeSetupError, match="not ONNX graphs"):
        load_bundle(current, backend="onnxruntime")


# ---- CLI ---------------------------------------------------------------------------------------

def cli_without_torch(*args, timeout=120):
    """python -m runtime.stream ARGS with torch blocked: the ONNX Runtime path never needs it."""
    return run_python("from runtime.stream import main\nraise SystemExit(main(sys.argv[1:]))\n",
                      args=[str(a) for a in args], timeout=timeout)


def test_cli_mp4_keeps_frames_rate_colour_tags_and_audio(cpu_bundle, tmp_path):
    source, target, stats = tmp_path / "in.mkv", tmp_path / "out.mp4", tmp_path / "stats.json"
    make_clip(source, moving_frames(23, *SIZE))
    done = cli_without_torch("--engine", cpu_bundle, source, "-o", target, "--stats", stats)
    assert done.returncode == 0, done.stderr
    facts = video_stream_facts(target)
    assert facts == {"frames": 23, "rate": NTSC, "size": (34, 32), "audio": 1, "tags": (BT709, BT709, BT709)}
    assert audio_payloads(target) == audio_payloads(source)          # copied, not re-encoded
    report = json.loads(stats.read_text())
    assert report["frames_in"] == report["frames_out"] == 23 and not report["interrupted"]
    assert set(report["stages"]) == {"upload", "encode", "dit", "decode", "download"}
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]


def test_cli_raw_pipes_give_the_restorer_frames(cpu_bundle, bundle_reference):
    frames = moving_frames(19, *SIZE, seed=7)
    done = run_cli("--engine", cpu_bundle, "-", "--raw-size", "17x16", "--raw-fps", "25", "-o", "-",
                   stdin=frames.tobytes())
    assert done.returncode == 0, done.stderr.decode()
    got = np.frombuffer(done.stdout, np.uint8).reshape(-1, 32, 34, 3)
    check_close(got, bundle_reference(frames))


def test_cli_torch_backend_is_bit_identical(tiny_torch):
    frames = moving_frames(14, *SIZE, seed=3)
    done = run_cli("--backend", "torch", "--preset", "tiny", "--random-weights", 0, "--scale", 2, "--clip-len",
                   CLIP_LEN, "-", "--raw-size", "17x16", "--raw-fps", "30000/1001", "-o", "-", stdin=frames.tobytes())
    assert done.returncode == 0, done.stderr.decode()
    got = np.frombuffer(done.stdout, np.uint8).reshape(-1, 32, 34, 3)
    np.testing.assert_array_equal(got, reference(tiny_torch, frames))


def test_ctrl_c_finishes_the_chunk_in_flight_and_leaves_a_playable_file(cpu_bundle, tmp_path):
    source, target = tmp_path / "long.mkv", tmp_path / "out.mp4"
    total = 600
    make_clip(source, moving_frames(total, *SIZE))
    process = subprocess.Popen([PY, "-m", "runtime.stream", "--engine", str(cpu_bundle), str(source), "-o",
                                str(target), "--in-flight", "3"], cwd=REPO, stderr=subprocess.PIPE, text=True)
    lines = []
    while not (lines and lines[-1].startswith("model:")):     # printed when the run starts
        lines.append(process.stderr.readline())
        assert lines[-1] or process.poll() is None, "".join(lines)
    time.sleep(1.5)
    process.send_signal(signal.SIGINT)
    stderr = "".join(lines) + process.communicate(timeout=60)[1]
    assert process.returncode == 130, stderr
    facts = video_stream_facts(target)
    assert 0 < facts["frames"] < total and facts["rate"] == NTSC and facts["audio"] == 1, stderr
    assert f"interrupted: the output holds the first {facts['frames']} frames" in stderr
    assert not (tmp_path / ".out.partial.mp4").exists()


def test_truncated_input_keeps_what_was_restored_and_fails_clearly(cpu_bundle, tmp_path):
    from video import VideoError, VideoReader
    source, damaged, target = tmp_path / "in.mkv", tmp_path / "cut.mkv", tmp_path / "out.mp4"
    make_clip(source, np.random.default_rng(0).integers(0, 256, (40, 16, 17, 3), dtype=np.uint8), audio=False)
    data = source.read_bytes()
    damaged.write_bytes(data[:len(data) // 2])
    readable = 0
    with VideoReader(damaged) as reader:
        with pytest.raises(VideoError):
            while len(chunk := reader.read(8)):
                readable += len(chunk)
    assert 0 < readable < 40
    done = cli_without_torch("--engine", cpu_bundle, damaged, "-o", target)
    assert done.returncode == 1
    assert "truncated" in done.stderr and f"the {readable} frames restored before it are in" in done.stderr
    assert video_stream_facts(target)["frames"] == readable


def test_wrong_input_size_names_fitting_bundles_and_resize_works(cpu_bundle, tmp_path):
    source, target = tmp_path / "big.mkv", tmp_path / "out.mp4"
    make_clip(source, moving_frames(6, 23, 19), audio=False)
    fitting = cpu_bundle.parent / "export-23x19"            # an export folder made for 23x19 frames
    fitting.mkdir(exist_ok=True)
    (fitting / "export.json").write_text(json.dumps({"format": "swiftvr-export", "version": 1,
                                                     "input_size": [23, 19], "output_size": [46, 38]}))
    done = cli_without_torch("--engine", cpu_bundle, source, "-o", target)
    assert done.returncode == 1
    assert "the input is 23x19" in done.stderr and "takes 17x16" in done.stderr
    assert str(fitting) in done.stderr and "--resize" in done.stderr
    done = cli_without_torch("--engine", cpu_bundle, source, "-o", target, "--resize")
    assert done.returncode == 0, done.stderr
    assert video_stream_facts(target)["frames"] == 6 and video_stream_facts(target)["size"] == (34, 32)


class LocalStream:
    """runtime.serve's client Stream (submit / result / flush / close) with the replica's Session in
    this process: restore_video's served path without a Ray cluster. It counts the pushes on the wire."""

    def __init__(self, model):
        import dataclasses
        from runtime import Session
        self.session = Session(model)
        self.info = {"pid": os.getpid(), "spec": dataclasses.asdict(model.spec)}
        self.output_size = model.spec.output_size
        self.on_wire = self.most_on_wire = 0
        self.closed = False

    def submit(self, frames):
        self.on_wire += 1
        self.most_on_wire = max(self.most_on_wire, self.on_wire)
        return self.session.push(frames)

    def result(self, pending):
        self.on_wire -= 1
        return pending

    def flush(self):
        return self.session.flush()

    def close(self):
        self.closed = True
        self.session.close()


def test_a_served_stream_runs_the_job_of_a_local_session(cpu_model, tmp_path):
    """runtime.stream, runtime.batch and --serve run one job (runtime/restore_video.py): a served
    stream gets the local Session's frames, resized the same way, with its pushes pipelined."""
    from runtime.restore_video import restore_video
    from runtime.serve import RemoteModel
    source = tmp_path / "in.mkv"
    make_clip(source, moving_frames(29, 23, 19), audio=False)
    local = restore_video(cpu_model, str(source), str(tmp_path / "local" / "%04d.png"), resize="pad", progress=False)
    stream = LocalStream(cpu_model)
    served = restore_video(RemoteModel("here", stream), str(source), str(tmp_path / "served" / "%04d.png"),
                           resize="pad", progress=False)
    assert stream.most_on_wire == 2 and stream.on_wire == 0 and stream.closed   # RemoteModel.default_in_flight
    assert local.frames_out == served.frames_out == 29 and (served.in_flight, served.overlap) == (2, None)

    def frames(folder):
        return np.stack([decoded_frames(p)[0] for p in sorted(folder.iterdir())])
    np.testing.assert_array_equal(frames(tmp_path / "served"), frames(tmp_path / "local"))


def test_benchmark_reports_stages_throughput_and_memory(cpu_bundle, tmp_path):
    stats = tmp_path / "bench.json"
    done = cli_without_torch("--engine", cpu_bundle, "--benchmark", "--bench-chunks", 2, "--stats", stats)
    assert done.returncode == 0, done.stderr
    assert "overlap" in done.stderr and "sequential" in done.stderr and "n/a (CPU)" in done.stderr
    assert "warm-up: every shape a stream uses (encoder T [4, 8, 12], DiT F [2, 3], decoder n [1, 2, 3])" in done.stderr
    modes = json.loads(stats.read_text())["modes"]
    for mode in modes.values():
        assert mode["frames"] == 2 * CLIP_LEN and mode["fps"] > 0 and mode["peak_device_memory_bytes"] is None
        assert set(mode["stages_ms"]) == {"upload", "encode", "dit", "decode", "download"}


def test_torch_backend_runs_what_a_bundle_was_made_from(cpu_bundle, bundle_reference):
    from runtime import Session, load_bundle
    model = load_bundle(cpu_bundle, backend="torch")
    assert model.spec.backend == "torch" and model.spec.input_size == SIZE
    frames = moving_frames(9, *SIZE, seed=9)
    with Session(model) as session:
        np.testing.assert_array_equal(push_in_pieces(session, frames), bundle_reference(frames))


def test_network_url_input(cpu_bundle, tmp_path):
    """A URL goes through FFmpeg's own protocols: here HTTP from a server on localhost."""
    import functools
    import http.server
    source, target = tmp_path / "in.mkv", tmp_path / "out.mkv"
    make_clip(source, moving_frames(10, *SIZE))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/in.mkv"
        done = cli_without_torch("--engine", cpu_bundle, url, "-o", target, "--crf", 10)
    finally:
        server.shutdown()
    assert done.returncode == 0, done.stderr
    facts = video_stream_facts(target)
    assert facts["frames"] == 10 and facts["rate"] == NTSC and facts["audio"] == 1
    assert audio_payloads(target) == audio_payloads(source)


def test_cli_torch_speed_up_flags_keep_the_frames(tmp_path):
    """--fused-qkv and --channels-last reach the torch backend and give the default path's frames."""
    import subprocess
    import sys
    frames = {}
    for name, flags in (("plain", []), ("fast", ["--fused-qkv", "--channels-last"])):
        out = subprocess.run([sys.executable, "-m", "runtime.stream", "--backend", "torch", "--preset", "tiny",
                              "--random-weights", "0", "--scale", "2", "--clip-len", "8", "-", "--raw-size", "32x32",
                              "--raw-fps", "25", "-o", "-", *flags],
                             input=np.random.default_rng(0).integers(0, 256, (9, 32, 32, 3), dtype=np.uint8).tobytes(),
                             capture_output=True, timeout=300)
        assert out.returncode == 0, out.stderr.decode()[-2000:]
        assert ("fused_qkv=True, channels_last=True" in out.stderr.decode()) == bool(flags)
        frames[name] = np.frombuffer(out.stdout, np.uint8).reshape(-1, 64, 64, 3)
    assert len(frames["plain"]) == 9
    assert np.abs(frames["plain"].astype(int) - frames["fast"].astype(int)).max() <= 1


@pytest.mark.parametrize("clip_len,overlap", [(4, 0), (8, 0), (8, 1), (24, 0), (24, 2)])
def test_the_benchmark_warm_up_makes_every_call_shape_of_any_stream(clip_len, overlap):
    """A shape first seen in the timed part would be timed with its compilation (TensorRT-RTX kernels,
    torch.compile, CUDA graph capture), and missing from TensorRT-RTX's runtime cache afterwards."""
    from runtime.throughput import stream_shapes, warm_up_streams
    warmed = set().union(*(stream_shapes(f, clip_len, overlap) for f in warm_up_streams(clip_len) + [2 * clip_len + 5]))
    every = set().union(*(stream_shapes(f, clip_len, overlap) for f in range(1, 5 * clip_len + 12)))
    assert warmed == every
    assert {n for s, n in every if s == "encoder"} == set(range(4, clip_len + 5, 4))
    assert {n for s, n in every if s == "decoder"} == set(range(1, clip_len // 4 + 2))
