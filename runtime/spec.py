"""What the orchestrator needs to know about a loaded model, whichever backend runs it.

Read from a bundle's manifest or an export folder's export.json (docs/export-format.md), or made
from the torch backend's settings. Nothing here is re-derived from the graphs: the export wrote it.
"""
from dataclasses import dataclass

from contract.graphs import Contract, ContractError, contract_from_json, contract_from_manifest
from contract.chunks import check_settings, dit_latent_counts

from .errors import RuntimeSetupError


@dataclass(frozen=True)
class ModelSpec:
    source: str                        # bundle file, export folder, or checkpoint / preset
    backend: str                       # "tensorrt" | "onnxruntime" | "torch"
    device: str                        # "cpu", "cuda:0", or the GPU profile a bundle was built for
    precision: str                     # fp32 | fp16 | bf16
    input_size: tuple[int, int]        # (W, H) of the frames the model takes
    output_size: tuple[int, int]       # (W, H) of the frames it gives back
    clip_len: int                      # frames per MIDDLE chunk (the FIRST has 4 more)
    dit_overlap: int                   # earlier LQ latents prepended to MIDDLE chunks' DiT calls
    dit_latent_frames: tuple[int, ...] | None   # DiT call lengths the model supports; None: any
    quantization: str | None = None    # int8 | fp8: graphs with Q/DQ from python -m calibration

    def describe(self) -> str:
        (wi, hi), (wo, ho) = self.input_size, self.output_size
        precision = self.precision + (f" + {self.quantization} Q/DQ" if self.quantization else "")
        return (f"{self.backend} on {self.device}, {precision}, {wi}x{hi} -> {wo}x{ho}, "
                f"clip_len {self.clip_len}, dit_overlap {self.dit_overlap} ({self.source})")

    def check(self) -> None:
        """The chunk protocol (contract.chunks) must only make DiT calls the model has."""
        try:
            check_settings(self.clip_len, self.dit_overlap)
        except ValueError as e:
            raise RuntimeSetupError(f"{self.source}: {e}") from None
        if self.dit_latent_frames is None:
            return
        needed = dit_latent_counts(self.clip_len, self.dit_overlap)
        missing = sorted(set(needed) - set(self.dit_latent_frames))
        if missing:
            raise RuntimeSetupError(
                f"{self.source}: with clip_len {self.clip_len} and dit_overlap {self.dit_overlap} the chunk "
                f"protocol calls the DiT with {needed} latent frames, but the graphs take only "
                f"{list(self.dit_latent_frames)} (missing {missing}); re-export with matching --clip-len")


def spec_from_meta(meta: dict, source: str, backend: str, device: str) -> ModelSpec:
    """From export.json, or from a bundle manifest (which keeps the sizes under "sizes")."""
    sizes = meta.get("sizes", meta)
    chunk = meta["chunk"]
    frames = chunk.get("dit_latent_frames")
    spec = ModelSpec(source=source, backend=backend, device=device, precision=meta["precision"],
                     input_size=tuple(sizes["input_size"]), output_size=tuple(sizes["output_size"]),
                     clip_len=int(chunk["clip_len"]), dit_overlap=int(chunk.get("dit_overlap", 0)),
                     dit_latent_frames=tuple(frames) if frames else None,
                     quantization=(meta.get("quantization") or {}).get("precision"))
    spec.check()
    return spec


def plan_from_meta(meta: dict, source: str) -> Contract:
    """What a backend executes: the encoder, the DiT chain per latent-frame count (one dynamic chain
    may serve several: `chain(F)` is then the same parts for each), the decoder and the state pairs, checked (contract/graphs.py), from a bundle manifest or export.json."""
    try:
        return contract_from_manifest(meta, source) if "engines" in meta else contract_from_json(meta, source)
    except ContractError as e:
        raise RuntimeSetupError(str(e)) from None
