"""Restoration in torch, chunk by chunk: the ground truth every backend is compared with.

    restorer = Restorer(model, input_size=(W, H), settings=RestoreSettings())
    out = restorer.push(frames)     # uint8 [T, H, W, 3] in, restored uint8 [T', H_out, W_out, 3] out
    out = restorer.flush()          # the rest at end of stream

Protocols (contract.chunks): "full" (ours, default) — the reference's offline chunking, every input
frame comes out, every pixel is kept, float -> uint8 rounds; "reference" — `restore_video` exactly
(drops trailing frames, crops to multiples of 8, truncates); "reference-online" — `StreamSession`.

Each chunk is contract.chunks.run_chunk with the Restorer itself as the ChunkOps (torch tensors):
the same step the runtime's Session and export.verify run on their own arrays.

RoPE offsets: the reference shifts each chunk's temporal positions by its global latent index.
Attention only sees position differences, so the offset cancels; ours uses 0 for every chunk (as
the exported graphs, whose tables are constants), the reference protocols use the reference's.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .checkpoint import SwiftVR
from contract.chunks import Chunk, ChunkPlanner, FrameBuffer, OnlineReferencePlanner, StreamState, run_chunk
from contract.sizes import FrameGeometry, frame_geometry

PROTOCOLS = ("full", "reference", "reference-online")


@dataclass(frozen=True)
class RestoreSettings:
    clip_len: int = 24
    dit_overlap: int = 0
    protocol: str = "full"
    reae_slice: int = 0          # latent frames per ReAE call (0: a whole chunk per call)

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if self.reae_slice < 0:
            raise ValueError(f"reae_slice must be 0 (whole chunks) or a number of latent frames, got {self.reae_slice}")

    @property
    def reference(self) -> bool:
        return self.protocol != "full"


def preprocess(frames_u8: torch.Tensor, geom: FrameGeometry, dtype: torch.dtype) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> model input [1, T, 3, H_pad, W_pad] in [0, 1], as the reference:
    crop (reference mode), cast with values still 0..255, bilinear resize (align_corners False,
    no antialias), divide by 255, zero-pad bottom/right."""
    crop_w, crop_h = geom.crop_size
    x = frames_u8[:, :crop_h, :crop_w].permute(0, 3, 1, 2).to(dtype)
    out_w, out_h = geom.output_size
    if (out_h, out_w) != (crop_h, crop_w):
        x = F.interpolate(x, size=(out_h, out_w), mode="bilinear", align_corners=False)
    x = x / 255.0
    pad_w, pad_h = geom.padded_size
    x = F.pad(x, (0, pad_w - out_w, 0, pad_h - out_h))
    return x[None]


def to_uint8(frames: torch.Tensor, geom: FrameGeometry, rounding: bool = True) -> torch.Tensor:
    """Decoded [1, T, 3, H_pad, W_pad] in [0, 1] -> uint8 [T, H_out, W_out, 3], padding cropped.
    The reference truncates x*255; rounding halves the quantisation error."""
    out_w, out_h = geom.output_size
    x = (frames[0, :, :, :out_h, :out_w].float() * 255.0).clamp(0, 255)
    x = torch.round(x) if rounding else torch.trunc(x)
    return x.to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def encode_in_slices(reae, x: torch.Tensor, state, latents_per_call: int = 0):
    """reae.encode of frames [N, T, 3, H, W] in calls of 4 * latents_per_call frames, the boundary
    state handed from call to call as from chunk to chunk (0: one call). The ReAE is causal, so this is
    the whole call up to the kernels' choice of algorithm per size; the activations are a slice's."""
    return _in_slices(reae.encode, x, state, 4 * latents_per_call)


def decode_in_slices(reae, z: torch.Tensor, state, latents_per_call: int = 0):
    """reae.decode of latents [N, n, 48, h, w] in calls of latents_per_call latents (as encode_in_slices)."""
    return _in_slices(reae.decode, z, state, latents_per_call)


def _in_slices(call, x: torch.Tensor, state, step: int):
    if not step or x.shape[1] <= step:
        return call(x, state)
    pieces = []
    for start in range(0, x.shape[1], step):
        out, state = call(x[:, start:start + step], state)
        pieces.append(out)
    return torch.cat(pieces, dim=1), state


