"""The SwiftVR DiT: Wan2.2 transformer with mask-free shifted-window self-attention (MFSWA).

State-dict compatible with the release's `transformer/` (diffusers WanTransformer3DModel keys).
One step: `z_hq = z_lq - v(z_lq, t=1000, prompt)`. Everything that does not depend on the
latents (timestep conditioning, the prompt's text projection and its cross-attention keys and
values, RoPE tables, window indices) is computed once and passed in, so that a chunk costs only
the per-token work and the export can bake those as constants.
"""
from dataclasses import dataclass
import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import DiTConfig
from . import geometry, rope

TIMESTEP = 1000.0  # one-step restoration evaluates the flow at its endpoint t = 1


class RMSNormAcrossHeads(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class Attention(nn.Module):
    """Projections of one attention (keys `to_q`, `to_k`, `to_v`, `to_out.0`, `norm_q`, `norm_k`)."""

    def __init__(self, dim: int, heads: int, eps: float):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])
        self.norm_q = RMSNormAcrossHeads(dim, eps)
        self.norm_k = RMSNormAcrossHeads(dim, eps)

    def split_heads(self, x):  # [B, K, dim] -> [B, K, heads, head_dim]
        return x.unflatten(-1, (self.heads, -1))

    def fuse_qkv(self) -> None:
        """Replace to_q/to_k/to_v by one Linear (rows q;k;v): one GEMM instead of three on the
        per-token path. Inference only; the state dict then no longer matches the release."""
        q, k, v = self.to_q, self.to_k, self.to_v
        fused = nn.Linear(q.in_features, 3 * q.out_features, device=q.weight.device, dtype=q.weight.dtype)
        with torch.no_grad():
            fused.weight.copy_(torch.cat([q.weight, k.weight, v.weight]))
            fused.bias.copy_(torch.cat([q.bias, k.bias, v.bias]))
        self.to_qkv = fused
        del self.to_q, self.to_k, self.to_v

    def split_qkv(self) -> None:
        """Undo fuse_qkv: the rows go back into to_q / to_k / to_v (so a model can go back and forth)."""
        fused = self.to_qkv
        for name, w, b in zip(("to_q", "to_k", "to_v"), fused.weight.chunk(3), fused.bias.chunk(3)):
            linear = nn.Linear(w.shape[1], w.shape[0], device=w.device, dtype=w.dtype)
            with torch.no_grad():
                linear.weight.copy_(w)
                linear.bias.copy_(b)
            setattr(self, name, linear)
        del self.to_qkv

    @property
    def is_fused(self) -> bool:
        return hasattr(self, "to_qkv")

    def self_qkv(self, x):
        if self.is_fused:
            return self.to_qkv(x).chunk(3, dim=-1)
        return self.to_q(x), self.to_k(x), self.to_v(x)

    def cross_kv(self, text_hidden):
        """A cross-attention's keys and values of the prompt, [1, heads, L, head_dim] (constant per
        model: computed once, in Conditioning or baked into the exported graph)."""
        k = self.split_heads(self.norm_k(self.to_k(text_hidden))).transpose(1, 2)
        v = self.split_heads(self.to_v(text_hidden)).transpose(1, 2)
        return k.contiguous(), v.contiguous()


