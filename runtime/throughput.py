"""--benchmark: the model on synthetic chunks, without decoding or encoding any video.

For each mode (stages overlapped with 3 chunks in flight; then one chunk at a time, stages one
after the other) it warms up, then pushes `chunks` MIDDLE chunks of random frames and reports:
  * per-stage latency, median over the timed chunks (CUDA: GPU time between events on the stage's
    stream; CPU: wall time of the stage's call),
  * throughput: frames out / wall time of the timed part,
  * peak device memory (torch: its allocator's peak; TensorRT: device memory in use as the driver
    reports it, sampled as chunks finish; CPU: n/a).
"""
import time

import numpy as np

from .backend import LoadedModel
from .session import Session

MODES = (("overlap", 3, True), ("sequential", 1, False))


def run_benchmark(model: LoadedModel, chunks: int = 8, warmup: int = 2, seed: int = 0) -> dict:
    spec = model.spec
    width, height = spec.input_size
    rng = np.random.default_rng(seed)
    clip = rng.integers(0, 256, (spec.clip_len, height, width, 3), dtype=np.uint8)
    results = {"model": spec.describe(), "chunk_frames": spec.clip_len, "timed_chunks": chunks, "modes": {}}
    for name, in_flight, overlap in MODES:
        with Session(model, in_flight=in_flight, overlap=overlap) as session:
            # FIRST chunk (clip_len + 4 frames) and `warmup` MIDDLE chunks; one more frame so the
            # last of them is planned (the planner waits for proof that a chunk is not the last).
            session.push(np.concatenate([clip[:4], *[clip] * (warmup + 1), clip[:1]]))
            session.drain()
            session.stats.reset()
            model.reset_peak_memory()
            start = time.perf_counter()
            done_before = session.frames_out
            for _ in range(chunks):
                session.push(clip)
            session.drain()
            seconds = time.perf_counter() - start
            frames = session.frames_out - done_before
            memory = model.memory()
            results["modes"][name] = {
                "in_flight": in_flight, "overlap": overlap, "frames": frames, "seconds": round(seconds, 3),
                "fps": round(frames / seconds, 3),
                "stages_ms": {stage: s["median_ms"] for stage, s in session.stats.summary().items()},
                "peak_device_memory_bytes": memory.get("peak_bytes"), "device": memory.get("device")}
    return results


def format_benchmark(results: dict) -> str:
    lines = [f"benchmark: {results['model']}",
             f"  {results['timed_chunks']} chunks of {results['chunk_frames']} frames after warm-up; "
             f"stage latency = median per chunk"]
    for name, r in results["modes"].items():
        stages = ", ".join(f"{stage} {ms:.1f} ms" for stage, ms in r["stages_ms"].items())
        peak = r["peak_device_memory_bytes"]
        memory = "n/a (CPU)" if peak is None else f"{peak / 2**20:.0f} MiB"
        lines.append(f"  {name:10s} (in flight {r['in_flight']}): {r['fps']:.2f} frames/s; {stages}; "
                     f"peak device memory {memory}")
    return "\n".join(lines)
