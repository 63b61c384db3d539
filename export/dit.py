"""The DiT as exported: block-range parts with everything that does not depend on the latents baked in.

Per resolution the DiT is a fixed function of its input latents: the
timestep is always 1000 and the prompt is the release's, so the timestep conditioning, the prompt's
text projection and its cross-attention keys/values are constants; so are the RoPE tables (offset
0: attention only sees position differences, the same choice as swiftvr's "full" protocol) and
MFSWA's gather/owner indices for that token grid. They are module buffers here and so become
initializers of the graph.

One graph can serve a range of latent-frame counts F (a dynamic frame dimension): tokens are
frame-major (token = (f * rows + y) * cols + x) and every window spans all frames, so for F frames
the RoPE tables are the first F*rows*cols rows of those for F_max, a window's gather indices the
first F*wh*ww of its F_max ones, and a token's owner is `window * (F*wh*ww) +
offset` with the window and the offset inside it independent of F. The graph holds the tables for
F_max and cuts them by its input's shape; integer arithmetic, so the result is exactly the static
graph's.

A part holds blocks [first, end). Part 0 embeds the latents; the last part adds the output head and
`restored = latents - v`. Between parts the tokens travel as `hidden.<b>` [1, K, dim], the input of
block b, so parts chain by tensor name.

Weights stream: `stream_parts` materialises one part's blocks at a time from `WeightSource`'s
tensor stream (state-dict order) and drops them once the part's graphs are written.
"""
from dataclasses import dataclass, replace
from typing import Iterator

import torch
from torch import nn

from contract.graphs import hidden_name
from swiftvr.config import DiTConfig
from swiftvr.geometry import is_shifted
from swiftvr.transformer import Block, Conditioning, GridPlan, SwiftVRTransformer, run_blocks

from .weights import WeightSource


def part_ranges(num_layers: int, parts: int) -> list[tuple[int, int]]:
    """Consecutive block ranges, as even as possible (earlier parts take the remainder)."""
    base, extra = divmod(num_layers, parts)
    ranges, start = [], 0
    for p in range(parts):
        end = start + base + (1 if p < extra else 0)
        ranges.append((start, end))
        start = end
    return ranges


def compute_conditioning(cfg: DiTConfig, embedder_tensors: dict, prompt: torch.Tensor) -> Conditioning:
    """The constant timestep's and prompt's contributions, float32 (computed from float32 weights so
    that a bf16/fp16 graph carries them rounded once, not computed in low precision). Runs the
    model's own `conditioning` on a block-less transformer holding only the embedders, so its
    cross_kv is empty: each part computes its blocks' (Attention.cross_kv) as they stream in."""
    with torch.device("meta"):
        stem = SwiftVRTransformer(replace(cfg, num_layers=0))
    stem.load_state_dict(embedder_tensors, strict=False, assign=True)
    return stem.conditioning(prompt.float())


@dataclass
class PartWeights:
    """One part's modules in the export dtype, plus its blocks' cross-attention keys/values."""
    index: int
    blocks: dict[int, Block]                   # global block index -> block
    cross_kv: dict[int, tuple[torch.Tensor, torch.Tensor]]
    patch_embedding: nn.Conv3d | None          # part 0
    head: tuple[nn.Parameter, nn.Linear] | None  # last part: (scale_shift_table, proj_out)

    @property
    def block_range(self) -> tuple[int, int]:
        return min(self.blocks), max(self.blocks) + 1


class _TensorStream:
    """Takes named tensors from an ordered (name, tensor) stream, buffering what comes early."""

    def __init__(self, tensors, names: list[str]):
        self.tensors, self.names, self.ready = iter(tensors), names, {}

    def take(self, names: list[str]) -> dict[str, torch.Tensor]:
        while not all(n in self.ready for n in names):
            try:
                name, tensor = next(self.tensors)
            except StopIteration:
                raise KeyError(f"the weights ended without {[n for n in names if n not in self.ready][:4]}") from None
            self.ready[name] = tensor
        return {n: self.ready.pop(n) for n in names}

    def take_prefix(self, prefix: str) -> dict[str, torch.Tensor]:
        """A submodule's tensors, with keys relative to it."""
        names = [k for k in self.names if k.startswith(prefix)]
        return {k[len(prefix):]: v for k, v in self.take(names).items()}


