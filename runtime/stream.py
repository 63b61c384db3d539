"""Restore a video in real time with a bundle, an export folder or the torch model.

  python -m runtime.stream --engine engines/1080p.plan in.mp4 -o out.mp4
  python -m runtime.stream --engine exports/tiny in.mp4 -o out.mkv --crf 16          (ONNX Runtime)
  python -m runtime.stream --backend torch --preset tiny --random-weights 0 --scale 2 in.mp4 -o out.mp4
  python -m runtime.stream --backend torch --checkpoint ckpt/ --res 1080p in.mp4 -o out.mp4
  ffmpeg -i in.mp4 -f rawvideo -pix_fmt rgb24 - | python -m runtime.stream --engine E - --raw-size 480x270 \\
      --raw-fps 30000/1001 -o - | ffplay -f rawvideo -pixel_format rgb24 -video_size 960x540 -
  python -m runtime.stream --engine E rtsp://camera/live -o srt://host:9000 --input-option rtsp_transport=tcp
  python -m runtime.stream --engine E --benchmark
  python -m runtime.stream --serve auto in.mp4 -o out.mp4      (through a runtime.serve service on Ray)
  python -m runtime.stream --serve grpcs://host:50051 --tls-ca ca.pem in.mp4 -o out.mp4   (its gRPC endpoint)

Inputs: files, image sequences (folder or frames/%05d.png), "-" (raw RGB24 on stdin), URLs.
Outputs: files (written to a temporary name, renamed when complete), image sequences, "-" (raw
RGB24 on stdout), URLs. One output frame per input frame, each at its input frame's presentation
time (variable frame rates too), with the input's colour tags and audio (copied, not re-encoded).
An output that is the input is refused; an existing one unless -y/--overwrite.

Exit status: 0 done; 1 error (nothing or a partial but playable output, see the message);
2 bad arguments; 128+signal when stopped by Ctrl-C (130), SIGTERM (143) or SIGHUP (129): the
chunks in flight are finished and the output is closed, playable. A second signal aborts at once.
"""
import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

import av

from contract.sizes import parse_size

from .errors import RuntimeSetupError
from .load import BACKENDS, load_bundle, load_torch
from video.resize import RESIZE_MODES
from video import VideoError, check_target, parse_rate

