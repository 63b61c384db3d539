"""python -m runtime.bench: how fast each optimisation makes the torch backend, per resolution.

    python -m runtime.bench --res 1080p,1440p,2160p --json $OUT/bench.json           (GPU: 5b, bf16)
    python -m runtime.bench --preset tiny --res 64x64 --device cpu --clip-len 4       (same code on a CPU)

It builds the model once with seeded random weights directly on the device (no files), then runs
a ladder of variants, each on top of the best one so far and kept only if it pays:

  eager            what the reference does: stages one after the other, SDPA's own kernel choice,
                   separate q/k/v, bf16, conditioning precomputed (as in every variant: ~1 ms)
  fused-qkv        one GEMM for q/k/v
  channels-last    the ReAE's convolutions NHWC
  cudnn-benchmark  cuDNN times its conv algorithms per shape (CUDA)
  attention        the fastest SDPA kernel (flash / cudnn / efficient; CPU: flash / math), picked by
                   timing the DiT with each, forced with sdpa_kernel so the one reported is the one run
  compile          torch.compile of the DiT blocks and ReAE stages (compile time reported apart)
  cuda-graphs      each stage replayed from a CUDA graph per shape (CUDA)
  fp8              the DiT's per-token linears in FP8 (swiftvr/fp8.py); on a CPU, or a GPU below
                   SM 8.9, the emulated kernel: its numerics are real, its speed is not measured

For each variant and resolution (output size; input = output / --scale):
  * a check pass (a stream's FIRST chunk, then a MIDDLE chunk) whose DiT latents and frames are
    compared with the eager run's: max |difference| of the latents, PSNR of the frames;
  * warm-up chunks (compilation, graph capture, cuDNN autotuning happen here and in the check);
  * first-chunk latency: a fresh stream's FIRST chunk (clip_len + 4 frames), device time from its
    frames on the device to its frames decoded, median of --first-repeats;
  * sequential: one stream for all stages, per-stage time per MIDDLE chunk (median of --repeats,
    CUDA events around each stage), FPS = frames / time between chunk completions;
  * overlapped: encode k+1 / DiT k / decode k-1 on three CUDA streams (threads on a CPU), 3 chunks
    in flight, FPS in the steady state;
  * peak device memory (torch.cuda.max_memory_allocated and _reserved, reset per mode).
Inputs are random frames (never zeros), rotated over --rotate chunks; frames stay on the device:
uploads and downloads are not counted (python -m runtime.stream --benchmark counts them).

The DiT's matmul FLOPs are counted from the shapes (dit_flops) and set against a matrix product
measured on the same device, so the gap to the arithmetic ceiling is printed. The JSON (--json)
holds the machine, the command line and every number; a short table is printed last.

Files: this one is the command line; ladder.py measures (each chunk goes through
contract.chunks.run_chunk on the torch backend's Runner, the step a Session runs); machine.py
probes the machine and its matmul / copy ceilings; report.py prints and writes the results; the
FLOP model of the DiT is swiftvr/flops.py. `python -m runtime.stream --benchmark`
(runtime/throughput.py) measures a whole Session instead, uploads and downloads included.
"""

import argparse
import sys

from swiftvr.flops import dit_flops
from ..backends.torch import import_torch
from .ladder import LADDER, STAGES, Settings, bench_stream, elapsed_ms, pays, run_bench
from .machine import measure_ceilings
from .report import format_summary, format_table, say

__all__ = ["LADDER", "STAGES", "Settings", "bench_stream", "dit_flops", "elapsed_ms", "format_summary", "format_table",
           "main", "measure_ceilings", "parse_args", "pays", "run_bench"]


def parse_args(argv=None) -> Settings:
    p = argparse.ArgumentParser(prog="python -m runtime.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="5b", help="model preset with seeded random weights (default 5b)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="cuda, cuda:N or cpu (default: cuda when there is one)")
    p.add_argument("--precision", choices=["bf16", "fp32", "fp16"], help="default bf16 on CUDA, fp32 on a CPU")
    p.add_argument("--res", default="1080p,1440p,2160p", help="output sizes, names or WxH, comma separated")
    p.add_argument("--scale", type=float, default=4, help="input = output / scale (default 4)")
    p.add_argument("--clip-len", type=int, default=24, help="frames per MIDDLE chunk (default 24)")
    p.add_argument("--variants", default=",".join(LADDER), help=f"which of {','.join(LADDER)} (eager always first)")
    p.add_argument("--repeats", type=int, default=5, help="timed chunks per mode (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="MIDDLE chunks run before timing (default 2)")
    p.add_argument("--first-repeats", type=int, default=3, help="first-chunk latency runs (default 3)")
    p.add_argument("--rotate", type=int, default=3, help="distinct input chunks rotated through (default 3)")
    p.add_argument("--compile-mode", default="default", choices=["default", "max-autotune-no-cudagraphs"],
                   help="torch.compile mode (default: default; max-autotune-no-cudagraphs autotunes GEMMs "
                        "for minutes per shape)")
    p.add_argument("--fp8", default="row", choices=["row", "tensor"], help="FP8 weight scaling (default row)")
    p.add_argument("--fp8-fast-accum", action="store_true", help="_scaled_mm use_fast_accum")
    p.add_argument("--keep-threshold", type=float, default=0.02,
                   help="a variant is kept when it cuts the chunk time by more than this (default 0.02)")
    p.add_argument("--budget-s", type=float, help="start no new measurement after this many seconds")
    p.add_argument("--json", help="write every number here (rewritten after each measurement)")
    p.add_argument("--no-ceilings", dest="ceilings", action="store_false", help="skip the matmul / copy ceilings")
    p.add_argument("--threads", type=int, help="torch CPU threads (torch.set_num_threads; default: torch's). On a "
                                               "CPU shared with other work, 1 avoids OpenMP teams waiting on "
                                               "descheduled threads")
    a = p.parse_args(argv)
    device = a.device
    if device is None:
        torch = import_torch()
        device = "cuda" if torch.cuda.is_available() else "cpu"
    variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in LADDER]
    if unknown:
        p.error(f"unknown variants {unknown}; known: {', '.join(LADDER)}")
    if "eager" not in variants:
        variants.insert(0, "eager")
    if a.clip_len < 4 or a.clip_len % 4:
        p.error("--clip-len must be a positive multiple of 4")
    if min(a.repeats, a.first_repeats, a.rotate) < 1 or a.warmup < 0:
        p.error("--repeats, --first-repeats and --rotate must be >= 1, --warmup >= 0")
    return Settings(preset=a.preset, seed=a.seed, device=device,
                    precision=a.precision or ("bf16" if device.startswith("cuda") else "fp32"),
                    resolutions=[r.strip() for r in a.res.split(",") if r.strip()], scale=a.scale,
                    clip_len=a.clip_len, variants=variants, repeats=a.repeats, warmup=a.warmup,
                    first_repeats=a.first_repeats, rotate=a.rotate, compile_mode=a.compile_mode, fp8=a.fp8,
                    fp8_fast_accum=a.fp8_fast_accum, keep_threshold=a.keep_threshold, budget_s=a.budget_s,
                    json=a.json, ceilings=a.ceilings, threads=a.threads)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    settings = parse_args(argv)
    report = run_bench(settings, argv)
    say("")
    say(f"{report['command']}  ({report['elapsed_s']} s; ms per MIDDLE chunk of {settings.clip_len} frames, "
        f"median of {settings.repeats}; x seq / x ovl: FPS over the eager sequential FPS)")
    say(format_table(report))
    say(format_summary(report))
    return 0
