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
"""
import argparse
import dataclasses
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path

from swiftvr.sizes import parse_size, resolution_name

from ..backends.torch import OnDevice, TorchModel, TorchOptions, TorchSource, import_torch
from ..lanes import STAGES as LANE_STAGES, StageStats

LADDER = ("eager", "fused-qkv", "channels-last", "cudnn-benchmark", "attention", "compile", "cuda-graphs", "fp8")
STAGES = ("encode", "dit", "decode")
CUDA_ATTENTION = ("flash", "cudnn", "efficient")
CPU_ATTENTION = ("flash", "math")
# Which SDPA implementation an aten op name in the profiler means.
SDPA_OPS = {"aten::_scaled_dot_product_flash_attention_for_cpu": "flash",
            "aten::_scaled_dot_product_flash_attention": "flash",
            "aten::_scaled_dot_product_efficient_attention": "efficient",
            "aten::_scaled_dot_product_cudnn_attention": "cudnn",
            "aten::_scaled_dot_product_attention_math": "math",
            "aten::_scaled_dot_product_fused_attention_overrideable": "overrideable"}
PAPER_H100 = {  # SwiftVR paper, one H100, PyTorch bf16, 24-frame chunks, stages sequential
    "1080p": {"encode_ms": 25.67, "dit_ms": 327.72, "decode_ms": 85.37, "fps": 54.42, "memory_gb": 29.26},
    "1440p": {"encode_ms": 45.10, "dit_ms": 566.31, "decode_ms": 151.74, "fps": 31.32, "memory_gb": 38.01},
    "2160p": {"fps": 13.84},
}


@dataclass
class Settings:
    preset: str
    seed: int
    device: str
    precision: str
    resolutions: list
    scale: float
    clip_len: int
    variants: list
    repeats: int
    warmup: int
    first_repeats: int
    rotate: int
    compile_mode: str
    fp8: str
    fp8_fast_accum: bool
    keep_threshold: float
    budget_s: float | None
    json: str | None
    ceilings: bool
    threads: int | None = None


# ---- FLOPs -------------------------------------------------------------------------------------
def dit_flops(cfg, grid: tuple[int, int, int], prompt_len: int) -> dict:
    """Multiply-add FLOPs (2 per MAC) of one DiT call on a token grid (frames, rows, cols), from the
    shapes alone. Linears: 2*K*in*out each; self-attention per window of L tokens: QK^T and PV,
    2*L*L*dim each, over the windows of the layer's layout (plain or shifted); cross-attention
    against the P prompt tokens: 2*K*P*dim twice. The cross-attention k/v and the timestep MLP are
    in the precomputed Conditioning and not counted."""
    from swiftvr import geometry

    frames, rows, cols = grid
    tokens = frames * rows * cols
    dim, ffn, layers = cfg.inner_dim, cfg.ffn_dim, cfg.num_layers
    patch = math.prod(cfg.patch_size)
    window_flops = 0
    for layout in geometry.attention_layouts(grid, cfg.self_attn_window_hw, layers):
        length = layout.tokens_per_window
        window_flops += layout.num_windows * 2 * (2 * length * length * dim)
    out = {
        "patch_embed": 2 * tokens * cfg.in_channels * patch * dim,
        "self_qkv": layers * 3 * 2 * tokens * dim * dim,
        "self_out": layers * 2 * tokens * dim * dim,
        "self_attention": window_flops,
        "cross_q": layers * 2 * tokens * dim * dim,
        "cross_attention": layers * 2 * (2 * tokens * prompt_len * dim),
        "cross_out": layers * 2 * tokens * dim * dim,
        "ffn": layers * 2 * (2 * tokens * dim * ffn),
        "proj_out": 2 * tokens * dim * cfg.out_channels * patch,
    }
    out["fp8_linears"] = out["self_qkv"] + out["self_out"] + out["cross_q"] + out["cross_out"] + out["ffn"]
    out["total"] = sum(v for k, v in out.items() if k != "fp8_linears")
    out["tokens"] = tokens
    return out


# ---- timing helpers ----------------------------------------------------------------------------
def elapsed_ms(marks: list, first: int, last: int) -> float:
    """Time between two chunks' completions: CUDA events (device time), or host seconds."""
    a, b = marks[first], marks[last]
    return a.elapsed_time(b) if hasattr(a, "elapsed_time") else (b - a) * 1e3


