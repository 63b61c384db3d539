"""The machine runtime.bench runs on: what it is, and its own measured rates (matmul, copy)."""
import os
import platform
import subprocess
import statistics
import time
from pathlib import Path


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
    ms = statistics.median(time_calls(torch, cuda, lambda p: p[0] @ p[1], pairs, 10))
    out = {"matmul": {"n": n, "dtype": str(dtype).removeprefix("torch."), "ms": ms, "tflops": flops / ms / 1e9}}
    from swiftvr.fp8 import quantize_rows, scaled_mm_available
    if scaled_mm_available(device, dtype):
        fp8 = [(*quantize_rows(a), *quantize_rows(b)) for a, b in pairs]

        def fp8_mm(p):
            return torch._scaled_mm(p[0], p[2].t(), scale_a=p[1], scale_b=p[3].t().contiguous(), out_dtype=dtype)
        time_calls(torch, cuda, fp8_mm, fp8, 3)
        ms = statistics.median(time_calls(torch, cuda, fp8_mm, fp8, 10))
        out["matmul_fp8"] = {"n": n, "ms": ms, "tflops": flops / ms / 1e9}
    if cuda:
        src = torch.randn(2 ** 28, device=device, generator=gen)       # 1 GiB of float32
        dst = torch.empty_like(src)
        time_calls(torch, cuda, lambda s: dst.copy_(s), [src], 3)
        ms = statistics.median(time_calls(torch, cuda, lambda s: dst.copy_(s), [src], 10))
        out["copy"] = {"bytes_read_and_written": 2 * src.numel() * 4, "ms": ms,
                       "tb_per_s": 2 * src.numel() * 4 / ms / 1e9}
        del src, dst
    del pairs
    return out

