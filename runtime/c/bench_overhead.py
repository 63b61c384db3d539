"""What the C ABI costs: frames/s through libswiftvr (restore_raw --bench) against runtime.Session
called from Python, on the same bundle, the same frames and the same push sizes, in one run.

    python runtime/c/bench_overhead.py --model BUNDLE --build build/c [--frames 48] [--rounds 7]

Rounds alternate the two (C first in odd rounds, Python first in even ones) so that drift in the
machine's load hits both alike. Each side is warm when timed: the C program restores the frames
twice per round and reports the second pass; Python restores them once before the first round.
Only push / receive / flush are timed (no file or pipe I/O). Overhead = 1 - C median / Python median.
"""
import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def moving_frames(count: int, width: int, height: int) -> np.ndarray:
    """Smooth moving patterns (not zeros, not noise): a clip the model does real work on."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = [np.stack([np.sin(x / 5 + i / 3), np.cos(y / 4 - i / 5), np.sin((x + y) / 7 + i / 4)], -1)
              for i in range(count)]
    return np.clip(128 + 90 * np.array(frames), 0, 255).astype(np.uint8)


def python_fps(model, frames: np.ndarray, batch: int) -> float:
    from runtime import Session
    start = time.perf_counter()
    with Session(model, in_flight=model.default_in_flight) as session:
        for at in range(0, len(frames), batch):
            session.push(frames[at:at + batch])
        session.flush()
    return len(frames) / (time.perf_counter() - start)


def c_fps(program: Path, model_path: str, size: str, raw: Path, batch: int, threads: int) -> float:
    args = [str(program), model_path, size, "--bench", "2", "--batch", str(batch)]
    if threads:
        args += ["--threads", str(threads)]
    with open(raw, "rb") as stdin:
        done = subprocess.run(args, stdin=stdin, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        sys.exit(f"{program} failed: {done.stderr.strip()}")
    return float(done.stdout.split()[-1])          # the second (warm) pass


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="bundle file or export folder")
    p.add_argument("--build", default=str(ROOT / "build/c"), help="CMake build folder with restore_raw")
    p.add_argument("--frames", type=int, default=48, help="frames per pass (default 48)")
    p.add_argument("--batch", type=int, default=8, help="frames per push (default 8)")
    p.add_argument("--rounds", type=int, default=7, help="alternating rounds (default 7)")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads per graph (default: one per core)")
    a = p.parse_args(argv)

    from runtime import load_bundle
    model = load_bundle(a.model, threads=a.threads or None)
    width, height = model.spec.input_size
    frames = moving_frames(a.frames, width, height)
    program = Path(a.build) / "restore_raw"
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "frames.rgb"
        frames.tofile(raw)
        python_fps(model, frames, a.batch)                # warm-up
        c, py = [], []
        for r in range(a.rounds):
            for side in (("c", "py") if r % 2 == 0 else ("py", "c")):
                if side == "c":
                    c.append(c_fps(program, a.model, f"{width}x{height}", raw, a.batch, a.threads))
                else:
                    py.append(python_fps(model, frames, a.batch))
    c_median, py_median = statistics.median(c), statistics.median(py)
    print(f"model: {model.spec.describe()}")
    print(f"{a.frames} frames per pass, {a.batch} per push, {a.rounds} rounds, threads {a.threads or 'default'}")
    print(f"C API (restore_raw)    frames/s: median {c_median:.2f}  ({', '.join(f'{v:.2f}' for v in c)})")
    print(f"Python runtime.Session frames/s: median {py_median:.2f}  ({', '.join(f'{v:.2f}' for v in py)})")
    print(f"overhead of the C ABI: {100 * (1 - c_median / py_median):+.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