class Restorer:
    """Streaming restoration of one video with a SwiftVR model in torch."""

    def __init__(self, model: SwiftVR, input_size: tuple[int, int], settings: RestoreSettings = RestoreSettings(),
                 output_size: tuple[int, int] | None = None, scale: float | None = None, output: str = "uint8"):
        self.model, self.settings, self.output = model, settings, output
        self.device = model.transformer.proj_out.weight.device
        self.dtype = model.transformer.proj_out.weight.dtype
        self.geom = frame_geometry(input_size, output_size, scale, crop_to_8=settings.protocol == "reference")
        if settings.protocol == "reference-online":
            self.planner = OnlineReferencePlanner(settings.clip_len, settings.dit_overlap)
        else:
            self.planner = ChunkPlanner(settings.clip_len, settings.dit_overlap,
                                        keep_all_frames=settings.protocol == "full")
        self.cond = model.transformer.conditioning(model.prompt_emb)
        self.grid_plans = {}
        self.buffer = FrameBuffer()         # uint8 [H, W, 3] frames not yet consumed by a chunk
        self.state = StreamState()          # encoder / decoder states (None: zeros) and LQ history
        self.t_offsets = []                 # RoPE offsets used, per DiT call (for conformance checks)

    # ---- public ----------------------------------------------------------------------------
    @torch.no_grad()
    def push(self, frames) -> torch.Tensor:
        frames = torch.as_tensor(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
            raise ValueError(f"expected uint8 frames [T, H, W, 3], got {frames.dtype} {list(frames.shape)}")
        width, height = self.geom.input_size
        if tuple(frames.shape[1:3]) != (height, width):
            raise ValueError(f"frames are {frames.shape[2]}x{frames.shape[1]}, this restorer was made for {width}x{height}")
        self.buffer.add(frames.unbind(0))
        return self._run(self.planner.push(len(frames)))

    @torch.no_grad()
    def flush(self) -> torch.Tensor:
        return self._run(self.planner.finish())

    # ---- chunks ----------------------------------------------------------------------------
    def _run(self, chunks: list[Chunk]) -> torch.Tensor:
        outputs = [self._restore_chunk(c) for c in chunks]
        if outputs:
            return torch.cat(outputs)
        out_w, out_h = self.geom.output_size
        if self.output == "float":
            return torch.zeros(0, 3, out_h, out_w)
        return torch.zeros(0, out_h, out_w, 3, dtype=torch.uint8)

    def _restore_chunk(self, chunk: Chunk) -> torch.Tensor:
        frames = torch.stack(self.buffer.take(chunk)).to(self.device)
        return run_chunk(chunk, frames, self, self.state)

    # ---- contract.chunks.ChunkOps on torch tensors ------------------------------------------------
    def encode(self, frames, state):
        x = preprocess(frames, self.geom, self.dtype)
        lq, state = encode_in_slices(self.model.reae, x, state, self.settings.reae_slice)   # [1, n, 48, h, w]
        return lq.transpose(1, 2), state                             # DiT layout [1, 48, n, h, w]

    def dit(self, latents, chunk: Chunk):
        t_offset = chunk.t_offset if self.settings.reference else 0
        self.t_offsets.append(t_offset)
        return self.model.transformer.restore(latents, self.cond, self._grid_plan(latents.shape, t_offset))

    def decode(self, latents, state):
        return decode_in_slices(self.model.reae, latents.transpose(1, 2), state, self.settings.reae_slice)

    def emit(self, frames, start: int, count: int):
        frames = frames[:, start:start + count]
        if self.output == "float":
            out_w, out_h = self.geom.output_size
            return frames[0, :, :, :out_h, :out_w].float()
        return to_uint8(frames, self.geom, rounding=not self.settings.reference)

    def concat(self, a, b, stage: str):
        return torch.cat([a, b], dim=2)

    def take_last(self, x, n: int, stage: str):
        return x if n >= x.shape[2] else x[:, :, -n:]

    def zeros(self, like, n: int, stage: str):
        return torch.zeros_like(like[:, :, :1]).expand(-1, -1, n, -1, -1)

    def _grid_plan(self, latent_shape, t_offset: int):
        grid = self.model.transformer.token_grid(latent_shape)
        key = (grid, t_offset)
        if key not in self.grid_plans:
            self.grid_plans[key] = self.model.transformer.grid_plan(grid, t_offset, self.device)
        return self.grid_plans[key]


def restore_clip(model: SwiftVR, frames, settings: RestoreSettings = RestoreSettings(), **kwargs) -> torch.Tensor:
    """Whole clip at once: uint8 [T, H, W, 3] -> restored frames."""
    frames = torch.as_tensor(frames)
    restorer = Restorer(model, (frames.shape[2], frames.shape[1]), settings, **kwargs)
    return torch.cat([restorer.push(frames), restorer.flush()])