def _materialise(module_on_meta: nn.Module, tensors: dict, dtype: torch.dtype) -> nn.Module:
    module_on_meta.load_state_dict({k: v.to(dtype) for k, v in tensors.items()}, strict=True, assign=True)
    return module_on_meta.requires_grad_(False).eval()


def stream_parts(source: WeightSource, ranges: list[tuple[int, int]], dtype: torch.dtype,
                 on_block=None) -> tuple[Conditioning, Iterator[PartWeights]]:
    """The conditioning, and a generator of parts in order; a part's weights live until the next is asked for.

    `on_block(n)` is called as each block is materialised (progress reporting)."""
    cfg = source.cfg
    with torch.device("meta"):
        skeleton = SwiftVRTransformer(cfg)
    stream = _TensorStream(source.transformer_tensors(), list(skeleton.state_dict()))
    # State-dict order: scale_shift_table, patch_embedding, condition_embedder, blocks..., proj_out.
    head_table = stream.take(["scale_shift_table"])["scale_shift_table"]
    embedder = {"condition_embedder." + k: v for k, v in stream.take_prefix("condition_embedder.").items()}
    cond = compute_conditioning(cfg, embedder, source.prompt())
    del embedder

    def parts():
        with torch.no_grad():
            for index, (first, end) in enumerate(ranges):
                patch = None
                if index == 0:
                    with torch.device("meta"):
                        patch = nn.Conv3d(cfg.in_channels, cfg.inner_dim, cfg.patch_size, cfg.patch_size)
                    _materialise(patch, stream.take_prefix("patch_embedding."), dtype)
                blocks, cross_kv = {}, {}
                for n in range(first, end):
                    with torch.device("meta"):
                        block = Block(cfg)
                    # float32 first: the prompt's keys/values are computed at full precision, then cast.
                    _materialise(block, stream.take_prefix(f"blocks.{n}."), torch.float32)
                    k, v = block.attn2.cross_kv(cond.text_hidden)
                    blocks[n], cross_kv[n] = block.to(dtype), (k.to(dtype), v.to(dtype))
                    if on_block:
                        on_block(n)
                head = None
                if end == cfg.num_layers:
                    with torch.device("meta"):
                        proj_out = nn.Linear(cfg.inner_dim, skeleton.proj_out.out_features)
                    _materialise(proj_out, stream.take_prefix("proj_out."), dtype)
                    head = (nn.Parameter(head_table.to(dtype), requires_grad=False), proj_out)
                yield PartWeights(index, blocks, cross_kv, patch, head)
                del blocks, cross_kv, patch, head

    return cond, parts()


