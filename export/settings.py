"""What one export is asked to produce, checked before any work starts.

A bad request (unknown resolution, scale out of range, output smaller than one DiT token, missing
checkpoint, ...) raises `ExportError`, which the CLI prints as one line: no traceback, nothing
written.
"""
from dataclasses import dataclass
from pathlib import Path

import torch

from contract.chunks import check_settings, dit_latent_counts
from swiftvr.config import PRECISION_DTYPES
from contract.sizes import FrameGeometry, frame_geometry, parse_size

PRECISIONS = {name: getattr(torch, dtype) for name, dtype in PRECISION_DTYPES.items()}
SCALE_RANGE = (1.0, 4.0)
OPSET = 23          # ONNX `Attention` exists from opset 23; TensorRT maps it to its fused attention
# "dynamic": one DiT graph (set of parts) for every latent-frame count, its frame dim dynamic, so a
# bundle carries the DiT weights once; "static": one graph per count (a shape-specialised engine each).
DIT_SHAPES = ("dynamic", "static")


class ExportError(ValueError):
    """A request that cannot be exported, reported to the user as one line."""


@dataclass(frozen=True)
class ExportSettings:
    geometry: FrameGeometry
    scale: float              # output height / input height as requested (--scale), or as implied by --input
    precision: str            # "fp32" | "fp16" | "bf16"
    clip_len: int = 24
    dit_overlap: int = 0
    dit_parts: int = 1
    dit_shapes: str = "dynamic"   # one of DIT_SHAPES

    @property
    def dtype(self) -> torch.dtype:
        return PRECISIONS[self.precision]

    @property
    def latents_per_clip(self) -> int:
        return self.clip_len // 4

    @property
    def dit_latent_frames(self) -> list[int]:
        """One DiT graph (set of parts) per entry: the latent-frame counts the chunk protocol calls it with."""
        return dit_latent_counts(self.clip_len, self.dit_overlap)

    @property
    def dit_chains(self) -> list[tuple[int, int]]:
        """The DiT graphs to export, as the (lo, hi) latent frames each serves: one dynamic chain for
        all counts, or one static chain (lo == hi) per count."""
        counts = self.dit_latent_frames
        if self.dit_shapes == "static":
            return [(f, f) for f in counts]
        if counts != list(range(counts[0], counts[-1] + 1)):     # the protocol's counts are consecutive
            raise ExportError(f"the DiT latent-frame counts {counts} are not one range; use --dit-shapes static")
        return [(counts[0], counts[-1])]

    @property
    def encoder_frames(self) -> list[int]:
        """Frames per encoder call: FIRST clip_len+4, MIDDLE clip_len, LAST 4b+4 for b = 0..clip_len/4."""
        return list(range(4, self.clip_len + 5, 4))

    @property
    def decoder_latent_frames(self) -> list[int]:
        """Latents per decoder call: a chunk's own latents, 1 .. clip_len/4 + 1."""
        return list(range(1, self.latents_per_clip + 2))


def make_settings(res: str, scale: float | None = None, input_size: str | None = None, precision: str = "bf16",
                  clip_len: int = 24, dit_overlap: int = 0, dit_parts: int = 1, num_layers: int | None = None,
                  dit_shapes: str = "dynamic") -> ExportSettings:
    """Checks a request and derives its sizes. `num_layers` (the DiT's) bounds `dit_parts` when known."""
    try:
        output_size = parse_size(res)
    except ValueError as e:
        raise ExportError(f"--res: {e}") from None
    if scale is not None and input_size is not None:
        raise ExportError("give the input size by --scale or by --input, not both")
    if input_size is not None:
        try:
            size_in = parse_size(input_size)
        except ValueError as e:
            raise ExportError(f"--input: {e}") from None
    else:
        scale = 4.0 if scale is None else float(scale)
        if not SCALE_RANGE[0] <= scale <= SCALE_RANGE[1]:
            raise ExportError(f"--scale must be between {SCALE_RANGE[0]:g} and {SCALE_RANGE[1]:g}, got {scale:g}")
        # The input the output is `scale` times larger than; at least one pixel each way.
        size_in = (max(1, round(output_size[0] / scale)), max(1, round(output_size[1] / scale)))
    try:
        geometry = frame_geometry(size_in, output_size)
    except ValueError as e:
        raise ExportError(str(e)) from None
    if scale is None:
        scale = geometry.output_size[1] / geometry.input_size[1]
    if precision not in PRECISIONS:
        raise ExportError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    try:
        check_settings(clip_len, dit_overlap)
    except ValueError as e:
        raise ExportError(str(e)) from None
    if dit_parts < 1 or (num_layers is not None and dit_parts > num_layers):
        limit = f" (the DiT has {num_layers} blocks)" if num_layers is not None else ""
        raise ExportError(f"--dit-parts must be between 1 and the number of DiT blocks{limit}, got {dit_parts}")
    if dit_shapes not in DIT_SHAPES:
        raise ExportError(f"--dit-shapes must be one of {', '.join(DIT_SHAPES)}, got {dit_shapes!r}")
    return ExportSettings(geometry, float(scale), precision, clip_len, dit_overlap, dit_parts, dit_shapes)


def check_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"--out {out} exists and is not empty (pass --overwrite to replace it)")
    if not out.parent.is_dir():
        raise ExportError(f"--out {out}: parent folder {out.parent} does not exist")