@dataclass
class StreamRun:
    marks: list                       # per chunk: the CUDA event after its decode, or host seconds
    stage_ms: dict                    # stage -> [ms per chunk]
    outputs: list = field(default_factory=list)   # (DiT input, DiT output, frames) per chunk if kept


def run_stream(tm: TorchModel, kernels, chunks: list, *, overlap: bool, in_flight: int,
               keep: bool = False) -> StreamRun:
    """One stream of chunks (fresh encoder / decoder state) through encode -> DiT -> decode on the
    backend's lanes, with at most `in_flight` chunks under way, as runtime/session.py does."""
    stats = StageStats()
    lanes = tm.lanes(overlap, stats)
    pending, stamps, kept = deque(), [], []
    encoder_state = decoder_state = None

    def decode(hq, state):
        # On the CPU lanes a chunk is done when its decode returns: stamp the host time there.
        frames, state = kernels.decode(hq, state)
        return frames, state, time.perf_counter()
    try:
        for frames in chunks:
            while len(pending) >= in_flight:
                lanes["decode"].wait(pending.popleft())
            lq, encoder_state = lanes["encode"].submit(kernels.encode, frames, encoder_state, outputs=2)
            hq = lanes["dit"].submit(kernels.dit, lq)
            out, decoder_state, stamp = lanes["decode"].submit(decode, hq, decoder_state, outputs=3)
            # CUDA lanes: the event recorded after the decode (its OnDevice's), timed on the GPU.
            stamps.append(stamp.event if isinstance(stamp, OnDevice) else stamp)
            pending.append(out)
            if keep:
                kept.append((lq, hq, out))
        while pending:
            lanes["decode"].wait(pending.popleft())
        marks = [m if hasattr(m, "elapsed_time") else lanes["decode"].wait(m) for m in stamps]
        outputs = [tuple(lanes[s].wait(v) for s, v in zip(STAGES, item)) for item in kept]
    finally:
        for stage in LANE_STAGES:
            lanes[stage].close()
    stats.resolve()
    return StreamRun(marks, {s: list(stats.ms.get(s, [])) for s in STAGES}, outputs)


def median(values):
    return statistics.median(values) if values else None


def spread(values) -> float | None:
    """(max - min) / median: how far apart repeated timings of one thing are."""
    return (max(values) - min(values)) / statistics.median(values) if len(values) > 1 else None


def time_calls(torch, cuda: bool, fn, inputs: list, repeats: int) -> list[float]:
    """ms of each call fn(inputs[i % len]), CUDA events around each on the current stream."""
    times = []
    for i in range(repeats):
        x = inputs[i % len(inputs)]
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(x)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            start = time.perf_counter()
            fn(x)
            times.append((time.perf_counter() - start) * 1e3)
    return times


