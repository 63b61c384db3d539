"""Where TensorRT-RTX and full TensorRT differ, and nowhere else.

The build (engines/build.py) is one code path: Builder -> strongly typed network -> OnnxParser
.parse_from_file -> BuilderConfig -> optimization profile -> build_serialized_network. The Python
APIs of the two flavours agree on all of that. They differ in:
  * the module: `tensorrt_rtx` (pip install tensorrt-rtx) vs `tensorrt` (NVIDIA's index, needs a GPU);
  * the target: RTX builds ahead of time for listed compute capabilities (no GPU needed); full
    TensorRT builds for the GPU it runs on, so check_build_machine checks that GPU is the profile's;
  * strongly typed networks: always on in RTX (the flag exists and is a no-op), a flag in TensorRT.
    We set it in both, which is why there are no FP16/BF16 builder flags: precision comes from the
    graph's dtypes (see profiles.py);
  * the attention layer types: TensorRT has them only from 10.14 (IAttention, ONNX Attention).
The workspace memory-pool limit is set the same way in both.
"""
import importlib
import subprocess

MODULES = {"tensorrt-rtx": "tensorrt_rtx", "tensorrt": "tensorrt"}

INSTALL_HINTS = {
    "tensorrt-rtx": "pip install tensorrt-rtx   (module tensorrt_rtx; builds on a machine without a GPU)",
    "tensorrt": ('pip install "tensorrt>=10.14"   (the package downloads from NVIDIA\'s index, '
                 "https://pypi.nvidia.com, and building needs a CUDA GPU of the target kind: "
                 "build h100/h200 bundles on an H100 or H200)"),
}


def import_tensorrt(flavour: str):
    if flavour not in MODULES:
        raise ValueError(f"no TensorRT flavour {flavour!r}; known: {', '.join(MODULES)}")
    try:
        return importlib.import_module(MODULES[flavour])
    except ImportError as e:
        raise ImportError(f"building {flavour} engines needs the Python module {MODULES[flavour]!r}, "
                          f"which is not installed ({e}). Install it with:\n  {INSTALL_HINTS[flavour]}") from e


def network_flags(trt) -> int:
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def check_build_machine(trt, flavour: str, compute_capabilities: tuple[str, ...]) -> None:
    """Raise unless this installation, on this machine, can build for these compute capabilities."""
    if flavour == "tensorrt-rtx":
        known = [c for c in dir(trt.ComputeCapability) if c.startswith("SM")]
        for cc in compute_capabilities:
            if "SM" + cc.replace(".", "") not in known:
                raise ValueError(f"TensorRT-RTX {trt.__version__} cannot target compute capability {cc} "
                                 f"(it has {', '.join(known)})")
    else:
        # Full TensorRT tunes for the GPU of this machine; an engine runs on that kind of GPU only.
        local = local_gpu()
        if local["compute_capability"] not in compute_capabilities:
            raise RuntimeError(f"full TensorRT builds for the GPU it runs on: this machine has a "
                               f"{local['name']} (SM {local['compute_capability']}), the profile needs SM "
                               f"{' or '.join(compute_capabilities)}. Build on such a GPU.")


def set_target(trt, config, flavour: str, compute_capabilities: tuple[str, ...]) -> None:
    """Point the build at the profile's GPUs (full TensorRT: the local GPU, checked above)."""
    if flavour == "tensorrt-rtx":
        config.num_compute_capabilities = len(compute_capabilities)
        for i, cc in enumerate(compute_capabilities):
            config.set_compute_capability(getattr(trt.ComputeCapability, "SM" + cc.replace(".", "")), i)


def local_gpu() -> dict:
    """Name and compute capability of GPU 0, from nvidia-smi (no CUDA Python bindings needed)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise RuntimeError(f"full TensorRT needs an NVIDIA GPU to build on, and nvidia-smi found none "
                           f"({e})") from e
    name, cc = [s.strip() for s in out.strip().splitlines()[0].split(",")]
    return {"name": name, "compute_capability": cc}


def set_workspace_limit(trt, config, nbytes: int) -> None:
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, nbytes)


def attention_layer_types(trt) -> tuple:
    """(input, output) LayerType of the boundary layers the parser makes for an ONNX Attention."""
    lt = trt.LayerType
    if not (hasattr(lt, "ATTENTION_INPUT") and hasattr(lt, "ATTENTION_OUTPUT")):
        raise RuntimeError(f"{trt.__name__} {trt.__version__} has no attention layers (IAttention), so it "
                           f"cannot parse ONNX Attention into fused attention; TensorRT >= 10.14 or "
                           f"TensorRT-RTX does")
    return lt.ATTENTION_INPUT, lt.ATTENTION_OUTPUT
