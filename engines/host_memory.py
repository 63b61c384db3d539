"""What a `cpu` bundle needs in host memory, measured: the plan of a bundle whose target is this machine.

For a GPU bundle the builder can only estimate activations (engines/memory.py). A cpu bundle runs
where it is built, so the build measures it instead: a child process loads the graphs with the
runtime's ONNX Runtime settings (contract/onnxruntime.py: one shared CPU arena) and runs the largest
chunk the chunk protocol makes (the FIRST chunk: clip_len + 4 frames) through the graph chain
(contract/chain.py: the ReAE in the bundle's slices, the DiT chain, the decoder), as a Session does.
Its peak resident memory is the model's share of a stream's; the frames a stream keeps in flight
(the video job's queues, the chunk being assembled, restored chunks waiting) are added from their sizes.

Why measured and not estimated: ONNX Runtime's planner and kernel scratch space (convolution
buffers) made the real peak 1.5 to 2.6 times the ONNX liveness estimate of engines/memory.py on the
ReAE, and an arena per session had made it 4 times the plan (docs/benchmarks.md "Host memory").

    python -m engines.host_memory EXPORT_DIR [--reae-slice N]      (prints the measurement as JSON)
"""
import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np

# The video job's bounds (runtime/restore_video.py): reader and writer queues of two batches each,
# one chunk being assembled, and the restored chunks of `in_flight` chunks on the CPU (1).
QUEUED_INPUT_BATCHES, QUEUED_OUTPUT_CHUNKS, CHUNKS_IN_FLIGHT = 2, 2, 1
MEASURE_TIMEOUT_S = 1800


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024     # Linux reports KiB


def measure(export_dir, reae_slice: int | None = None) -> dict:
    """In this process (a fresh one: the peak is the process's): load, then one largest chunk."""
    from contract.chain import GraphChain
    from contract.onnxruntime import SessionRunner, export_sessions
    from engines.export_folder import read_export, with_reae_slice

    export = read_export(export_dir)
    if reae_slice:
        export = with_reae_slice(export, reae_slice)
    contract = export.contract
    sessions = export_sessions(export.path, contract)
    loaded = peak_rss_bytes()
    chain = GraphChain(contract, SessionRunner(sessions))
    chunk = export.meta["chunk"]
    frames_in = chunk["clip_len"] + 4
    width, height = export.meta["input_size"]
    frames = np.random.default_rng(0).integers(0, 256, (frames_in, height, width, 3), dtype=np.uint8)
    latents, _ = chain.encode(frames, chain.zero_state("encoder"))
    out, _ = chain.decode(chain.dit(latents), chain.zero_state("decoder"))
    return {"loaded_bytes": loaded, "peak_bytes": peak_rss_bytes(), "chunk_frames": frames_in,
            "output_frame_bytes": int(np.prod(out.shape[1:])), "input_frame_bytes": int(np.prod(frames.shape[1:]))}


def measure_in_child(export_dir, reae_slice: int | None = None) -> dict:
    """measure() in a fresh interpreter (its peak is the model's alone); raises RuntimeError with the
    child's last message when it fails (e.g. killed for memory)."""
    command = [sys.executable, "-m", "engines.host_memory", str(export_dir)]
    command += ["--reae-slice", str(reae_slice)] if reae_slice else []
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(command, capture_output=True, text=True, timeout=MEASURE_TIMEOUT_S, env=env)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise RuntimeError(f"measuring host memory failed: {last}")
    return json.loads(done.stdout)


def host_plan(measured: dict, clip_len: int) -> dict:
    """The manifest's `host_memory`: the measurement and the frames a stream keeps besides it."""
    chunk_out = measured["chunk_frames"] * measured["output_frame_bytes"]
    frames = (QUEUED_INPUT_BATCHES * clip_len + measured["chunk_frames"]) * measured["input_frame_bytes"] + \
        (QUEUED_OUTPUT_CHUNKS + CHUNKS_IN_FLIGHT) * chunk_out
    return {"measured": measured, "frames_bytes": frames, "total_bytes": measured["peak_bytes"] + frames,
            "how": "peak RSS of a child process that loads the graphs with the runtime's ONNX Runtime settings and "
                   "runs the largest chunk through the graph chain, plus the frames a stream holds in flight"}


def available_bytes() -> int | None:
    """MemAvailable of /proc/meminfo (Linux); None elsewhere."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def plan_or_reason(export_dir, reae_slice: int | None, estimate: dict, clip_len: int) -> dict:
    """host_plan of a measurement, or {"not_measured": why} when measuring could exhaust this machine
    (the ONNX estimate, which real runs exceed by up to 3x here, against the memory available)."""
    free = available_bytes()
    if free is not None and 3 * estimate["total_bytes"] > free:
        advice = "; --reae-slice 1 needs the least" if reae_slice != 1 else ""
        return {"not_measured": f"the ONNX estimate ({estimate['total_bytes'] / 2**30:.1f} GiB) times 3 exceeds the "
                                f"{free / 2**30:.1f} GiB available: measuring could exhaust this machine{advice}"}
    try:
        return host_plan(measure_in_child(export_dir, reae_slice), clip_len)
    except (RuntimeError, subprocess.TimeoutExpired, ValueError) as e:
        return {"not_measured": str(e)}


def describe(plan: dict) -> list[str]:
    """engines.inspect's lines for a cpu bundle."""
    if "not_measured" in plan:
        return [f"memory    host: not measured at build ({plan['not_measured']})"]
    gib = 2 ** 30
    m = plan["measured"]
    return [f"memory    host: {plan['total_bytes'] / gib:.2f} GiB per stream = measured {m['peak_bytes'] / gib:.2f} GiB "
            f"(graphs loaded {m['loaded_bytes'] / gib:.2f} + the largest chunk's run) + frames in flight "
            f"{plan['frames_bytes'] / gib:.2f} GiB",
            f"          (measured at build: {plan['how']})"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m engines.host_memory", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("export", help="export folder")
    p.add_argument("--reae-slice", type=int, help="latent frames per ReAE call (as python -m engines)")
    a = p.parse_args(argv)
    print(json.dumps(measure(a.export, a.reae_slice)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