def sdpa_kernels_used(torch, fn) -> dict:
    """{implementation: calls} of the SDPA ops that ran inside fn(), from the profiler's op names."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    used = {}
    for event in prof.events():
        if event.name in SDPA_OPS:
            used[SDPA_OPS[event.name]] = used.get(SDPA_OPS[event.name], 0) + 1
    return used


# ---- machine and ceilings ----------------------------------------------------------------------
def machine_info(torch, device) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "cpu": _cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, compute_capability=f"{props.major}.{props.minor}",
                    multiprocessors=props.multi_processor_count, gpu_memory_bytes=props.total_memory,
                    cuda_runtime=torch.version.cuda, cudnn=torch.backends.cudnn.version())
        try:
            line = subprocess.run(["nvidia-smi", f"--id={device.index or 0}",
                                   "--query-gpu=driver_version,clocks.max.sm,power.limit",
                                   "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout
            driver, clock, power = [x.strip() for x in line.strip().split(",")]
            info.update(driver=driver, max_sm_clock=clock, power_limit=power)
        except (OSError, ValueError, subprocess.SubprocessError) as e:
            info["driver"] = f"unknown (nvidia-smi: {e})"
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def measure_ceilings(torch, device, dtype) -> dict:
    """The device's own rates, measured: a large matrix product in the model's dtype (and in FP8
    where the kernel exists) and a device-to-device copy. Random operands, rotated; median."""
    cuda = device.type == "cuda"
    n = 8192 if cuda else 1024
    gen = torch.Generator(device=device).manual_seed(1234)
    pairs = [(torch.randn(n, n, device=device, dtype=dtype, generator=gen),
              torch.randn(n, n, device=device, dtype=dtype, generator=gen)) for _ in range(2)]
    flops = 2 * n ** 3
    time_calls(torch, cuda, lambda p: p[0] @ p[1], pairs, 3)          # warm-up (cuBLAS handles, clocks)
    ms = median(time_calls(torch, cuda, lambda p: p[0] @ p[1], pairs, 10))
    out = {"matmul": {"n": n, "dtype": str(dtype).removeprefix("torch."), "ms": ms, "tflops": flops / ms / 1e9}}
    from swiftvr.fp8 import quantize_rows, scaled_mm_available
    if scaled_mm_available(device, dtype):
        fp8 = [(*quantize_rows(a), *quantize_rows(b)) for a, b in pairs]

        def fp8_mm(p):
            return torch._scaled_mm(p[0], p[2].t(), scale_a=p[1], scale_b=p[3].t().contiguous(), out_dtype=dtype)
        time_calls(torch, cuda, fp8_mm, fp8, 3)
        ms = median(time_calls(torch, cuda, fp8_mm, fp8, 10))
        out["matmul_fp8"] = {"n": n, "ms": ms, "tflops": flops / ms / 1e9}
    if cuda:
        src = torch.randn(2 ** 28, device=device, generator=gen)       # 1 GiB of float32
        dst = torch.empty_like(src)
        time_calls(torch, cuda, lambda s: dst.copy_(s), [src], 3)
        ms = median(time_calls(torch, cuda, lambda s: dst.copy_(s), [src], 10))
        out["copy"] = {"bytes_read_and_written": 2 * src.numel() * 4, "ms": ms,
                       "tb_per_s": 2 * src.numel() * 4 / ms / 1e9}
        del src, dst
    del pairs
    return out


# ---- one resolution ----------------------------------------------------------------------------
@dataclass
class Resolution:
    name: str
    input_size: tuple
    output_size: tuple
    first: object                    # a stream's FIRST chunk: clip_len + 4 frames uint8 on the device
    middle: list                     # MIDDLE chunks (clip_len frames), rotated through
    grid: tuple                      # DiT token grid of a MIDDLE chunk
    flops: dict
    baseline: dict | None = None     # the eager run's check-pass outputs (CPU copies)
    dit_inputs: list | None = None   # MIDDLE-chunk DiT inputs from the eager run (attention trial)


def make_resolution(torch, s: Settings, model, text: str, device) -> Resolution:
    from swiftvr.sizes import frame_geometry
    output = parse_size(text)
    inputs = (round(output[0] / s.scale), round(output[1] / s.scale))
    geom = frame_geometry(inputs, output)
    gen = torch.Generator().manual_seed(s.seed + 17)
    width, height = inputs

    def chunk(frames):
        return torch.randint(0, 256, (frames, height, width, 3), dtype=torch.uint8, generator=gen).to(device)
    latent_w, latent_h = geom.latent_size
    cfg = model.transformer.cfg
    grid = (s.clip_len // 4, latent_h // cfg.patch_size[1], latent_w // cfg.patch_size[2])
    prompt_len = model.prompt_emb.shape[0]
    return Resolution(resolution_name(output), inputs, output, chunk(s.clip_len + 4),
                      [chunk(s.clip_len) for _ in range(s.rotate)], grid, dit_flops(cfg, grid, prompt_len))


def compare(torch, outputs: list, baseline: dict) -> dict:
    """The check pass against the eager run's: latents max |d| and relative L2, frames PSNR."""
    lat_max, lat_err, lat_ref, nonfinite = 0.0, 0.0, 0.0, 0
    sse, count, frame_max = 0.0, 0, 0
    for (_, hq, frames), base_hq, base_frames in zip(outputs, baseline["latents"], baseline["frames"]):
        hq = hq.float()
        nonfinite += int((~torch.isfinite(hq)).sum())
        ref = base_hq.to(hq.device)
        diff = hq - ref
        lat_max = max(lat_max, float(diff.abs().max()))
        lat_err += float(diff.double().square().sum())
        lat_ref += float(ref.double().square().sum())
        for frame, base in zip(frames, base_frames):        # one frame at a time: 2160p chunks are large
            d = frame.float() - base.to(frame.device).float()
            sse += float(d.double().square().sum())
            frame_max = max(frame_max, int(d.abs().max()))
            count += d.numel()
    mse = sse / count
    return {"latents_max_abs": lat_max, "latents_rel_l2": math.sqrt(lat_err / lat_ref) if lat_ref else None,
            "latents_nonfinite": nonfinite, "frames_max_abs": frame_max,
            "frames_psnr_db": None if mse == 0 else 10 * math.log10(255 ** 2 / mse), "frames_identical": mse == 0}