class DiTPart(nn.Module):
    """One part for one token grid, or for a range of frame counts (frames_range (lo, hi), lo < hi:
    the graph's F is dynamic). Inputs: `latents` (part 0), `hidden.<first>` (other parts), plus
    `latents` again for the last part; output `hidden.<end>` or `restored`.

    The model's own code does the work: the blocks' forward, and SwiftVRTransformer's `embed`,
    `velocity_from_tokens`, `token_grid` and `grid_plan` called on this module, which has the only
    attributes they read (cfg, patch_embedding, scale_shift_table, proj_out). So the exported module
    holds this part's weights and nothing else of the model."""

    def __init__(self, cfg: DiTConfig, part: PartWeights, cond: Conditioning, latent_shape: tuple[int, ...],
                 dtype: torch.dtype, frames_range: tuple[int, int] | None = None):
        super().__init__()
        self.cfg = cfg
        self.first, self.end = part.block_range
        # The tables are made for the most frames the graph takes (latent_shape's F when static).
        self.frames_range = frames_range or (latent_shape[2], latent_shape[2])
        latent_shape = (*latent_shape[:2], self.frames_range[1], *latent_shape[3:])
        self.grid = SwiftVRTransformer.token_grid(self, latent_shape)
        plan = SwiftVRTransformer.grid_plan(self, self.grid, t_offset=0)
        self.blocks = nn.ModuleDict({str(n): block for n, block in part.blocks.items()})
        if part.patch_embedding is not None:
            self.patch_embedding = part.patch_embedding
        if part.head is not None:
            self.scale_shift_table, self.proj_out = part.head
        self.embeds, self.projects = part.patch_embedding is not None, part.head is not None
        # Modulation stays float32 inside the block (`.float()`), so keep the projection float32.
        self.register_buffer("timestep_proj", cond.timestep_proj.float())
        self.register_buffer("temb", cond.temb.float())
        self.register_buffer("rope_cos", plan.cos)
        self.register_buffer("rope_sin", plan.sin)
        frame_tokens = self.grid[1] * self.grid[2]
        for n in range(self.first, self.end):       # two layouts, plain and shifted, shared by the blocks
            kind, gather, owner = _kind(is_shifted(n)), plan.gathers[n], plan.owners[n]
            per_window = gather.shape[1]             # F_max * wh * ww
            # Stored transposed, [F_max * wh * ww, windows]: the first F frames are then a row prefix,
            # contiguous (a column slice of [windows, F_max * wh * ww] makes torch.export specialise F).
            self.register_buffer(f"gather_t_{kind}", gather.t().contiguous())
            # owner = window * per_window + offset; for F frames per_window is F * wh * ww.
            self.register_buffer(f"owner_window_{kind}", owner // per_window)
            self.register_buffer(f"owner_offset_{kind}", owner % per_window)
        for n, (k, v) in part.cross_kv.items():
            self.register_buffer(f"cross_k_{n}", k)
            self.register_buffer(f"cross_v_{n}", v)
        self.input_names = (["latents"] if self.embeds else [hidden_name(self.first)]) + \
                           (["latents"] if self.projects and not self.embeds else [])
        self.output_names = ["restored"] if self.projects else [hidden_name(self.end)]
        self.frame_tokens = frame_tokens                          # tokens per latent frame (pt = 1)
        self.dtype = dtype

    @property
    def dynamic(self) -> bool:
        return self.frames_range[0] < self.frames_range[1]

    def example_inputs(self, latent_shape) -> tuple[torch.Tensor, ...]:
        """Inputs for `latent_shape` (a dynamic graph is traced at its largest F)."""
        generator = torch.Generator().manual_seed(0)
        latents = torch.randn(latent_shape, generator=generator).to(self.dtype)
        tokens = latent_shape[2] // self.cfg.patch_size[0] * self.frame_tokens
        hidden = torch.randn(1, tokens, self.cfg.inner_dim, generator=generator).to(self.dtype)
        return tuple(latents if name == "latents" else hidden for name in self.input_names)

    def dynamic_shapes(self, frames):
        """torch.export's dynamic_shapes for forward(*inputs), the frame count being the Dim `frames`."""
        return (tuple({2: frames} if name == "latents" else {1: self.frame_tokens * frames} for name in self.input_names),)

    def plan_for(self, tokens, frames) -> GridPlan:
        """The F_max tables cut to `frames` latent frames = `tokens` / (rows * cols) (symbolic when
        traced dynamic)."""
        gathers, owners = {}, {}
        for n in range(self.first, self.end):
            kind = _kind(is_shifted(n))
            gather_t = getattr(self, f"gather_t_{kind}")
            per_window = frames * (gather_t.shape[0] // self.grid[0])          # F * wh * ww
            gathers[n] = gather_t[:per_window].t()
            owners[n] = getattr(self, f"owner_window_{kind}")[:tokens] * per_window + \
                getattr(self, f"owner_offset_{kind}")[:tokens]
        return GridPlan((frames, self.grid[1], self.grid[2]), self.rope_cos[:tokens], self.rope_sin[:tokens],
                        gathers, owners)

    def forward(self, *inputs):
        x = SwiftVRTransformer.embed(self, inputs[0]) if self.embeds else inputs[0]
        numbers = range(self.first, self.end)
        cond = Conditioning(self.temb, self.timestep_proj, None,
                            {n: (getattr(self, f"cross_k_{n}"), getattr(self, f"cross_v_{n}")) for n in numbers})
        # F from `latents` where the part takes them: then torch.export knows the output's frames are the
        # latents' (not K / (rows * cols), which it cannot prove equal when F may be 1 and broadcast).
        frames = inputs[-1].shape[2] if self.input_names[-1] == "latents" else x.shape[1] // self.frame_tokens
        plan = self.plan_for(x.shape[1], frames)
        x = run_blocks([(n, self.blocks[str(n)]) for n in numbers], x, cond, plan)
        if not self.projects:
            return x
        latents = inputs[-1]
        # One-step restoration, as SwiftVRTransformer.restore: z_hq = z_lq - v.
        return latents - SwiftVRTransformer.velocity_from_tokens(self, x, self.temb, plan.grid)


def _kind(shifted: bool) -> str:
    return "shifted" if shifted else "plain"
