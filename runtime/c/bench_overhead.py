"""What the C ABI costs: frames/s through libswiftvr against runtime.Session called from Python, on
the same bundle, the same frames and the same push sizes, in one process.

    python runtime/c/bench_overhead.py --model BUNDLE --build build/c [--frames 48] [--rounds 15]

The library is loaded with ctypes into this Python process, so it joins this interpreter (as it
does in any host that already runs Python) and loads its own copy of the model: two models, same
ONNX Runtime settings, same process, same threads. ctypes lets go of the interpreter lock around
each call and the library takes it back, exactly as from a C program; ctypes' own cost per call
(about a microsecond) is counted against the C side. Passes alternate (C first in even rounds,
Python first in odd ones) so that drift in the machine's load hits both alike; both are warmed up
once. Only push / receive / flush are timed. Overhead = 1 - C median / Python median, and the
same from the median of each round's C / Python ratio (less sensitive to slow drift).
"""
import argparse
import ctypes
import statistics
import sys
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
    with Session(model) as session:           # the model's default in flight, as the library's
        for at in range(0, len(frames), batch):
            session.push(frames[at:at + batch])
        session.flush()
    return len(frames) / (time.perf_counter() - start)


class Library:
    """The few swiftvr.h functions the benchmark calls."""

    def __init__(self, path: Path):
        lib = self.lib = ctypes.CDLL(str(path))
        vp, sz = ctypes.c_void_p, ctypes.c_size_t
        lib.swiftvr_last_error.restype = ctypes.c_char_p
        lib.swiftvr_model_open.argtypes = [ctypes.c_char_p, vp, ctypes.POINTER(vp)]
        lib.swiftvr_session_open.argtypes = [vp, vp, ctypes.POINTER(vp)]
        lib.swiftvr_session_push.argtypes = [vp, vp, sz, ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.swiftvr_session_flush.argtypes = [vp]
        lib.swiftvr_session_ready.argtypes = [vp]
        lib.swiftvr_session_ready.restype = sz
        lib.swiftvr_session_receive.argtypes = [vp, vp, sz, ctypes.POINTER(sz)]
        lib.swiftvr_session_free.argtypes = [vp]
        lib.swiftvr_model_output_size.argtypes = [vp, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int)]

    def check(self, status: int) -> None:
        if status:
            sys.exit(f"libswiftvr: {self.lib.swiftvr_last_error().decode()}")


def c_fps(lib: Library, model, frames: np.ndarray, batch: int, out: np.ndarray) -> float:
    """Like restore_raw: push `batch` frames, receive what is ready, flush, receive the rest."""
    L, session, got = lib.lib, ctypes.c_void_p(), ctypes.c_size_t()
    count, height, width = frames.shape[:3]
    frame_bytes = frames[0].nbytes
    base, out_ptr = frames.ctypes.data, out.ctypes.data
    lib.check(L.swiftvr_session_open(model, None, ctypes.byref(session)))
    start = time.perf_counter()
    for at in range(0, count, batch):
        lib.check(L.swiftvr_session_push(session, base + at * frame_bytes, min(batch, count - at), width, height, 0))
        lib.check(L.swiftvr_session_receive(session, out_ptr, len(out), ctypes.byref(got)))
    lib.check(L.swiftvr_session_flush(session))
    lib.check(L.swiftvr_session_receive(session, out_ptr, len(out), ctypes.byref(got)))
    seconds = time.perf_counter() - start
    L.swiftvr_session_free(session)
    return count / seconds


