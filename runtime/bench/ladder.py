"""runtime.bench's measurements: the ladder of variants, each measured per resolution by driving
chunks through contract.chunks.run_chunk on the torch backend's Runner (the step a Session runs).
See runtime/bench/__init__.py for the method.
"""
import dataclasses
import math
import shutil
import statistics
import time
from dataclasses import dataclass, field, replace

from contract.chunks import StreamState, plan_chunks, run_chunk
from swiftvr.flops import dit_flops
from contract.sizes import parse_size, resolution_name

from ..backend import Runner
from ..backends.torch import TorchModel, TorchOptions, TorchSource, import_torch, torch_dtype
from ..lanes import OnDevice, StageStats
from .machine import machine_info, measure_ceilings, time_calls
from .report import PAPER_H100, describe_resolution, describe_run, flops_text, say, write_json

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


class BenchOps:
    """The chunk step's ChunkOps for the bench: a Runner whose chunks' frames are already on the
    device (uploads and downloads are not measured here), whose emitted frames stay there, which
    stamps each decode's end and can keep each chunk's DiT input and output."""

    def __init__(self, runner: Runner, keep: bool):
        self.runner, self.keep = runner, keep
        self.encode = runner.encode
        self.concat, self.take_last, self.zeros = runner.concat, runner.take_last, runner.zeros
        self.dit_calls = []                  # (DiT input, DiT output) per chunk, if kept
        self.stamps = []                     # per chunk: when its decode finished (see decode)

    def dit(self, latents, chunk):
        restored = self.runner.dit(latents, chunk)
        if self.keep:
            self.dit_calls.append((latents, restored))
        return restored

    def decode(self, latents, state):
        # On CPU lanes a chunk is done when its decode returns: the host time there. On CUDA lanes
        # the stamp is an OnDevice whose event, recorded after the decode, is timed on the GPU.
        kernels = self.runner.kernels

        def decode_and_stamp(latents, state):
            return (*kernels.decode(latents, state), time.perf_counter())
        frames, state, stamp = self.runner.lanes["decode"].submit(decode_and_stamp, latents, state, outputs=3)
        self.stamps.append(stamp)
        return frames, state

    def emit(self, frames, start: int, count: int):
        return self.runner.lanes["decode"].submit(_trim, frames, start, count, timed=False)


def _trim(frames, start: int, count: int):
    return frames[start:start + count]


def bench_stream(tm: TorchModel, kernels, chunks: list, *, overlap: bool, in_flight: int,
               keep: bool = False) -> StreamRun:
    """One stream (fresh encoder / decoder state) of a FIRST chunk and MIDDLE chunks of frames on
    the device, each through contract.chunks.run_chunk on the backend's lanes, with at most
    `in_flight` chunks under way, as runtime/session.py does. `kernels` is shared by every stream
    of one measurement: its CUDA graphs and compiled code stay warm."""
    stats = StageStats()
    runner = Runner(kernels, tm.lanes(overlap, stats))
    ops = BenchOps(runner, keep)
    decode_lane = runner.lanes["decode"]
    # The plan of a stream that goes on after these chunks: FIRST, then MIDDLE chunks (one frame more
    # proves the last of them is not the stream's LAST chunk).
    total = sum(len(frames) for frames in chunks)
    plan = plan_chunks(total + 1, tm.spec.clip_len, tm.spec.dit_overlap)[:len(chunks)]
    if [c.encode_frames for c in plan] != [len(frames) for frames in chunks]:
        raise ValueError(f"chunks of {[len(f) for f in chunks]} frames are not a FIRST chunk and MIDDLE chunks")
    state = StreamState(runner.zero_state("encoder"), runner.zero_state("decoder"))
    pending, kept = [], []
    try:
        for chunk, frames in zip(plan, chunks):
            while len(pending) >= in_flight:        # bound the work under way, as a Session does
                decode_lane.wait(pending.pop(0))
            out = run_chunk(chunk, frames, ops, state)
            pending.append(out)
            if keep:
                kept.append(out)
        while pending:
            decode_lane.wait(pending.pop(0))
        marks = [stamp.event if isinstance(stamp, OnDevice) else decode_lane.wait(stamp) for stamp in ops.stamps]
        outputs = [(runner.lanes["dit"].wait(z), runner.lanes["dit"].wait(hq), decode_lane.wait(out))
                   for (z, hq), out in zip(ops.dit_calls, kept)]
    finally:
        for lane in runner.lanes.values():      # the kernels are not closed: they serve the next stream
            lane.close()
    stats.resolve()
    return StreamRun(marks, {s: list(stats.ms.get(s, [])) for s in STAGES}, outputs)


def median(values):
    return statistics.median(values) if values else None


def spread(values) -> float | None:
    """(max - min) / median: how far apart repeated timings of one thing are."""
    return (max(values) - min(values)) / statistics.median(values) if len(values) > 1 else None



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
    from contract.sizes import frame_geometry
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


def compare_with_eager(torch, outputs: list, baseline: dict) -> dict:
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
    check = bench_stream(tm, kernels, [res.first, res.middle[0]], overlap=False, in_flight=1, keep=True)
    check_s = time.perf_counter() - started
    result = {"options": options.changed(), "status": "ran", "check_pass_s": round(check_s, 3)}
    if res.baseline is None:     # this is the eager run: its outputs are what the others are checked against
        res.baseline = {"latents": [hq.float().cpu() for _, hq, _ in check.outputs],
                        "frames": [frames.cpu() for _, _, frames in check.outputs]}
        lq = check.outputs[1][0]
        res.dit_inputs = [lq.contiguous(), lq.flip(-1).contiguous()]     # two different real latents
        result["numerics"] = "baseline"
    else:
        result["numerics"] = compare_with_eager(torch, check.outputs, res.baseline)
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
    bench_stream(tm, kernels, [res.first] + middle[:max(1, s.warmup)], overlap=False, in_flight=1)
    result["warmup_s"] = round(time.perf_counter() - warm, 3)

    latency = []
    for _ in range(s.first_repeats):
        run = bench_stream(tm, kernels, [res.first], overlap=False, in_flight=1)
        latency.append(sum(run.stage_ms[stage][0] for stage in STAGES))
    result["first_chunk_ms"] = median(latency)

    # Sequential: one stream, stages one after the other; the host stays one chunk ahead.
    reset_memory(torch, device)
    run = bench_stream(tm, kernels, [res.first] + middle[:s.repeats], overlap=False, in_flight=2)
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
    run = bench_stream(tm, kernels, [res.first] + middle[:lead - 1 + s.repeats], overlap=True, in_flight=3)
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
        result["cuda_graphs_captured"] = kernels.graph_captures
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
    dtype = torch_dtype(torch, s.precision)
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

