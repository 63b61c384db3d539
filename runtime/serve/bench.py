"""How fast streams go through the gRPC endpoint (docs/benchmarks.md, "runtime.serve's gRPC endpoint").

    python -m runtime.serve.bench --engine BUNDLE [--streams 1 4] [--frames 96] [--rounds 3]
                                  [--ceiling-size 480x270 --ceiling-scale 4] [--tls]

1. The bundle: N streams restored by N Sessions on one model in this process (threads, one ONNX
   Runtime thread: what one replica with 1 CPU does), against the same N streams through
   `python -m runtime.serve --replicas 1 --listen 127.0.0.1:0` (a subprocess with its own Ray
   cluster; clients here, loopback, plaintext or --tls, each keeping 2 pushes of clip_len frames on the
   wire as runtime.stream --serve does). Rounds alternate; medians; the ratio is per round.
2. The ceiling: the same clients against an endpoint whose "model" does nothing (a Ray actor that
   answers each push with ready-made frames of the output size): what the endpoint, Ray's hop
   and a Python client carry on loopback, in MB/s of restored RGB frames.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from contract.sizes import parse_size

TOKEN = "bench-token-" + "b" * 32


def restore_local(model, clips: list[np.ndarray], push: int) -> float:
    """Seconds to restore the clips, one Session each, side by side in threads."""
    from ..session import Session

    def one(clip):
        with Session(model) as session:
            for i in range(0, len(clip), push):
                session.push(clip[i:i + push])
            session.flush()
    return run_threads(one, clips)


def restore_served(address: str, clips: list[np.ndarray], push: int, tls_ca=None) -> float:
    """Seconds to restore the clips through the endpoint, one stream each, side by side."""
    from . import ServedSession, connect
    client = connect(address, token=TOKEN, tls_ca=tls_ca)

    def one(clip):
        stream = client.open()
        session = ServedSession(stream, in_flight=2)
        frames = 0
        for i in range(0, len(clip), push):
            frames += len(session.push(clip[i:i + push]))
        frames += len(session.flush())
        assert frames == len(clip), (frames, len(clip))
    try:
        return run_threads(one, clips)
    finally:
        client.close()


def run_threads(work, clips) -> float:
    errors = []

    def guarded(clip):
        try:
            work(clip)
        except BaseException as e:
            errors.append(e)
    threads = [threading.Thread(target=guarded, args=(clip,)) for clip in clips]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - start


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that is its own CA, and its key (openssl): for --tls."""
    cert, key = folder / "bench-cert.pem", folder / "bench-key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=60)
    key.chmod(0o600)
    return cert, key