def call_costs(lib: Library, c_model, model, frame: np.ndarray, calls: int = 2000) -> tuple[float, float]:
    """Seconds per push of one frame that completes no chunk (copy in, planner, no backend work),
    through the C API and from Python: what the ABI adds per call, without the backend's noise."""
    from runtime import Session
    L, session = lib.lib, ctypes.c_void_p()
    height, width = frame.shape[:2]
    lib.check(L.swiftvr_session_open(c_model, None, ctypes.byref(session)))
    # A long clip_len would be needed to never finish a chunk; instead each session takes fewer
    # frames than its first chunk needs and is replaced.
    c_total = py_total = 0.0
    for _ in range(calls // 8):
        start = time.perf_counter()
        for _ in range(8):
            lib.check(L.swiftvr_session_push(session, frame.ctypes.data, 1, width, height, 0))
        c_total += time.perf_counter() - start
        L.swiftvr_session_free(session)
        lib.check(L.swiftvr_session_open(c_model, None, ctypes.byref(session)))
        py_session = Session(model)
        start = time.perf_counter()
        for _ in range(8):
            py_session.push(frame)
        py_total += time.perf_counter() - start
        py_session.close()
    L.swiftvr_session_free(session)
    n = calls // 8 * 8
    return c_total / n, py_total / n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="bundle file or export folder")
    p.add_argument("--build", default=str(ROOT / "build/c"), help="CMake build folder with libswiftvr.so")
    p.add_argument("--frames", type=int, default=48, help="frames per pass (default 48)")
    p.add_argument("--batch", type=int, default=8, help="frames per push (default 8)")
    p.add_argument("--rounds", type=int, default=15, help="alternating rounds (default 15)")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads per graph (default: one per core)")
    a = p.parse_args(argv)

    from runtime import load_bundle
    model = load_bundle(a.model, threads=a.threads or None)
    width, height = model.spec.input_size
    out_width, out_height = model.spec.output_size
    frames = moving_frames(a.frames, width, height)
    out = np.empty((a.frames, out_height, out_width, 3), np.uint8)

    lib = Library(Path(a.build) / "libswiftvr.so")
    options = None
    if a.threads:                 # swiftvr_model_options: struct_size, backend, device, threads, verify
        class ModelOptions(ctypes.Structure):
            _fields_ = [("struct_size", ctypes.c_size_t), ("backend", ctypes.c_char_p),
                        ("device", ctypes.c_char_p), ("threads", ctypes.c_int), ("verify", ctypes.c_int)]
        options = ctypes.byref(ModelOptions(ctypes.sizeof(ModelOptions), None, None, a.threads, 1))
    c_model = ctypes.c_void_p()
    lib.check(lib.lib.swiftvr_model_open(str(a.model).encode(), options, ctypes.byref(c_model)))

    python_fps(model, frames, a.batch)                    # warm-up, both
    c_fps(lib, c_model, frames, a.batch, out)
    c, py = [], []
    for r in range(a.rounds):
        for side in (("c", "py") if r % 2 == 0 else ("py", "c")):
            if side == "c":
                c.append(c_fps(lib, c_model, frames, a.batch, out))
            else:
                py.append(python_fps(model, frames, a.batch))
    c_median, py_median = statistics.median(c), statistics.median(py)
    print(f"model: {model.spec.describe()}")
    print(f"{a.frames} frames per pass, {a.batch} per push, {a.rounds} rounds, threads {a.threads or 'default'}")
    print(f"C API (libswiftvr)     frames/s: median {c_median:.2f}  ({', '.join(f'{v:.2f}' for v in c)})")
    print(f"Python runtime.Session frames/s: median {py_median:.2f}  ({', '.join(f'{v:.2f}' for v in py)})")
    c_call, py_call = call_costs(lib, c_model, model, frames[0])
    print(f"one push of one frame that starts no chunk: C API {1e6 * c_call:.1f} us, Python {1e6 * py_call:.1f} us "
          f"(+{1e6 * (c_call - py_call):.1f} us per call = {100 * (c_call - py_call) * py_median:.3f} % of a "
          f"frame's time at {py_median:.1f} frames/s, one push per frame)")
    paired = statistics.median(cv / pv for cv, pv in zip(c, py))
    print(f"overhead of the C ABI: {100 * (1 - c_median / py_median):+.1f} % (ratio of medians), "
          f"{100 * (1 - paired):+.1f} % (median of the per-round ratios)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
