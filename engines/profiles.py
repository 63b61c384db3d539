"""The GPUs a bundle can target: one row per deployable GPU, plus `cpu` (ONNX Runtime).

What decides a row:
  * flavour: which builder makes the engines.
      'tensorrt-rtx'  TensorRT for RTX: builds ahead of time on any machine, no GPU needed, for the
                      compute capabilities listed (SM75..SM121; it has no SM90 target).
      'tensorrt'      full TensorRT: Hopper (SM90) needs it; it builds on, and for, the GPU it runs on.
      'onnx'          no engines; the bundle carries the ONNX graphs for ONNX Runtime.
  * precisions: the networks are strongly typed, so the precision is the export's float dtype.
    fp32 is not offered on GPUs: the fused attention kernels exist for fp16/bf16 only, and
    TensorRT-RTX fails to build fp32 ONNX Attention ("not supported by a dedicated kernel").
    Turing (SM75) has no bf16 tensor cores. ONNX Runtime's CPU kernels lack bf16 for most ops.
  * memory_budget_gb: device memory the engines of one bundle may use (weights + scratch), i.e.
    the card's memory less what the CUDA context, the display and the video I/O buffers need.
    The builder refuses graphs whose weights do not fit and caps each engine's scratch at it, and
    make_bundle refuses a bundle whose planned GPU total (engines/memory.py) exceeds it.
  * memory_gb: the card's memory (GB as sold), shown beside the plan by `engines.inspect`.
    `--vram GB` (python -m engines, engines.make, make engine VRAM=) plans for another amount:
    its budget keeps the profile's reserve (memory_budget below).
  * pcie_gb_s: the host link's rate per direction (GB/s after line coding: PCIe 4.0 x16 31.5, x8
    15.8; 5.0 x16 63.0, x8 31.5), for the cost of weight streaming (engines/fit.py); None where
    the GPU shares the host's memory (GB10) or there is no GPU.

The 8, 12 and 16 GB desktop cards keep 1 GiB back: the CUDA context and TensorRT-RTX's compiled
kernels (a few hundred MiB) and a desktop's display (a few hundred MiB more).
"""
import math
from dataclasses import dataclass

FLAVOURS = ("tensorrt-rtx", "tensorrt", "onnx")


@dataclass(frozen=True)
class GpuProfile:
    name: str
    flavour: str                          # one of FLAVOURS
    compute_capabilities: tuple[str, ...]  # "major.minor"; empty for cpu
    default_precision: str                # what to export for this target
    precisions: tuple[str, ...]           # what the target can run
    memory_budget_gb: float | None        # GiB; None: host memory (cpu)
    notes: str
    pcie_gb_s: float | None = None        # host link, GB/s per direction; None: unified memory or cpu

    @property
    def memory_gb(self) -> float | None:
        return CARD_MEMORY_GB.get(self.name)


# The card's memory as sold; None for cpu (host memory).
CARD_MEMORY_GB = {"rtx5090": 32, "rtx-pro-6000": 96, "gb10": 128, "rtx4090": 24, "l40s": 48, "rtx3090": 24,
                  "a100": 40, "rtx2080ti": 11, "h100": 80, "h200": 141,
                  "rtx4060": 8, "rtx4060ti-8": 8, "rtx4060ti-16": 16, "rtx4070": 12, "rtx4070ti-super": 16,
                  "rtx4080": 16, "rtx5060ti-16": 16, "rtx5070": 12, "rtx5070ti": 16, "rtx5080": 16}
PCIE4_X8, PCIE4_X16, PCIE5_X8, PCIE5_X16, PCIE3_X16 = 15.8, 31.5, 31.5, 63.0, 15.8

