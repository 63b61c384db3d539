"""Matmul FLOPs of one DiT call, counted from the model's shapes (what runtime.bench sets
against the device's measured matmul rate). Free of torch."""
import math

from . import geometry


def dit_flops(cfg, grid: tuple[int, int, int], prompt_len: int) -> dict:
    """Multiply-add FLOPs (2 per MAC) of one DiT call on a token grid (frames, rows, cols), from the
    shapes alone. Linears: 2*K*in*out each; self-attention per window of L tokens: QK^T and PV,
    2*L*L*dim each, over the windows of the layer's layout (plain or shifted); cross-attention
    against the P prompt tokens: 2*K*P*dim twice. The cross-attention k/v and the timestep MLP are
    in the precomputed Conditioning and not counted."""
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