EXIT_ERROR, EXIT_USAGE = 1, 2
# The signals that mean "stop, please": Ctrl-C, docker stop / systemd / timeout, a closed terminal.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# Constant-quality scales: x264/x265 0-51 (the default encoder), VP8/VP9/AV1 0-63.
WIDE_CRF_ENCODERS = ("libvpx", "libaom", "libsvtav1")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m runtime.stream", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", nargs="?", help="video file, image folder or pattern, '-' (raw RGB24 on stdin), URL")
    p.add_argument("-o", "--output", help="video file, image folder or pattern, '-' (raw RGB24 on stdout), URL")
    clobber = p.add_mutually_exclusive_group()
    clobber.add_argument("-y", "--overwrite", action="store_true", help="replace an existing output (kept until "
                         "the new one is complete; an output that is the input is always refused)")
    clobber.add_argument("-n", "--no-overwrite", action="store_true", help="never replace an existing output "
                         "(the default)")
    m = p.add_argument_group("model")
    m.add_argument("--engine", help="bundle file (engines/<res>.plan) or export folder")
    m.add_argument("--serve", metavar="ADDRESS", help="restore on a runtime.serve service instead of loading a "
                   "model: its gRPC endpoint (grpcs://HOST:PORT, grpc://HOST:PORT), or the Ray cluster it runs in "
                   "(auto, HOST:6379, ray://HOST:10001); the token from SWIFTVR_SERVE_TOKEN or the token file")
    m.add_argument("--tls-ca", help="--serve grpcs://: the CA certificate (PEM) that signed the endpoint's")
    m.add_argument("--tls-cert", help="--serve grpcs://: this client's certificate (PEM), when the endpoint asks")
    m.add_argument("--tls-key", help="--serve grpcs://: the key of --tls-cert (PEM)")
    m.add_argument("--backend", choices=BACKENDS, help="default: tensorrt for GPU bundles, onnxruntime for cpu "
                                                        "bundles and export folders")
    m.add_argument("--device", help="cpu, cuda or cuda:N (default: a GPU when the backend has one)")
    m.add_argument("--threads", type=int, help="ONNX Runtime threads per graph (default: one per core)")
    m.add_argument("--checkpoint", help="torch backend: release checkpoint folder")
    m.add_argument("--preset", help="torch backend: model preset (tiny, 5b) with --random-weights")
    m.add_argument("--random-weights", type=int, metavar="SEED", help="torch backend: seeded random weights")
    m.add_argument("--res", help="torch backend: output size WxH or a name like 1080p (default: input x --scale)")
    m.add_argument("--scale", type=float, default=None, help="torch backend: output = input x scale (default 4)")
    m.add_argument("--input-size", metavar="WxH", help="torch backend: input frame size (default: the input's; "
                                                          "for --benchmark: --res / --scale)")
    m.add_argument("--clip-len", type=int, default=24, help="torch backend: frames per chunk (default 24)")
    m.add_argument("--dit-overlap", type=int, default=0, help="torch backend: DiT overlap latents (default 0)")
    m.add_argument("--precision", choices=["fp32", "fp16", "bf16"], help="torch backend (default fp32 CPU, bf16 GPU)")
    t = p.add_argument_group("torch backend speed-ups (measure them with python -m runtime.bench)")
    t.add_argument("--fused-qkv", action="store_true", help="one q/k/v matmul per self-attention")
    t.add_argument("--channels-last", action="store_true", help="ReAE convolutions in NHWC layout")
    t.add_argument("--attention", help="force one SDPA kernel (flash, efficient, cudnn, math)")
    t.add_argument("--compile", metavar="MODE", help="torch.compile the stages (default, max-autotune-no-cudagraphs)")
    t.add_argument("--cuda-graphs", action="store_true", help="replay CUDA graphs per stage and shape (CUDA only)")
    t.add_argument("--fp8", metavar="SCALING", help="FP8 DiT linears, weight scales per 'row' or 'tensor' (SM >= 8.9)")
    r = p.add_argument_group("running")
    r.add_argument("--resize", nargs="?", const="stretch", choices=RESIZE_MODES,
                   help="scale input frames to the size the model takes: 'stretch' (the default; the output's "
                        "pixel aspect keeps the picture's shape on screen) or 'pad' (black bars, square pixels)")
    r.add_argument("--in-flight", type=int, help="chunks under way at once (default: 3 on a GPU, 1 on the CPU, "
                                                  "where overlapping stages measured no faster)")
    r.add_argument("--overlap", action=argparse.BooleanOptionalAction, default=None,
                   help="run the stages on their own CUDA streams / threads (default: when in flight > 1)")
    r.add_argument("--stats", metavar="FILE.json", help="write per-stage timings and totals to this file")
    r.add_argument("--benchmark", action="store_true", help="time synthetic chunks (no video I/O) and exit")
    r.add_argument("--bench-chunks", type=int, default=8, help="--benchmark: timed chunks per mode (default 8)")
    r.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: when stderr is a terminal)")
    v = p.add_argument_group("input and output")
    v.add_argument("--raw-size", help="size WxH of raw RGB24 frames on stdin")
    v.add_argument("--raw-fps", help="frame rate of raw stdin frames or image sequences (e.g. 30000/1001)")
    v.add_argument("--conceal-errors", action="store_true", help="decode through damaged or missing packets "
                   "instead of stopping at the first (the default for URLs)")
    v.add_argument("--input-option", action="append", default=[], metavar="KEY=VALUE",
                   help="FFmpeg option for opening the input, e.g. rtsp_transport=tcp (repeatable)")
    v.add_argument("--codec", help="video encoder (default libx264; libvpx-vp9 for .webm)")
    v.add_argument("--crf", type=int, help="constant quality (default 18; lower is better)")
    v.add_argument("--pix-fmt", help="output pixel format (default yuv420p; yuv444p for odd sizes)")
    v.add_argument("--format", help="output container, when the name does not say (e.g. mpegts, flv)")
    v.add_argument("--output-option", action="append", default=[], metavar="KEY=VALUE",
                   help="muxer option, e.g. movflags=+faststart (repeatable)")
    a = p.parse_args(resize_mode_given(sys.argv[1:] if argv is None else list(argv)))
    try:
        check_args(a)
    except ValueError as e:
        p.error(str(e))
    return a


def resize_mode_given(argv: list) -> list:
    """`--resize IN.mp4 -o OUT`: argparse would take IN.mp4 as --resize's optional mode and refuse it
    ("invalid choice"). A bare --resize followed by anything but a mode means the default, stretch."""
    out = []
    for i, arg in enumerate(argv):
        if arg == "--":
            return out + argv[i:]
        bare = arg == "--resize" and (i + 1 == len(argv) or str(argv[i + 1]) not in RESIZE_MODES)
        out.append("--resize=stretch" if bare else arg)
    return out


