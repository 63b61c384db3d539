"""How the torch backend runs the model: TorchOptions, and the module surgery that applies them.

  fused_qkv        one GEMM for the self-attention q/k/v projections (SwiftVRTransformer.fuse_qkv)
  channels_last    the ReAE's 2-D convolutions in NHWC, the layout cuDNN's fast kernels use
  cudnn_benchmark  let cuDNN time its algorithms for each conv shape once (process-wide flag; CUDA)
  attention        the SDPA kernel, chosen explicitly with torch.nn.attention.sdpa_kernel
  compile          torch.compile (mode "default" or "max-autotune-no-cudagraphs") of each DiT
                   block and of the ReAE encode / decode stages
  cuda_graphs      each stage replayed from a CUDA graph per input shape (CUDA; cudagraphs.py)
  fp8              the DiT's per-token linears in FP8 (swiftvr/fp8.py; the kernel needs SM >= 8.9)

All off by default, which is the reference's way of running. runtime/bench/ measures each against
the plain run; docs/benchmarks.md has the method.
"""
from dataclasses import asdict, dataclass

from ...errors import RuntimeSetupError

ATTENTION_BACKENDS = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION",
                      "cudnn": "CUDNN_ATTENTION", "math": "MATH"}
# Inductor's own CUDA graphs ("reduce-overhead") would fight the stage streams and our graphs.
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")
FP8_WEIGHTS = ("row", "tensor")


@dataclass(frozen=True)
class TorchOptions:
    """How the torch backend runs the model (see the module docstring). The defaults run it as the
    reference does: stages as written, SDPA's own kernel choice, separate q/k/v, no compilation."""
    fused_qkv: bool = False
    channels_last: bool = False
    cudnn_benchmark: bool = False
    attention: str | None = None        # None: SDPA picks; else one of ATTENTION_BACKENDS, and only it
    compile: str | None = None          # None or one of COMPILE_MODES
    cuda_graphs: bool = False
    fp8: str | None = None              # None or the weight scaling, one of FP8_WEIGHTS
    fp8_fast_accum: bool = False

    def check(self, cuda: bool) -> None:
        if self.attention is not None and self.attention not in ATTENTION_BACKENDS:
            raise RuntimeSetupError(f"attention must be one of {', '.join(ATTENTION_BACKENDS)}, got {self.attention!r}")
        if self.compile is not None and self.compile not in COMPILE_MODES:
            raise RuntimeSetupError(f"compile mode must be one of {', '.join(COMPILE_MODES)}, got {self.compile!r}")
        if self.fp8 is not None and self.fp8 not in FP8_WEIGHTS:
            raise RuntimeSetupError(f"fp8 weight scaling must be one of {', '.join(FP8_WEIGHTS)}, got {self.fp8!r}")
        if not cuda:
            for name in ("cudnn_benchmark", "cuda_graphs"):
                if getattr(self, name):
                    raise RuntimeSetupError(f"{name} needs a CUDA device")

    def changed(self) -> dict:
        """The options that differ from the defaults."""
        default = TorchOptions()
        return {k: v for k, v in asdict(self).items() if getattr(default, k) != v}

    def describe(self) -> str:
        changed = self.changed()
        return ", ".join(f"{k}={v}" for k, v in changed.items()) if changed else "plain"


def set_fused_qkv(transformer, fused: bool) -> None:
    """Fuse (or split again) every self-attention's q/k/v projections, in place (the model's own
    fuse_qkv / split_qkv), refusing what FP8 has made one-way."""
    from swiftvr.fp8 import FP8Linear

    for block in transformer.blocks:
        attn = block.attn1
        if fused and not attn.is_fused and isinstance(attn.to_q, FP8Linear):
            raise RuntimeSetupError("the q/k/v projections are already FP8: fuse them before quantising")
        if not fused and attn.is_fused and isinstance(attn.to_qkv, FP8Linear):
            raise RuntimeSetupError("the fused q/k/v projection is FP8 and can no longer be split")
    if fused:
        transformer.fuse_qkv()
    else:
        transformer.split_qkv()


def set_channels_last(reae, channels_last: bool) -> None:
    """Store the ReAE's Conv2d weights NHWC (or back to NCHW). A conv with an NHWC weight makes an
    NHWC output, so after the first conv the whole chain stays NHWC without touching reae.py."""
    import torch
    from torch import nn

    layout = torch.channels_last if channels_last else torch.contiguous_format
    for module in reae.modules():
        if isinstance(module, nn.Conv2d):
            module.weight.data = module.weight.data.contiguous(memory_format=layout)


def apply_options(model, options: TorchOptions) -> None:
    """Bring a loaded SwiftVR model's modules into the state `options` asks for, in place.
    Fused q/k/v and channels-last go both ways; FP8 is one way (the bf16 weights are let go)."""
    from swiftvr.fp8 import FP8Config, FP8Linear, is_quantized, quantize_dit_linears

    set_fused_qkv(model.transformer, options.fused_qkv)
    set_channels_last(model.reae, options.channels_last)
    if options.fp8:
        config = FP8Config(weights=options.fp8, fast_accum=options.fp8_fast_accum)
        if any(m.config != config for m in model.transformer.modules() if isinstance(m, FP8Linear)):
            raise RuntimeSetupError("this model's DiT linears are already FP8 with other settings (load it again)")
        quantize_dit_linears(model.transformer, config)
    elif is_quantized(model.transformer):
        raise RuntimeSetupError("this model's DiT linears are FP8; its bf16 weights are gone (load it again)")


def attention_context(options: TorchOptions):
    """Only the chosen SDPA kernel may run (an error, not a silent fallback, if it cannot)."""
    import contextlib
    if options.attention is None:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel([getattr(SDPBackend, ATTENTION_BACKENDS[options.attention])])
