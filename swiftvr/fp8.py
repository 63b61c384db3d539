"""FP8 (float8_e4m3fn) matmuls for the DiT's per-token linears.

    names = quantize_dit_linears(transformer, FP8Config(weights="row"))   # in place, once

Weights are quantised once: W ~ W8 * s_w with s_w = amax / 448, one scale per output row
("row") or one for the whole matrix ("tensor"). Activations are quantised on the fly with one
scale per token (row of x): x ~ x8 * s_x. Then

    y = (x8 @ W8^T) * s_x * s_w^T + b

which torch._scaled_mm computes in one kernel (fp32 accumulation, scales and bias in the
epilogue) on CUDA devices of compute capability 8.9 or newer (Ada, Hopper). Anywhere else the
same quantised values are dequantised and multiplied in float32 ("emulated"): the inputs are
rounded exactly as the kernel sees them, so the numerics can be checked on a CPU. The emulated
path is not a speed path.

Which linears: the ones that run per token in every block: self-attention q/k/v (or the fused
qkv) and its output, cross-attention q and its output, both FFN matrices. Together they are ~90%
of the DiT's FLOPs. The cross-attention k/v projections only make the precomputed Conditioning,
and the patch embedding and the output head are small and sit at the network's two ends, so
they stay in the model's dtype.
"""
from dataclasses import dataclass

import torch
from torch import nn

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)      # 448
# An all-zero row (or weight matrix) would give a zero scale and 0/0 = NaN when quantised.
SCALE_FLOOR = 1e-12
WEIGHT_SCALINGS = ("row", "tensor")
KERNELS = ("auto", "scaled_mm", "emulated")


@dataclass(frozen=True)
class FP8Config:
    weights: str = "row"          # "row": a scale per output channel; "tensor": one per matrix
    fast_accum: bool = False      # _scaled_mm use_fast_accum: faster on Hopper, less exact accumulation
    kernel: str = "auto"          # "auto": scaled_mm where the device has it, else emulated

    def __post_init__(self):
        if self.weights not in WEIGHT_SCALINGS:
            raise ValueError(f"FP8 weight scaling must be one of {WEIGHT_SCALINGS}, got {self.weights!r}")
        if self.kernel not in KERNELS:
            raise ValueError(f"FP8 kernel must be one of {KERNELS}, got {self.kernel!r}")


def scaled_mm_available(device, dtype=torch.bfloat16) -> bool:
    """True where torch._scaled_mm runs the real FP8 kernel for this model: CUDA with compute
    capability >= 8.9, and bf16 activations (the per-row scaled kernel only writes bf16)."""
    device = torch.device(device)
    return (device.type == "cuda" and dtype == torch.bfloat16
            and torch.cuda.get_device_capability(device) >= (8, 9))


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (fp8 [M, K], float32 scales [M, 1]) with x ~ q * scale, each row's amax at 448."""
    # The inf-norm is max |x| in one pass, without materialising |x|.
    amax = torch.linalg.vector_norm(x, float("inf"), dim=-1, keepdim=True).float().clamp(min=SCALE_FLOOR)
    # x * (448 / amax) is computed in float32 (type promotion), so it cannot round above 448.
    q = (x * (FP8_MAX / amax)).to(FP8)
    return q, amax / FP8_MAX


def quantize_weight(weight: torch.Tensor, scaling: str) -> tuple[torch.Tensor, torch.Tensor]:
    """weight [N, K] -> (fp8 [N, K], float32 scales [N, 1]). With "tensor" scaling every row gets
    the same scale, so both kinds feed the same per-row scaled kernel."""
    w = weight.detach().float()
    if scaling == "row":
        amax = w.abs().amax(dim=1, keepdim=True)
    else:
        amax = w.abs().amax().expand(w.shape[0], 1)
    scale = amax.clamp(min=SCALE_FLOOR) / FP8_MAX
    q = (w / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q, scale.contiguous()


class FP8Linear(nn.Module):
    """A Linear whose weight is stored in FP8 and whose input is quantised per token on each call."""

    def __init__(self, weight_fp8: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None,
                 out_dtype: torch.dtype, config: FP8Config, kernel: str):
        super().__init__()
        self.out_features, self.in_features = weight_fp8.shape
        self.register_buffer("weight", weight_fp8)
        # _scaled_mm wants the weight's scales as a [1, N] row (it multiplies column j by scale[j]).
        self.register_buffer("weight_scale", weight_scale.reshape(1, -1).contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().to(out_dtype))
        self.out_dtype, self.config, self.kernel = out_dtype, config, kernel

    @classmethod
    def from_linear(cls, linear: nn.Linear, config: FP8Config = FP8Config()) -> "FP8Linear":
        dtype, device = linear.weight.dtype, linear.weight.device
        kernel = config.kernel
        if kernel == "auto":
            kernel = "scaled_mm" if scaled_mm_available(device, dtype) else "emulated"
        weight, scale = quantize_weight(linear.weight, config.weights)
        return cls(weight, scale, linear.bias, dtype, config, kernel)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"weights={self.config.weights}, kernel={self.kernel}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        xq, x_scale = quantize_rows(x.reshape(-1, self.in_features))
        if self.kernel == "scaled_mm":
            # weight.t() is the column-major [K, N] operand cuBLASLt / CUTLASS want.
            y = torch._scaled_mm(xq, self.weight.t(), scale_a=x_scale, scale_b=self.weight_scale,
                                 bias=self.bias, out_dtype=self.out_dtype, use_fast_accum=self.config.fast_accum)
        else:
            # What the kernel computes: exact products of the fp8 values, fp32 sums, scales and bias after.
            y = (xq.float() @ self.weight.float().t()) * x_scale * self.weight_scale
            if self.bias is not None:
                y = y + self.bias.float()
            y = y.to(self.out_dtype)
        return y.reshape(*lead, self.out_features)


def dit_linear_names(transformer) -> list[str]:
    """Dotted names of the per-token linears of every block (see the module docstring)."""
    names = []
    for n, block in enumerate(transformer.blocks):
        attn1 = block.attn1
        qkv = ["to_qkv"] if hasattr(attn1, "to_qkv") else ["to_q", "to_k", "to_v"]
        names += [f"blocks.{n}.attn1.{p}" for p in qkv + ["to_out.0"]]
        names += [f"blocks.{n}.attn2.to_q", f"blocks.{n}.attn2.to_out.0",
                  f"blocks.{n}.ffn.net.0.proj", f"blocks.{n}.ffn.net.2"]
    return names


def quantize_dit_linears(transformer, config: FP8Config = FP8Config()) -> list[str]:
    """Replace the per-token linears of every block by FP8Linear, in place (the bf16 weights are
    let go). Linears that are already FP8 are left alone. Returns the names replaced."""
    replaced = []
    for name in dit_linear_names(transformer):
        parent_name, _, child = name.rpartition(".")
        parent = transformer.get_submodule(parent_name)
        module = parent[int(child)] if child.isdigit() else getattr(parent, child)
        if isinstance(module, FP8Linear):
            continue
        fp8 = FP8Linear.from_linear(module, config)
        if child.isdigit():
            parent[int(child)] = fp8
        else:
            setattr(parent, child, fp8)
        replaced.append(name)
    return replaced


def is_quantized(transformer) -> bool:
    return any(isinstance(m, FP8Linear) for m in transformer.modules())
