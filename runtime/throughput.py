"""--benchmark: the model on synthetic chunks, without decoding or encoding any video.

First a warm-up runs every shape a stream can use once (warm_up_streams: the encoder's T of 4 to
clip_len+4 frames, the decoder's 1 to clip_len/4+1 latents, each DiT latent count), so nothing is
compiled or specialised in the timed part, whatever the backend does at a new shape (TensorRT-RTX
compiles kernels, torch.compile traces, CUDA graphs capture); its time is reported as the cost of
a first run. TensorRT-RTX keeps those kernels in its runtime cache (runtime/backends/rtxcache.py),
so a --benchmark run also prepares later runs on this GPU.

Then, for each mode (stages overlapped with 3 chunks in flight; then one chunk at a time, stages one
after the other) it warms up, then pushes `chunks` MIDDLE chunks of random frames and reports:
  * per-stage latency, median over the timed chunks (CUDA: GPU time between events on the stage's
    stream; CPU: wall time of the stage's call),
  * throughput: frames out / wall time of the timed part,
  * peak device memory (torch: its allocator's peak; TensorRT: device memory in use as the driver
    reports it, sampled as chunks finish; CPU: n/a).
"""
import time

import numpy as np

from contract.chunks import plan_chunks

from .backend import LoadedModel
from .session import Session

MODES = (("overlap", 3, True), ("sequential", 1, False))


def warm_up_streams(clip_len: int) -> list[int]:
    """Frame counts of streams that together make every call shape any stream makes: a stream of
    4b+1 frames is one chunk encoding 4b+4 frames into b+1 latents, DiT'd at the FIRST/LAST count;
    b = 0 .. clip_len/4 gives every encoder and decoder length. Two more chunks (FIRST, MIDDLE) give
    the MIDDLE chunks' DiT count: the benchmark's own warm-up runs those in each mode."""
    return [4 * b + 1 for b in range(clip_len // 4 + 1)]


def stream_shapes(frames: int, clip_len: int, overlap: int) -> set[tuple[str, int]]:
    """("encoder", T), ("dit", F), ("decoder", n) of every call a stream of `frames` frames makes."""
    shapes = set()
    for chunk in plan_chunks(frames, clip_len, overlap):
        shapes |= {("encoder", chunk.encode_frames), ("dit", chunk.dit_latents), ("decoder", chunk.latents)}
    return shapes


def warm_up(model: LoadedModel, rng) -> dict:
    spec = model.spec
    width, height = spec.input_size
    start = time.perf_counter()
    for frames in warm_up_streams(spec.clip_len):
        with Session(model) as session:
            session.push(rng.integers(0, 256, (frames, height, width, 3), dtype=np.uint8))
            session.flush()
    # + the FIRST and MIDDLE chunks each mode warms up with below
    streams = warm_up_streams(spec.clip_len) + [2 * spec.clip_len + 5]
    shapes = set().union(*(stream_shapes(f, spec.clip_len, spec.dit_overlap) for f in streams))
    return {"seconds": round(time.perf_counter() - start, 3),
            **{f"{stage}_shapes": sorted(n for s, n in shapes if s == stage) for stage in ("encoder", "dit", "decoder")}}


def run_benchmark(model: LoadedModel, chunks: int = 8, warmup: int = 2, seed: int = 0) -> dict:
    spec = model.spec
    width, height = spec.input_size
    rng = np.random.default_rng(seed)
    clip = rng.integers(0, 256, (spec.clip_len, height, width, 3), dtype=np.uint8)
    results = {"model": spec.describe(), "chunk_frames": spec.clip_len, "timed_chunks": chunks,
               "warmup": warm_up(model, rng), "modes": {}}
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
    w = results["warmup"]
    lines = [f"benchmark: {results['model']}",
             f"  warm-up: every shape a stream uses (encoder T {w['encoder_shapes']}, DiT F {w['dit_shapes']}, "
             f"decoder n {w['decoder_shapes']}) once, {w['seconds']:.1f} s: what a first run pays for new shapes",
             f"  {results['timed_chunks']} chunks of {results['chunk_frames']} frames after warm-up; "
             f"stage latency = median per chunk"]
    for name, r in results["modes"].items():
        stages = ", ".join(f"{stage} {ms:.1f} ms" for stage, ms in r["stages_ms"].items())
        peak = r["peak_device_memory_bytes"]
        memory = "n/a (CPU)" if peak is None else f"{peak / 2**20:.0f} MiB"
        lines.append(f"  {name:10s} (in flight {r['in_flight']}): {r['fps']:.2f} frames/s; {stages}; "
                     f"peak device memory {memory}")
    return "\n".join(lines)