_ROWS = [
    GpuProfile("rtx5090", "tensorrt-rtx", ("12.0",), "bf16", ("bf16", "fp16"), 30.0,
               "GeForce RTX 5090, 32 GB, Blackwell.", PCIE5_X16),
    GpuProfile("rtx-pro-6000", "tensorrt-rtx", ("12.0",), "bf16", ("bf16", "fp16"), 90.0,
               "RTX PRO 6000 Blackwell, 96 GB.", PCIE5_X16),
    GpuProfile("gb10", "tensorrt-rtx", ("12.1",), "bf16", ("bf16", "fp16"), 100.0,
               "DGX Spark GB10: 128 GB unified memory shared with the CPU side."),
    GpuProfile("rtx4090", "tensorrt-rtx", ("8.9",), "bf16", ("bf16", "fp16"), 22.0,
               "GeForce RTX 4090, 24 GB, Ada.", PCIE4_X16),
    GpuProfile("l40s", "tensorrt-rtx", ("8.9",), "bf16", ("bf16", "fp16"), 44.0,
               "L40S, 48 GB, Ada.", PCIE4_X16),
    GpuProfile("rtx3090", "tensorrt-rtx", ("8.6",), "bf16", ("bf16", "fp16"), 22.0,
               "GeForce RTX 3090, 24 GB, Ampere.", PCIE4_X16),
    GpuProfile("a100", "tensorrt-rtx", ("8.0",), "bf16", ("bf16", "fp16"), 38.0,
               "A100 40 GB (budget sized for the 40 GB part; the 80 GB part fits the same bundle).", PCIE4_X16),
    GpuProfile("rtx2080ti", "tensorrt-rtx", ("7.5",), "fp16", ("fp16",), 10.0,
               "GeForce RTX 2080 Ti, 11 GB, Turing: no bf16. The 5B DiT's fp16 weights (~10 GB) "
               "do not fit without weight streaming.", PCIE3_X16),
    # The 8, 12 and 16 GB desktop cards: Ada (SM 8.9) and Blackwell GeForce (SM 12.0), 1 GiB kept back.
    GpuProfile("rtx4060", "tensorrt-rtx", ("8.9",), "bf16", ("bf16", "fp16"), 7.0,
               "GeForce RTX 4060, 8 GB, Ada, PCIe 4.0 x8.", PCIE4_X8),
    GpuProfile("rtx4060ti-8", "tensorrt-rtx", ("8.9",), "bf16", ("bf16", "fp16"), 7.0,
               "GeForce RTX 4060 Ti 8 GB, Ada, PCIe 4.0 x8.", PCIE4_X8),
    GpuProfile("rtx4060ti-16", "tensorrt-rtx", ("8.9",), "bf16", ("bf16", "fp16"), 15.0,
               "GeForce RTX 4060 Ti 16 GB, Ada, PCIe 4.0 x8.", PCIE4_X8),
    GpuProfile("rtx4070", "tensorrt-rtx", ("8.9",), "bf16", ("bf16", "fp16"), 11.0,
               "GeForce RTX 4070 (and 4070 Super, 4070 Ti), 12 GB, Ada.", PCIE4_X16),
    GpuProfile("rtx4070ti-super", "tensorrt-rtx", ("8.9",), "bf16", ("bf16", "fp16"), 15.0,
               "GeForce RTX 4070 Ti Super, 16 GB, Ada.", PCIE4_X16),
    GpuProfile("rtx4080", "tensorrt-rtx", ("8.9",), "bf16", ("bf16", "fp16"), 15.0,
               "GeForce RTX 4080 (and 4080 Super), 16 GB, Ada.", PCIE4_X16),
    GpuProfile("rtx5060ti-16", "tensorrt-rtx", ("12.0",), "bf16", ("bf16", "fp16"), 15.0,
               "GeForce RTX 5060 Ti 16 GB, Blackwell, PCIe 5.0 x8.", PCIE5_X8),
    GpuProfile("rtx5070", "tensorrt-rtx", ("12.0",), "bf16", ("bf16", "fp16"), 11.0,
               "GeForce RTX 5070, 12 GB, Blackwell.", PCIE5_X16),
    GpuProfile("rtx5070ti", "tensorrt-rtx", ("12.0",), "bf16", ("bf16", "fp16"), 15.0,
               "GeForce RTX 5070 Ti, 16 GB, Blackwell.", PCIE5_X16),
    GpuProfile("rtx5080", "tensorrt-rtx", ("12.0",), "bf16", ("bf16", "fp16"), 15.0,
               "GeForce RTX 5080, 16 GB, Blackwell.", PCIE5_X16),
    GpuProfile("h100", "tensorrt", ("9.0",), "bf16", ("bf16", "fp16"), 76.0,
               "H100 80 GB, Hopper: TensorRT-RTX has no SM90 target, so full TensorRT (>= 10.14 for "
               "ONNX Attention), built on an H100.", PCIE5_X16),
    GpuProfile("h200", "tensorrt", ("9.0",), "bf16", ("bf16", "fp16"), 134.0,
               "H200 141 GB, Hopper: full TensorRT (>= 10.14), built on an H100/H200.", PCIE5_X16),
    GpuProfile("cpu", "onnx", (), "fp32", ("fp32", "fp16"), None,
               "No engines: the ONNX graphs (and external data) for ONNX Runtime."),
]