def check_args(a: argparse.Namespace) -> None:
    """Every argument that can be wrong is caught here, before a model loads (exit 2)."""
    for flag, value, least in (("--in-flight", a.in_flight, 1), ("--threads", a.threads, 1),
                               ("--bench-chunks", a.bench_chunks, 1), ("--clip-len", a.clip_len, 1),
                               ("--dit-overlap", a.dit_overlap, 0)):
        if value is not None and value < least:
            raise ValueError(f"{flag} must be at least {least}, got {value}")
    if a.scale is not None and a.scale <= 0:
        raise ValueError(f"--scale must be positive, got {a.scale}")
    for flag in ("raw_size", "res", "input_size"):
        if getattr(a, flag):
            parse_size(getattr(a, flag))
    if a.raw_fps:
        parse_rate(a.raw_fps)
    if a.serve and (a.engine or a.checkpoint or a.preset or a.benchmark):
        raise ValueError("--serve restores on the service's model: drop --engine / --checkpoint / --preset / "
                         "--benchmark")
    if (a.tls_ca or a.tls_cert or a.tls_key) and not (a.serve or "").startswith("grpcs://"):
        raise ValueError("--tls-ca / --tls-cert / --tls-key are for --serve grpcs://HOST:PORT")
    if (a.tls_cert is None) != (a.tls_key is None):
        raise ValueError("--tls-cert and --tls-key go together")
    if a.input == "-" and not (a.raw_size and a.raw_fps):
        raise ValueError("reading raw RGB24 frames from stdin ('-') needs --raw-size WxH and --raw-fps RATE")
    _options(a.input_option, "--input-option")
    _options(a.output_option, "--output-option")
    if a.codec:
        try:
            codec = av.Codec(a.codec, "w")
        except Exception:
            raise ValueError(f"--codec {a.codec}: no such encoder in this FFmpeg (e.g. libx264, libx265, "
                             f"libvpx-vp9, mpeg4)") from None
        if codec.type != "video":
            raise ValueError(f"--codec {a.codec} is a {codec.type} encoder, not a video one")
    if a.pix_fmt:
        try:
            av.VideoFormat(a.pix_fmt)
        except Exception:
            raise ValueError(f"--pix-fmt {a.pix_fmt}: no such pixel format (e.g. yuv420p, yuv444p)") from None
        supported = [f.name for f in (av.Codec(a.codec, "w").video_formats or [])] if a.codec else []
        if supported and a.pix_fmt not in supported:
            raise ValueError(f"--pix-fmt {a.pix_fmt}: {a.codec} takes {', '.join(supported)}")
    if a.format:
        try:
            av.format.ContainerFormat(a.format, "w")
        except Exception:
            raise ValueError(f"--format {a.format}: no such output container (e.g. mp4, matroska, mpegts, flv)") \
                from None
    if a.crf is not None:
        wide = a.codec.startswith(WIDE_CRF_ENCODERS) if a.codec else str(a.output).lower().endswith(".webm")
        top = 63 if wide else 51
        if not 0 <= a.crf <= top:
            raise ValueError(f"--crf must be 0..{top} for {a.codec or 'the default encoder'}, got {a.crf}")


def _options(pairs: list[str], what: str) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"{what} {pair!r} must look like KEY=VALUE")
        out[key] = value
    return out


def load_model(a: argparse.Namespace, input_size: tuple[int, int] | None):
    torch_source = a.checkpoint or a.preset or a.random_weights is not None
    if a.engine:
        if torch_source:
            raise ValueError("give either --engine or a torch model (--checkpoint / --preset --random-weights)")
        return load_bundle(a.engine, a.backend, device=a.device, threads=a.threads, precision=a.precision)
    if not torch_source:
        raise ValueError("say which model to run: --engine BUNDLE_OR_EXPORT_FOLDER, or --backend torch with "
                         "--checkpoint DIR or --preset NAME --random-weights SEED")
    if a.backend not in (None, "torch"):
        raise ValueError(f"--checkpoint / --preset run on the torch backend, not {a.backend}")
    from .backends.torch import TorchOptions, TorchSource
    options = TorchOptions(fused_qkv=a.fused_qkv, channels_last=a.channels_last, attention=a.attention,
                           compile=a.compile, cuda_graphs=a.cuda_graphs, fp8=a.fp8)
    source = TorchSource(checkpoint=a.checkpoint) if a.checkpoint else TorchSource(preset=a.preset,
                                                                                   seed=a.random_weights)
    if source.checkpoint is None and (a.preset is None or a.random_weights is None):
        raise ValueError("--preset and --random-weights go together")
    output_size = parse_size(a.res) if a.res else None
    if a.input_size:
        input_size = parse_size(a.input_size)
    elif input_size is None and output_size:            # --benchmark: the input the output is --scale times
        scale = a.scale or 4
        input_size = (round(output_size[0] / scale), round(output_size[1] / scale))
    if input_size is None:
        raise ValueError("--benchmark with the torch backend needs --input-size WxH or --res WxH")
    return load_torch(source, input_size, scale=a.scale, output_size=output_size, clip_len=a.clip_len,
                      dit_overlap=a.dit_overlap, precision=a.precision, device=a.device, options=options)


