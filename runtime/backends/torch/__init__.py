"""The torch backend: the swiftvr model itself, on CUDA when there is one, else on the CPU.

It is the reference the other backends are checked against, and the GPU path where TensorRT cannot
run (TensorRT-RTX has no Hopper target; full TensorRT may not be installable). The stage functions
are swiftvr.pipeline's own (preprocess, reae.encode, transformer.restore, reae.decode, to_uint8),
so on the CPU in fp32 its frames are bit-identical to swiftvr.pipeline.Restorer's.

  options.py     TorchOptions (speed options, all off by default) and the module surgery applying them
  model.py       TorchModel (loading, stage functions, torch.compile), TorchKernels (one stream's
                 stages), TorchCuda (torch's streams and events for runtime/lanes.py's CudaLane)
  cudagraphs.py  CudaGraphStage: a stage replayed from CUDA graphs

torch is imported only when a torch model is loaded: the rest of the runtime runs without it.
"""
from .model import PRECISIONS, TorchCuda, TorchKernels, TorchModel, TorchSource, import_torch, torch_dtype
from .options import (ATTENTION_BACKENDS, COMPILE_MODES, FP8_WEIGHTS, TorchOptions, apply_options,
                      set_channels_last, set_fused_qkv)

__all__ = ["ATTENTION_BACKENDS", "COMPILE_MODES", "FP8_WEIGHTS", "PRECISIONS", "TorchCuda", "TorchKernels",
           "TorchModel", "TorchOptions", "TorchSource", "apply_options", "import_torch", "set_channels_last",
           "set_fused_qkv", "torch_dtype"]