def start_server(argv: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    """A server process (argv after the interpreter); its address once it listens."""
    env = {**os.environ, "SWIFTVR_SERVE_TOKEN": TOKEN, "PYTHONPATH": str(Path(__file__).parents[2])}
    out = open(log, "w")
    process = subprocess.Popen([sys.executable, *argv], env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if "listening on " in line:
                return process, line.split("listening on ")[1].split()[0]
        if process.poll() is not None:
            break
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"the server did not start:\n{log.read_text()[-3000:]}")


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()


# ---- the no-op service: one Ray actor is the router and the replica ------------------------------

class NoopService:
    """Answers open() as the router does and push() / flush() as a replica does, with frames it
    made once: the endpoint's and Ray's costs without a model's."""

    def __init__(self, input_size, output_size, clip_len, max_push_frames):
        width, height = output_size
        self.out = np.random.default_rng(0).integers(0, 255, (max_push_frames, height, width, 3), np.uint8)
        self.info = {"pid": os.getpid(), "max_push_frames": max_push_frames, "max_streams": 64, "spec": {
            "source": "no-op", "backend": "none", "device": "cpu", "precision": "uint8", "input_size": list(input_size),
            "output_size": list(output_size), "clip_len": clip_len, "dit_overlap": 0, "dit_latent_frames": None,
            "quantization": None}}
        self.streams = 0

    def ready(self) -> dict:
        return {"replicas": 1, **self.info}

    def open(self, token) -> dict:
        import ray
        self.streams += 1
        return {"id": f"s{self.streams}", "replica": ray.get_runtime_context().current_actor, "info": self.info}

    def push(self, stream_id, seq, frames) -> dict:
        return {"frames": self.out[:len(frames)]}

    def flush(self, stream_id, seq) -> dict:
        return {"frames": self.out[:0]}

    def close(self, stream_id) -> None:
        pass


def noop_server(listen: str, input_size, output_size, clip_len: int, max_push_frames: int, tls_files=None) -> None:
    """Serve the no-op service on `listen` (with TLS: tls_files = (cert, key)) until SIGTERM (run as a
    subprocess by main())."""
    import signal
    import ray
    from .endpoint import TLS, Endpoint, Limits
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    service = ray.remote(NoopService).options(max_concurrency=64).remote(input_size, output_size, clip_len,
                                                                          max_push_frames)
    info = ray.get(service.ready.remote())
    # Ray's hop alone (a push's frames out, its restored frames back), one push at a time, as a part of the whole.
    pushed, out_frame = np.zeros((max_push_frames, input_size[1], input_size[0], 3), np.uint8), np.prod(output_size) * 3
    ray.get(service.push.remote("s", 0, pushed))
    start = time.perf_counter()
    for i in range(20):
        ray.get(service.push.remote("s", i, pushed))
    print(f"ray hop alone: {20 * max_push_frames * out_frame / (time.perf_counter() - start) / 1e6:.0f} MB/s of "
          f"restored frames, one push at a time", flush=True)
    endpoint = Endpoint(service, listen=listen, tokens=[TOKEN], service_token=TOKEN,
                        limits=Limits(max_streams=16, max_streams_per_token=16, idle_timeout_s=60), info=info,
                        tls=TLS(cert=Path(tls_files[0]).read_bytes(), key=Path(tls_files[1]).read_bytes())
                        if tls_files else None)
    print(f"no-op endpoint listening on {endpoint.address}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    endpoint.stop()
    ray.shutdown()


# ---- main --------------------------------------------------------------------------------------

def measure(a, log_dir: Path) -> dict:
    from ..load import load_bundle
    model = load_bundle(a.engine, threads=1)
    spec = model.spec
    width, height = spec.input_size
    rng = np.random.default_rng(1)
    base = rng.integers(0, 255, (a.frames, height, width, 3), np.uint8)
    push = spec.clip_len
    results = {"bundle": spec.describe(), "frames_per_stream": a.frames, "push_frames": push, "runs": {}}
    tls = ["--tls-cert", str(a.tls_ca), "--tls-key", str(a.tls_key)] if a.tls else []
    server, address = start_server(["-m", "runtime.serve", "--engine", a.engine, "--replicas", "1",
                                    "--max-streams", str(max(a.streams)), "--listen", "127.0.0.1:0", *tls],
                                   log_dir / "serve.log")
    try:
        for n in a.streams:
            clips = [np.roll(base, i, axis=2) for i in range(n)]
            restore_served(address, [c[:push * 2] for c in clips], push, a.tls_ca)     # warm-up
            local, served = [], []
            for r in range(a.rounds):
                order = (("local", local), ("served", served)) if r % 2 == 0 else (("served", served), ("local", local))
                for kind, times in order:
                    times.append(restore_local(model, clips, push) if kind == "local" else
                                 restore_served(address, clips, push, a.tls_ca))
            frames = n * a.frames
            out_bytes = frames * spec.output_size[0] * spec.output_size[1] * 3
            results["runs"][f"{n} stream(s)"] = {
                "local_s": local, "served_s": served,
                "local_fps": frames / statistics.median(local), "served_fps": frames / statistics.median(served),
                "served_out_MBps": out_bytes / statistics.median(served) / 1e6,
                "ratio_per_round": [lo / se for lo, se in zip(local, served)],
                "ratio_median": statistics.median(lo / se for lo, se in zip(local, served))}
    finally:
        stop_server(server)
    return results


def ceiling(a, log_dir: Path) -> dict:
    (w, h), scale = parse_size(a.ceiling_size), a.ceiling_scale
    out_size = (w * scale, h * scale)
    push = a.ceiling_push
    tls = ["--noop-tls", str(a.tls_ca), str(a.tls_key)] if a.tls else []
    server, address = start_server(["-m", "runtime.serve.bench", "--noop-server", "127.0.0.1:0",
                                    "--ceiling-size", a.ceiling_size, "--ceiling-scale", str(scale),
                                    "--ceiling-push", str(push), *tls], log_dir / "noop.log")
    results = {"input": f"{w}x{h}", "output": f"{out_size[0]}x{out_size[1]}", "push_frames": push, "runs": {}}
    try:
        frame = np.random.default_rng(2).integers(0, 255, (a.ceiling_frames, h, w, 3), np.uint8)
        for n in a.streams:
            restore_served(address, [frame[:push * 2]] * n, push, a.tls_ca)                # warm-up
            times = [restore_served(address, [frame] * n, push, a.tls_ca) for _ in range(a.rounds)]
            frames = n * a.ceiling_frames
            seconds = statistics.median(times)
            results["runs"][f"{n} stream(s)"] = {
                "seconds": times, "fps": frames / seconds,
                "out_MBps": frames * out_size[0] * out_size[1] * 3 / seconds / 1e6,
                "in_MBps": frames * w * h * 3 / seconds / 1e6}
    finally:
        stop_server(server)
    hop = [line for line in (log_dir / "noop.log").read_text().splitlines() if line.startswith("ray hop alone")]
    results["ray_hop"] = hop[0] if hop else None
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m runtime.serve.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", help="the bundle to measure (a cpu bundle on a CPU)")
    p.add_argument("--streams", type=int, nargs="+", default=[1, 4])
    p.add_argument("--frames", type=int, default=96, help="frames per stream (default 96)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--ceiling-size", default="480x270", help="no-op model's input size (default 480x270)")
    p.add_argument("--ceiling-scale", type=int, default=4, help="its output = input x scale (default 4: 1080p)")
    p.add_argument("--ceiling-push", type=int, default=4, help="frames per push in the ceiling run (default 4)")
    p.add_argument("--ceiling-frames", type=int, default=240, help="frames per stream in the ceiling run")
    p.add_argument("--tls", action="store_true", help="TLS on loopback (a self-signed certificate made by openssl)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--noop-server", metavar="HOST:PORT", help=argparse.SUPPRESS)
    p.add_argument("--noop-tls", nargs=2, metavar=("CERT", "KEY"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.noop_server:
        w, h = parse_size(a.ceiling_size)
        noop_server(a.noop_server, (w, h), (w * a.ceiling_scale, h * a.ceiling_scale), 24, a.ceiling_push, a.noop_tls)
        return 0
    log_dir = Path(a.json).parent if a.json else Path(".")
    a.tls_ca, a.tls_key = self_signed(log_dir) if a.tls else (None, None)
    results = {"machine": f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start",
               "transport": "TLS" if a.tls else "plaintext", "loopback": True}
    if a.engine:
        results["bundle"] = measure(a, log_dir)
    results["ceiling"] = ceiling(a, log_dir)
    text = json.dumps(results, indent=1)
    print(text)
    if a.json:
        Path(a.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