def main(argv=None) -> int:
    a = parse_args(argv)
    logging.basicConfig(format="warning: %(message)s", level=logging.WARNING)
    try:
        if a.benchmark:
            from .throughput import format_benchmark, run_benchmark
            results = run_benchmark(load_model(a, None), chunks=a.bench_chunks)
            print(format_benchmark(results), file=sys.stderr)
            if a.stats:
                Path(a.stats).write_text(json.dumps(results, indent=1))
            return 0
        if not a.input or not a.output:
            print("error: give an INPUT and -o OUTPUT (or --benchmark)", file=sys.stderr)
            return EXIT_USAGE
        return run(a)
    except (RuntimeSetupError, VideoError, ValueError, OSError) as e:
        say(f"error: {e}")
        return EXIT_ERROR


def say(line: str) -> None:
    """A line on stderr, which may be gone (SIGHUP: the terminal was closed)."""
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (OSError, ValueError):
        return False


class StopSignals:
    """The first SIGINT / SIGTERM / SIGHUP asks the run to stop cleanly (finish the chunks in flight,
    close a playable output); a second one aborts at once (the partial output is deleted)."""

    def __init__(self):
        self.stop = threading.Event()
        self.signum: int | None = None
        self.previous = {}

    def __enter__(self):
        for signum in STOP_SIGNALS:
            self.previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def _on_signal(self, signum, frame):
        if self.stop.is_set():
            raise KeyboardInterrupt
        self.signum = signum
        say(f"\nstopping on {signal.Signals(signum).name}: finishing the chunks in flight (again to abort)")
        if signum == signal.SIGHUP and _isatty(sys.stderr):
            # The terminal is gone: writes to it (the progress bar) would fail and stop the writer.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stderr.fileno())
        self.stop.set()

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGINT)


def run(a: argparse.Namespace) -> int:
    from .restore_video import restore_video

    # Before anything slow: an output that would destroy an input or an existing file.
    check_target(a.input, a.output, overwrite=a.overwrite, container_format=a.format)
    reader_options = dict(raw_size=a.raw_size, raw_fps=a.raw_fps, options=_options(a.input_option, "--input-option"))
    if a.conceal_errors:
        reader_options["strict"] = False
    writer_options = dict(codec=a.codec, crf=a.crf, pix_fmt=a.pix_fmt, container_format=a.format,
                          options=_options(a.output_option, "--output-option"))

    def model_for(info):
        if a.serve:
            from .serve import RemoteModel
            tls = {"tls_ca": a.tls_ca, "tls_cert": a.tls_cert, "tls_key": a.tls_key} if a.tls_ca or a.tls_cert else {}
            return RemoteModel(a.serve, **tls)
        return load_model(a, (info.width, info.height))

    with StopSignals() as signals:
        try:
            result = restore_video(model_for, a.input, a.output, reader_options=reader_options,
                                   writer_options=writer_options, resize=a.resize, in_flight=a.in_flight,
                                   overlap=a.overlap, engine=a.engine, stop=signals.stop, progress=a.progress,
                                   say=say)
        except KeyboardInterrupt:
            say("aborted: the partial output was deleted")
            return signals.exit_code
    if not result.opened:
        say("stopped before any frame was restored: no output was written")
        return signals.exit_code
    if a.stats:
        Path(a.stats).write_text(json.dumps({"input": result.input, "output": a.output, **result.as_dict()}, indent=1))
    say(f"{result.frames_out} frames in {result.seconds:.1f} s ({result.fps:.2f} frames/s) -> {a.output}")
    if result.input_error:
        say(f"error: {result.input_error}\nthe {result.frames_out} frames restored before it are in {a.output}")
        return EXIT_ERROR
    if result.interrupted:
        if result.frames_out:
            say(f"interrupted: the output holds the first {result.frames_out} frames")
        else:
            say("interrupted before any frame was restored: no output was written")
        return signals.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