PROFILES: dict[str, GpuProfile] = {p.name: p for p in _ROWS}

# Quantized exports (python -m calibration) each target runs, by compute capability. FP8 tensor
# cores: Ada (SM89) and Blackwell (SM120/121) through TensorRT-RTX, Hopper (SM90) through full
# TensorRT. TensorRT-RTX 1.7 refuses FP8 for SM80/86 ("HW-specific datatypes: fp8_e4m3"). INT8 is
# offered for `cpu` only: ONNX Runtime fuses INT8 Q/DQ MatMul/Conv into integer kernels there.
FP8_CAPABILITIES = ("8.9", "9.0", "12.0", "12.1")


def quantizations(profile: GpuProfile) -> tuple[str, ...]:
    if profile.flavour == "onnx":
        return ("int8",)
    return ("fp8",) if set(profile.compute_capabilities) <= set(FP8_CAPABILITIES) else ()


def check_quantization(profile: GpuProfile, quantization: str) -> None:
    """Raise if `profile` cannot run graphs quantized to `quantization` (int8 | fp8)."""
    offered = quantizations(profile)
    if quantization in offered:
        return
    if quantization == "fp8":
        why = (f"FP8 needs SM {', '.join(FP8_CAPABILITIES)} (Ada, Hopper, Blackwell); {profile.name} is SM "
               f"{', '.join(profile.compute_capabilities) or '-'}" + (" (TensorRT-RTX: \"HW-specific datatypes: "
               "fp8_e4m3\")" if profile.flavour == "tensorrt-rtx" else "")
               if profile.flavour != "onnx" else "ONNX Runtime's CPU kernels have no FP8 (it would dequantize "
               "and run float32, slower than unquantized)")
    else:
        why = "INT8 bundles are built for the cpu profile (ONNX Runtime) only"
    raise ValueError(f"{quantization} is not available on {profile.name}: {why}. "
                     f"{profile.name} takes {', '.join(offered) or 'no quantized precision'}.")
assert all(p.flavour in FLAVOURS for p in _ROWS)
assert all((p.memory_gb is None) == (p.memory_budget_gb is None) for p in _ROWS)


def memory_budget(profile: GpuProfile, vram_gb: float | None = None) -> float | None:
    """GiB a bundle may plan for: the profile's budget, or with `vram_gb` (the card's memory as sold,
    or what another user of the GPU leaves) that less the profile's reserve (CUDA context, display,
    video I/O). None for cpu (host memory)."""
    if vram_gb is not None and not (math.isfinite(vram_gb) and vram_gb > 0):
        raise ValueError(f"--vram {vram_gb:g}: give the GPU's memory in GB, a number above 0 (8, 12, 16...)")
    if vram_gb is None or profile.memory_budget_gb is None:
        if vram_gb is not None:
            raise ValueError(f"--vram is for GPU profiles; {profile.name} runs in host memory")
        return profile.memory_budget_gb
    budget = round(vram_gb - (profile.memory_gb - profile.memory_budget_gb), 6)
    if budget <= 0:
        raise ValueError(f"--vram {vram_gb:g}: {profile.name} keeps {profile.memory_gb - profile.memory_budget_gb:g} "
                         f"GiB back for the CUDA context, the display and video I/O, which leaves nothing")
    return budget


def get_profile(name: str) -> GpuProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown GPU profile {name!r}; known: {', '.join(PROFILES)}") from None


def check_precision(profile: GpuProfile, precision: str) -> None:
    """Raise if `profile` cannot run graphs exported in `precision`."""
    if precision in profile.precisions:
        return
    why = ""
    if precision == "fp32" and profile.flavour != "onnx":
        why = (" TensorRT's fused attention kernels need fp16 or bf16 (TensorRT-RTX fails to build "
               "fp32 ONNX Attention).")
    elif precision == "bf16" and profile.compute_capabilities == ("7.5",):
        why = " Turing (SM75) has no bf16."
    elif precision == "bf16" and profile.flavour == "onnx":
        why = " ONNX Runtime's CPU kernels have no bf16 for most ops."
    raise ValueError(f"precision {precision} is not available on {profile.name}: it runs "
                     f"{', '.join(profile.precisions)}.{why} Export with --precision "
                     f"{profile.default_precision} for this target.")