def memory_peaks(torch, device) -> dict | None:
    if device.type != "cuda":
        return None
    return {"allocated_bytes": torch.cuda.max_memory_allocated(device),
            "reserved_bytes": torch.cuda.max_memory_reserved(device)}


def reset_memory(torch, device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def measure(torch, s: Settings, model, res: Resolution, options: TorchOptions, device, source) -> dict:
    """Every number of one variant at one resolution (see the module docstring for the method)."""
    cuda = device.type == "cuda"
    started = time.perf_counter()
    tm = TorchModel(source, res.input_size, output_size=res.output_size, clip_len=s.clip_len,
                    precision=s.precision, device=str(device), options=options, model=model)
    kernels = tm.kernels()
    middle = [res.middle[i % len(res.middle)] for i in range(s.repeats + 3)]
    check = run_stream(tm, kernels, [res.first, res.middle[0]], overlap=False, in_flight=1, keep=True)
    check_s = time.perf_counter() - started
    result = {"options": options.changed(), "status": "ran", "check_pass_s": round(check_s, 3)}
    if res.baseline is None:     # this is the eager run: its outputs are what the others are checked against
        res.baseline = {"latents": [hq.float().cpu() for _, hq, _ in check.outputs],
                        "frames": [frames.cpu() for _, _, frames in check.outputs]}
        lq = check.outputs[1][0]
        res.dit_inputs = [lq.contiguous(), lq.flip(-1).contiguous()]     # two different real latents
        result["numerics"] = "baseline"
    else:
        result["numerics"] = compare(torch, check.outputs, res.baseline)
    if not options.compile and not options.cuda_graphs:
        # Which SDPA kernel really ran (with sdpa_kernel only the chosen one can).
        lq = check.outputs[1][0]
        result["attention_ran"] = sdpa_kernels_used(torch, lambda: kernels.dit(lq))
    elif options.attention:
        result["attention_ran"] = {options.attention: "forced with sdpa_kernel"}
    del check

    # Warm-up: a shape's second use captures its CUDA graph (so at least one MIDDLE chunk here);
    # cuDNN autotuning and compiled code settle.
    warm = time.perf_counter()
    run_stream(tm, kernels, [res.first] + middle[:max(1, s.warmup)], overlap=False, in_flight=1)
    result["warmup_s"] = round(time.perf_counter() - warm, 3)

    latency = []
    for _ in range(s.first_repeats):
        run = run_stream(tm, kernels, [res.first], overlap=False, in_flight=1)
        latency.append(sum(run.stage_ms[stage][0] for stage in STAGES))
    result["first_chunk_ms"] = median(latency)

    # Sequential: one stream, stages one after the other; the host stays one chunk ahead.
    reset_memory(torch, device)
    run = run_stream(tm, kernels, [res.first] + middle[:s.repeats], overlap=False, in_flight=2)
    chunk_ms = elapsed_ms(run.marks, 0, -1) / s.repeats
    each = [elapsed_ms(run.marks, i, i + 1) for i in range(s.repeats)]
    result["stages_ms"] = {stage: median(run.stage_ms[stage][1:]) for stage in STAGES}
    result["stages_spread"] = {stage: spread(run.stage_ms[stage][1:]) for stage in STAGES}
    result["sequential"] = {"chunk_ms": chunk_ms, "fps": s.clip_len * 1e3 / chunk_ms, "chunk_ms_each": each,
                            "spread": spread(each), "peak_memory": memory_peaks(torch, device)}

    # Overlapped: encode k+1 / DiT k / decode k-1 on their own streams, 3 chunks in flight; the
    # first 3 chunks fill the pipeline and are not timed.
    reset_memory(torch, device)
    lead = 3
    run = run_stream(tm, kernels, [res.first] + middle[:lead - 1 + s.repeats], overlap=True, in_flight=3)
    chunk_ms = elapsed_ms(run.marks, lead - 1, -1) / s.repeats
    result["overlapped"] = {"chunk_ms": chunk_ms, "fps": s.clip_len * 1e3 / chunk_ms,
                            "stages_ms_under_overlap": {stage: median(run.stage_ms[stage][lead:]) for stage in STAGES},
                            "peak_memory": memory_peaks(torch, device)}

    dit_ms = result["stages_ms"]["dit"]
    result["dit_tflops"] = res.flops["total"] / dit_ms / 1e9
    # Setup that a long stream pays once: compilation, graph capture, autotuning.
    chunks_run = 2 + 1 + max(1, s.warmup)  # FIRST chunks in check and warm-up, MIDDLE chunks in both
    at_speed_s = (2 * result["first_chunk_ms"] + (chunks_run - 2) * result["sequential"]["chunk_ms"]) / 1e3
    result["setup_overhead_s"] = round(max(0.0, check_s + result["warmup_s"] - at_speed_s), 3)
    if options.fp8:
        from swiftvr.fp8 import FP8Linear
        kinds = {m.kernel for m in model.transformer.modules() if isinstance(m, FP8Linear)}
        result["fp8_kernel"] = ",".join(sorted(kinds))
        result["emulated"] = kinds != {"scaled_mm"}
    if cuda:
        result["cuda_graphs_captured"] = sum(getattr(k, "captures", 0) for k in
                                             (kernels._encode, kernels._dit, kernels._decode))
    return result


def attention_trial(torch, s: Settings, model, res: Resolution, best: TorchOptions, device, source) -> dict:
    """Time the DiT alone with SDPA's own choice and with each explicit kernel; the fastest
    explicit one that ran is the candidate (picked on one resolution: every window has the same
    token count at any resolution, only their number changes)."""
    cuda = device.type == "cuda"
    trial = {}
    default_ms = None
    for name in (None, *(CUDA_ATTENTION if cuda else CPU_ATTENTION)):
        label = name or "sdpa-default"
        try:
            tm = TorchModel(source, res.input_size, output_size=res.output_size, clip_len=s.clip_len,
                            precision=s.precision, device=str(device), options=replace(best, attention=name),
                            model=model)
            kernels = tm.kernels()
            kernels.dit(res.dit_inputs[0])                      # warm-up, and fails early if it cannot run
            times = time_calls(torch, cuda, kernels.dit, res.dit_inputs, max(3, s.repeats))
            trial[label] = {"dit_ms": median(times), "spread": spread(times)}
            if name is None:
                default_ms = median(times)
                trial[label]["ran"] = sdpa_kernels_used(torch, lambda: kernels.dit(res.dit_inputs[0]))
        except RuntimeError as e:
            trial[label] = {"error": str(e).strip().splitlines()[0][:300]}
    ran = {k: v["dit_ms"] for k, v in trial.items() if k != "sdpa-default" and "dit_ms" in v}
    pick = min(ran, key=ran.get) if ran else None
    return {"resolution": res.name, "times": trial, "pick": pick, "default_dit_ms": default_ms}


# ---- the ladder --------------------------------------------------------------------------------
def candidate(name: str, best: TorchOptions, s: Settings, cuda: bool, attention_pick: str | None):
    """(options to measure, None) or (None, why the variant cannot run here)."""
    if name == "eager":
        return TorchOptions(), None
    if name == "fused-qkv":
        return replace(best, fused_qkv=True), None
    if name == "channels-last":
        return replace(best, channels_last=True), None
    if name == "cudnn-benchmark":
        return (replace(best, cudnn_benchmark=True), None) if cuda else (None, "cuDNN autotuning needs a CUDA device")
    if name == "attention":
        if attention_pick is None:
            return None, "no explicitly selected SDPA kernel could run (see attention_trial)"
        return replace(best, attention=attention_pick), None
    if name == "compile":
        if not cuda and not (shutil.which("c++") or shutil.which("g++") or shutil.which("cc")):
            return None, "torch.compile on a CPU needs a C++ compiler, and none is on PATH"
        return replace(best, compile=s.compile_mode), None
    if name == "cuda-graphs":
        return (replace(best, cuda_graphs=True), None) if cuda else (None, "CUDA graphs need a CUDA device")
    if name == "fp8":
        return replace(best, fp8=s.fp8, fp8_fast_accum=s.fp8_fast_accum), None
    raise ValueError(f"unknown variant {name!r}; known: {', '.join(LADDER)}")


def pays(results: dict, best_results: dict, threshold: float) -> tuple[bool, float | None, float]:
    """(kept, ratio, noise). ratio: geometric mean over resolutions of sequential ms per chunk over
    the best variant's so far. Kept when ratio < 1 - max(threshold, noise), noise being the largest
    spread of repeated chunk times in either run: a gain inside it could be chance. Every
    resolution must have run, and an emulated kernel is never kept."""
    ratios, noise = [], 0.0
    for res, r in results.items():
        b = best_results.get(res)
        if r.get("status") != "ran" or not b or b.get("status") != "ran" or r.get("emulated"):
            return False, None, noise
        ratios.append(r["sequential"]["chunk_ms"] / b["sequential"]["chunk_ms"])
        noise = max(noise, r["sequential"]["spread"] or 0.0, b["sequential"]["spread"] or 0.0)
    if not ratios:
        return False, None, noise
    ratio = math.exp(sum(map(math.log, ratios)) / len(ratios))
    return ratio < 1 - max(threshold, noise), ratio, noise


def run_bench(s: Settings, argv: list) -> dict:
    torch = import_torch()
    if s.threads:
        torch.set_num_threads(s.threads)
    device = torch.device(s.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {s.device}: this torch ({torch.__version__}) sees no CUDA GPU")
    cuda = device.type == "cuda"
    if cuda and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    dtype = getattr(torch, {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[s.precision])
    started = time.perf_counter()
    report = {"command": " ".join(["python -m runtime.bench", *argv]), "argv": argv,
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "settings": dataclasses.asdict(s),
              "machine": machine_info(torch, device), "paper_h100": PAPER_H100, "resolutions": {},
              "variants": {}, "ladder": []}
    say(f"SwiftVR bench: preset {s.preset}, {s.precision} on {report['machine'].get('gpu', device)}; "
        f"clip_len {s.clip_len}, scale {s.scale}; torch {torch.__version__}")
    if s.ceilings:
        report["ceilings"] = measure_ceilings(torch, device, dtype)
        c = report["ceilings"]
        say(f"measured ceilings: {c['matmul']['dtype']} matmul {flops_text(c['matmul']['tflops'] * 1e12, True)}"
            + (f", fp8 matmul {flops_text(c['matmul_fp8']['tflops'] * 1e12, True)}" if "matmul_fp8" in c else "")
            + (f", copy {c['copy']['tb_per_s']:.2f} TB/s" if "copy" in c else ""))
    from swiftvr.random_checkpoint import random_model
    t = time.perf_counter()
    model = random_model(s.preset, s.seed, dtype, str(device))
    if cuda:
        torch.cuda.synchronize(device)
    report["model_build_s"] = round(time.perf_counter() - t, 2)
    report["model_parameters"] = sum(p.numel() for p in model.transformer.parameters()) + \
        sum(p.numel() for p in model.reae.parameters())
    source = TorchSource(preset=s.preset, seed=s.seed)
    resolutions = [make_resolution(torch, s, model, text, device) for text in s.resolutions]
    for res in resolutions:
        report["resolutions"][res.name] = describe_resolution(res, s, report.get("ceilings"))
        say(report["resolutions"][res.name]["summary"])

    best, best_name = TorchOptions(), None
    attention_pick = None
    for name in [v for v in LADDER if v in s.variants]:
        if name != "eager" and best_name is None:
            break                                   # nothing to compare with
        if name == "attention" and resolutions[0].dit_inputs is not None:
            trial = attention_trial(torch, s, model, resolutions[0], best, device, source)
            report["attention_trial"] = trial
            attention_pick = trial["pick"]
            times = [f"{k} {v['dit_ms']:.1f} ms" if "dit_ms" in v else f"{k}: {v['error']}"
                     for k, v in trial["times"].items()]
            say(f"attention trial ({trial['resolution']}): " + ", ".join(times))
        options, why_not = candidate(name, best, s, cuda, attention_pick)
        entry = report["variants"][name] = {}
        if options is None:
            for res in resolutions:
                entry[res.name] = {"status": "skipped", "reason": why_not}
            report["ladder"].append({"variant": name, "kept": False, "skipped": why_not})
            say(f"{name}: skipped ({why_not})")
            continue
        if cuda:
            torch.backends.cudnn.benchmark = False        # only the variant that asks for it has it
        if name == "fp8" and best.compile:
            import torch._dynamo
            torch._dynamo.reset()    # the compiled blocks hold the bf16 linears; FP8 recompiles anyway
        for res in resolutions:
            if s.budget_s is not None and time.perf_counter() - started > s.budget_s:
                entry[res.name] = {"status": "skipped", "reason": f"time budget of {s.budget_s:.0f} s spent"}
                continue
            try:
                entry[res.name] = measure(torch, s, model, res, options, device, source)
            except Exception as e:                     # record it and go on with the other variants
                entry[res.name] = {"status": "failed", "options": options.changed(),
                                   "error": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:400]}"}
            free(torch, device)
            say(describe_run(name, res.name, entry[res.name], report))
            write_json(report, s.json)
        if name == "eager":
            kept, ratio, noise = all(r.get("status") == "ran" for r in entry.values()), 1.0, None
        else:
            kept, ratio, noise = pays(entry, report["variants"][best_name], s.keep_threshold)
        report["ladder"].append({"variant": name, "options": options.changed(), "kept": kept,
                                 "chunk_time_ratio_vs_best": ratio, "noise": noise})
        if kept:
            best, best_name = options, name
        elif options.compile:
            import torch._dynamo
            torch._dynamo.reset()                      # let its compiled code and caches go
        why = "" if ratio is None or name == "eager" else \
            f" (sequential chunk time x{ratio:.3f} of the best so far; noise {noise:.1%})"
        say(f"{name}: {'kept' if kept else 'not kept'}{why}")
    kept = [e["variant"] for e in report["ladder"] if e["kept"]]
    report["best_without_fp8"] = next((v for v in reversed(kept) if v != "fp8"), None)
    report["best"] = {"variant": best_name, "options": best.changed()}
    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    write_json(report, s.json)
    return report


def free(torch, device) -> None:
    import gc
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


# ---- reporting ---------------------------------------------------------------------------------
def flops_text(flops: float, per_second: bool = False) -> str:
    """1.2e14 -> '120 TFLOP', 4.5e6 -> '4.5 MFLOP' (tiny models on a CPU need the small units)."""
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(flops) >= size:
            break
    return f"{flops / size:.3g} {unit}FLOP" + ("/s" if per_second else "")


def say(line: str) -> None:
    print(line, flush=True)


def write_json(report: dict, path: str | None) -> None:
    if not path:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(report, indent=1, default=str))
    os.replace(tmp, path)


def describe_resolution(res: Resolution, s: Settings, ceilings: dict | None) -> dict:
    f = res.flops
    frames, rows, cols = res.grid
    info = {"input_size": list(res.input_size), "output_size": list(res.output_size),
            "dit_token_grid": list(res.grid), "dit_tokens": f["tokens"], "dit_flops": f,
            "dit_flops_per_output_frame": f["total"] / s.clip_len}
    text = (f"{res.name}: {res.input_size[0]}x{res.input_size[1]} -> {res.output_size[0]}x{res.output_size[1]}, "
            f"DiT {frames}x{rows}x{cols} = {f['tokens']} tokens per MIDDLE chunk; matmul per chunk "
            f"{flops_text(f['total'])} ({flops_text(f['total'] / s.clip_len)} per output frame; "
            f"attention {100 * (f['self_attention'] + f['cross_attention']) / f['total']:.0f}%)")
    if ceilings:
        rate = ceilings["matmul"]["tflops"]
        floor_ms = f["total"] / rate / 1e9
        info["dit_floor_ms"] = floor_ms
        text += (f"; DiT floor at {flops_text(rate * 1e12, True)}: {floor_ms:.3g} ms = "
                 f"{s.clip_len * 1e3 / floor_ms:.4g} FPS")
        if "matmul_fp8" in ceilings:
            fp8_floor = (f["fp8_linears"] / ceilings["matmul_fp8"]["tflops"]
                         + (f["total"] - f["fp8_linears"]) / rate) / 1e9
            info["dit_floor_fp8_ms"] = fp8_floor
            text += f" (FP8 linears: {fp8_floor:.3g} ms = {s.clip_len * 1e3 / fp8_floor:.4g} FPS)"
    info["summary"] = text
    return info


def describe_run(name: str, res: str, r: dict, report: dict) -> str:
    if r.get("status") != "ran":
        return f"{name} @ {res}: {r['status']} ({r.get('reason') or r.get('error')})"
    st = r["stages_ms"]
    eager = report["variants"].get("eager", {}).get(res, {})
    ratio = (f", x{r['sequential']['fps'] / eager['sequential']['fps']:.2f} / "
             f"x{r['overlapped']['fps'] / eager['sequential']['fps']:.2f} vs eager sequential"
             if eager.get("status") == "ran" else "")
    num = r["numerics"]
    check = "" if num == "baseline" else (f"; vs eager: latents max|d| {num['latents_max_abs']:.3g}, frames "
                                          + ("identical" if num["frames_identical"] else
                                             f"PSNR {num['frames_psnr_db']:.1f} dB"))
    return (f"{name} @ {res}: encode {st['encode']:.2f} / DiT {st['dit']:.2f} / decode {st['decode']:.2f} ms, "
            f"{r['sequential']['fps']:.2f} FPS sequential, {r['overlapped']['fps']:.2f} overlapped{ratio}; "
            f"first chunk {r['first_chunk_ms']:.1f} ms; DiT {flops_text(r['dit_tflops'] * 1e12, True)}"
            + (f" ({100 * r['dit_tflops'] / report['ceilings']['matmul']['tflops']:.0f}% of the matmul ceiling)"
               if "ceilings" in report else "") + check
            + (" [fp8 emulated: numerics only]" if r.get("emulated") else ""))


def format_summary(report: dict) -> str:
    """Per resolution: eager, the best variant without FP8, FP8; with the paper's anchor and the
    targets (1.5x the paper's FPS in bf16, 2.2x with FP8: 80 and 120 FPS at 1080p) for the 5b preset."""
    lines = []
    variants, best = report["variants"], report.get("best_without_fp8")
    five_b = report["settings"]["preset"] == "5b"
    for res in report["resolutions"]:
        parts = []
        for label, name in (("eager", "eager"), (f"best without fp8 ({best})", best), ("fp8", "fp8")):
            r = variants.get(name or "", {}).get(res, {})
            if r.get("status") == "ran":
                peak = r["sequential"]["peak_memory"]
                parts.append(f"{label} {r['sequential']['fps']:.2f} seq / {r['overlapped']['fps']:.2f} ovl FPS"
                             + (f", {peak['allocated_bytes'] / 1e9:.1f} GB" if peak else "")
                             + (" (emulated)" if r.get("emulated") else ""))
        paper = PAPER_H100.get(res) if five_b else None
        if paper:
            parts.append(f"paper H100 {paper['fps']} FPS"
                         + (f", {paper['memory_gb']} GB" if "memory_gb" in paper else "")
                         + f"; targets bf16 >= {paper['fps'] * 80 / 54.42:.1f}, "
                           f"fp8 >= {paper['fps'] * 120 / 54.42:.1f}")
        lines.append(f"{res}: " + "; ".join(parts))
    return "\n".join(lines)


def _gb(peak: dict | None, key: str) -> str:
    return "-" if not peak else f"{peak[key] / 1e9:.2f}"


def format_table(report: dict) -> str:
    rows = [("res", "variant", "kept", "enc ms", "DiT ms", "dec ms", "seq FPS", "ovl FPS", "x seq", "x ovl",
             "first ms", "GB alloc", "GB resv", "DiT TF/s", "lat max|d|", "PSNR dB")]
    kept = {e["variant"]: e["kept"] for e in report["ladder"]}
    for res in report["resolutions"]:
        eager = report["variants"].get("eager", {}).get(res, {})
        base = eager["sequential"]["fps"] if eager.get("status") == "ran" else None
        for name, per_res in report["variants"].items():
            r = per_res.get(res, {})
            if r.get("status") != "ran":
                rows.append((res, name, "-", r.get("status", "-"), *["" for _ in range(12)]))
                continue
            num = r["numerics"]
            lat = "base" if num == "baseline" else f"{num['latents_max_abs']:.2g}"
            psnr = ("base" if num == "baseline" else "inf" if num["frames_identical"]
                    else f"{num['frames_psnr_db']:.1f}")
            st, seq, ovl = r["stages_ms"], r["sequential"], r["overlapped"]
            mark = ("emul" if r.get("emulated") else "yes" if kept.get(name) else "no")
            rows.append((res, name, mark, f"{st['encode']:.1f}", f"{st['dit']:.1f}", f"{st['decode']:.1f}",
                         f"{seq['fps']:.2f}", f"{ovl['fps']:.2f}",
                         f"{seq['fps'] / base:.2f}" if base else "-", f"{ovl['fps'] / base:.2f}" if base else "-",
                         f"{r['first_chunk_ms']:.1f}", _gb(seq["peak_memory"], "allocated_bytes"),
                         _gb(seq["peak_memory"], "reserved_bytes"), f"{r['dit_tflops']:.3g}", lat, psnr))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).rjust(w) if i > 2 else str(c).ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    return "\n".join(lines)


# ---- command line ------------------------------------------------------------------------------
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


if __name__ == "__main__":
    sys.exit(main())