def apply_rope(x, cos, sin):
    """x [B, K, heads, D]; cos/sin [K, 1, D] with each angle repeated on a channel pair."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    even, odd = x.unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[..., 0::2], sin[..., 1::2]
    return torch.stack([even * c - odd * s, even * s + odd * c], dim=-1).flatten(-2)


def windowed_attention(q, k, v, gather, owner):
    """MFSWA: one dense attention over all windows at once, then each token reads its owner's result.
    q, k, v [B, K, heads, D]; gather [windows, L] token indices; owner [K] indices into windows*L."""
    batch, _, heads, head_dim = q.shape
    windows, length = gather.shape
    flat = gather.reshape(-1)

    def to_windows(x):
        x = x.index_select(1, flat).reshape(batch, windows, length, heads, head_dim)
        return x.permute(0, 1, 3, 2, 4).reshape(batch * windows, heads, length, head_dim)

    out = F.scaled_dot_product_attention(to_windows(q), to_windows(k), to_windows(v))
    out = out.reshape(batch, windows, heads, length, head_dim).permute(0, 1, 3, 2, 4)
    return out.reshape(batch, windows * length, heads, head_dim).index_select(1, owner)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.net = nn.ModuleList([_Proj(dim, hidden), nn.Dropout(0.0), nn.Linear(hidden, dim)])

    def forward(self, x):
        return self.net[2](F.gelu(self.net[0].proj(x), approximate="tanh"))


class _Proj(nn.Module):  # holds the key `ffn.net.0.proj`
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.proj = nn.Linear(dim, hidden)


class Block(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        dim = cfg.inner_dim
        self.scale_shift_table = nn.Parameter(torch.zeros(1, 6, dim))
        self.attn1 = Attention(dim, cfg.num_attention_heads, cfg.eps)
        self.attn2 = Attention(dim, cfg.num_attention_heads, cfg.eps)
        self.norm2 = nn.LayerNorm(dim, eps=cfg.eps, elementwise_affine=True)
        self.ffn = FeedForward(dim, cfg.ffn_dim)
        self.eps = cfg.eps

    def forward(self, x, timestep_proj, cross_k, cross_v, cos, sin, gather, owner):
        # Modulation and norms in float32, results cast back: the reference's mixed-precision recipe.
        mod = (self.scale_shift_table.float() + timestep_proj.float()).chunk(6, dim=1)
        shift, scale, gate, c_shift, c_scale, c_gate = mod
        dim = x.shape[-1]

        a = (F.layer_norm(x.float(), (dim,), eps=self.eps) * (1 + scale) + shift).to(x.dtype)
        attn = self.attn1
        q, k, v = attn.self_qkv(a)
        q = apply_rope(attn.split_heads(attn.norm_q(q)), cos, sin)
        k = apply_rope(attn.split_heads(attn.norm_k(k)), cos, sin)
        v = attn.split_heads(v)
        out = windowed_attention(q, k, v, gather, owner).flatten(2)
        x = (x.float() + attn.to_out[0](out).float() * gate).to(x.dtype)

        n = F.layer_norm(x.float(), (dim,), self.norm2.weight.float(), self.norm2.bias.float(), self.eps).to(x.dtype)
        attn = self.attn2
        q = attn.split_heads(attn.norm_q(attn.to_q(n))).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, cross_k, cross_v).transpose(1, 2).flatten(2)
        x = x + attn.to_out[0](out)

        b = (F.layer_norm(x.float(), (dim,), eps=self.eps) * (1 + c_scale) + c_shift).to(x.dtype)
        return (x.float() + self.ffn(b).float() * c_gate).to(x.dtype)


@dataclass
class Conditioning:
    """Everything the constant timestep and prompt contribute; computed once per model and dtype."""
    temb: torch.Tensor               # [1, dim]
    timestep_proj: torch.Tensor      # [1, 6, dim]
    text_hidden: torch.Tensor        # [1, L, dim]
    cross_kv: list                   # per block (k, v), each [1, heads, L, head_dim]


@dataclass
class GridPlan:
    """What depends only on the latent grid (and RoPE offset): RoPE tables and window indices."""
    grid: tuple[int, int, int]
    cos: torch.Tensor                # [K, 1, head_dim] float32
    sin: torch.Tensor
    gathers: list                    # per block [windows, L] int64 (two distinct tensors shared)
    owners: list                     # per block [K] int64


def timestep_sinusoid(freq_dim: int, t: float = TIMESTEP) -> torch.Tensor:
    """[1, freq_dim] = [cos, sin] of t * exp(-ln(10000) i / half), float32 as diffusers computes it."""
    half = freq_dim // 2
    exponent = -math.log(10000) * torch.arange(half, dtype=torch.float32) / half
    args = torch.tensor([t], dtype=torch.float32)[:, None] * torch.exp(exponent)[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class SwiftVRTransformer(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        dim = cfg.inner_dim
        self.scale_shift_table = nn.Parameter(torch.zeros(1, 2, dim))
        self.patch_embedding = nn.Conv3d(cfg.in_channels, dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.condition_embedder = nn.Module()
        self.condition_embedder.time_embedder = nn.Module()
        self.condition_embedder.time_embedder.linear_1 = nn.Linear(cfg.freq_dim, dim)
        self.condition_embedder.time_embedder.linear_2 = nn.Linear(dim, dim)
        self.condition_embedder.time_proj = nn.Linear(dim, 6 * dim)
        self.condition_embedder.text_embedder = nn.Module()
        self.condition_embedder.text_embedder.linear_1 = nn.Linear(cfg.text_dim, dim)
        self.condition_embedder.text_embedder.linear_2 = nn.Linear(dim, dim)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.num_layers)])
        self.proj_out = nn.Linear(dim, cfg.out_channels * math.prod(cfg.patch_size))

    # ---- computed once -------------------------------------------------------------------
    @torch.no_grad()
    def conditioning(self, prompt_emb: torch.Tensor, sinusoid: torch.Tensor | None = None) -> Conditioning:
        """prompt_emb [L, text_dim] (the release file's `prompt_emb[0]`). `sinusoid` [1, freq_dim]
        replaces timestep_sinusoid(): float32 sin/cos of t = 1000 differ between CPUs in the last
        bit, so conformance tests inject the reference's own to check the rest tightly."""
        emb = self.condition_embedder
        dtype = emb.time_embedder.linear_1.weight.dtype
        device = emb.time_embedder.linear_1.weight.device
        if sinusoid is None:
            sinusoid = timestep_sinusoid(self.cfg.freq_dim)
        sinusoid = sinusoid.to(device=device, dtype=dtype)
        temb = emb.time_embedder.linear_2(F.silu(emb.time_embedder.linear_1(sinusoid)))
        timestep_proj = emb.time_proj(F.silu(temb)).unflatten(1, (6, -1))
        prompt = prompt_emb.to(device=device, dtype=dtype)[None]
        text = emb.text_embedder.linear_2(F.gelu(emb.text_embedder.linear_1(prompt), approximate="tanh"))
        return Conditioning(temb, timestep_proj, text, [block.attn2.cross_kv(text) for block in self.blocks])

    def grid_plan(self, grid: tuple[int, int, int], t_offset: int = 0, device=None) -> GridPlan:
        cfg = self.cfg
        cos, sin = rope.grid_tables(grid, cfg.attention_head_dim, t_offset, cfg.rope_max_seq_len)
        layouts = {shifted: geometry.window_layout(grid, cfg.self_attn_window_hw, shifted) for shifted in (False, True)}
        gather = {s: torch.from_numpy(geometry.gather_index(l)).to(device) for s, l in layouts.items()}
        owner = {s: torch.from_numpy(geometry.owner_index(l)).to(device) for s, l in layouts.items()}
        shifted = [geometry.is_shifted(n) for n in range(cfg.num_layers)]
        return GridPlan(grid, torch.from_numpy(cos)[:, None].to(device), torch.from_numpy(sin)[:, None].to(device),
                        [gather[s] for s in shifted], [owner[s] for s in shifted])

    def fuse_qkv(self) -> None:
        """Fuse every self-attention's q/k/v projections (after loading; see Attention.fuse_qkv).
        Cross-attention needs only q per chunk: its k/v are in the Conditioning."""
        for block in self.blocks:
            if not block.attn1.is_fused:
                block.attn1.fuse_qkv()

    def split_qkv(self) -> None:
        """Undo fuse_qkv on every self-attention that is fused."""
        for block in self.blocks:
            if block.attn1.is_fused:
                block.attn1.split_qkv()

    # ---- per chunk -------------------------------------------------------------------------
    def token_grid(self, latent_shape) -> tuple[int, int, int]:
        _, _, frames, height, width = latent_shape
        pt, ph, pw = self.cfg.patch_size
        if height % ph or width % pw:
            raise ValueError(f"the DiT needs latent height and width that are multiples of {ph} (frames: multiples "
                             f"of {16 * ph} pixels), got {height}x{width}")
        return frames // pt, height // ph, width // pw

    def embed(self, z_lq):
        """[B, 48, F, H, W] -> tokens [B, K, dim] (frame-major, then row, then column)."""
        return self.patch_embedding(z_lq).flatten(2).transpose(1, 2)

    def run_blocks(self, x, cond: Conditioning, plan: GridPlan, start: int = 0, end: int | None = None, call=None):
        end = len(self.blocks) if end is None else end
        return run_blocks([(n, self.blocks[n]) for n in range(start, end)], x, cond, plan, call)

    def velocity_from_tokens(self, x, temb, grid: tuple[int, int, int]):
        """Output head and unpatchify: tokens [B, K, dim] -> velocity [B, 48, F, H, W]."""
        shift, scale = (self.scale_shift_table + temb[:, None, :].to(self.scale_shift_table.dtype)).chunk(2, dim=1)
        y = (F.layer_norm(x.float(), (x.shape[-1],), eps=self.cfg.eps) * (1 + scale.float()) + shift.float()).to(x.dtype)
        y = self.proj_out(y)
        frames, rows, cols = grid
        pt, ph, pw = self.cfg.patch_size
        y = y.reshape(y.shape[0], frames, rows, cols, pt, ph, pw, -1)
        return y.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(y.shape[0], -1, frames * pt, rows * ph, cols * pw)

    def velocity(self, z_lq, cond: Conditioning, plan: GridPlan, call=None):
        x = self.run_blocks(self.embed(z_lq), cond, plan, call=call)
        return self.velocity_from_tokens(x, cond.temb, plan.grid)

    def restore(self, z_lq, cond: Conditioning, plan: GridPlan, call=None):
        """One-step restoration: z_hq = z_lq - v. `call(block, *inputs)`, when given, runs each
        block instead of block(*inputs) (the torch backend passes one compiled function)."""
        return z_lq - self.velocity(z_lq, cond, plan, call)


def run_blocks(blocks, x, cond: Conditioning, plan: GridPlan, call=None):
    """The DiT's block loop over (global block index, Block) pairs: the only place the per-block
    inputs are picked (cross-attention k/v, RoPE tables, the layer's window indices). `cond` and
    `plan` may hold per-block lists or dicts keyed by block index."""
    for n, block in blocks:
        k, v = cond.cross_kv[n]
        inputs = (x, cond.timestep_proj, k, v, plan.cos, plan.sin, plan.gathers[n], plan.owners[n])
        x = block(*inputs) if call is None else call(block, *inputs)
    return x
