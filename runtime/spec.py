"""What the orchestrator needs to know about a loaded model, whichever backend runs it.

Read from a bundle's manifest or an export folder's export.json (docs/export-format.md), or made
from the torch backend's settings. Nothing here is re-derived from the graphs: the export wrote it.
"""
from dataclasses import dataclass

from swiftvr.chunks import check_settings, dit_latent_counts

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

    def describe(self) -> str:
        (wi, hi), (wo, ho) = self.input_size, self.output_size
        return (f"{self.backend} on {self.device}, {self.precision}, {wi}x{hi} -> {wo}x{ho}, "
                f"clip_len {self.clip_len}, dit_overlap {self.dit_overlap} ({self.source})")

    def check(self) -> None:
        """The chunk protocol (swiftvr.chunks) must only make DiT calls the model has."""
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
                     dit_latent_frames=tuple(frames) if frames else None)
    spec.check()
    return spec


def dit_chains(parts: list, inputs_of=lambda part: part["inputs"]) -> dict:
    """DiT graphs (in chain order) grouped into chains by the latent frames F they take.

    An export may hold one DiT per F the protocol needs (dit.f2, dit.f3), each whole or in parts
    (part 0 takes `latents`, later parts take `hidden`). A chain starts at every part without a
    `hidden` input; its F is the frame axis of its `latents` input (None if dynamic: any F).
    `inputs_of(part)` gives a part's export.json inputs [{"name", "shape", "dtype"}].
    """
    chains, current = {}, None
    for part in parts:
        inputs = {t["name"]: t for t in inputs_of(part)}
        if "hidden" not in inputs:
            frames = inputs["latents"]["shape"][2]
            current = chains.setdefault(frames if isinstance(frames, int) else None, [])
        if current is None:
            raise RuntimeSetupError("the first DiT graph takes `hidden`, which no graph before it makes")
        current.append(part)
    return chains


def export_dit_entries(graphs: dict) -> list[dict]:
    """export.json's graphs["dit"] in chain order: {"F": [parts]}, [parts] or one entry."""
    dit = graphs["dit"]
    if isinstance(dit, dict) and "file" not in dit:
        return [part for frames in sorted(dit, key=int) for part in dit[frames]]
    return dit if isinstance(dit, list) else [dit]


def pick_chain(chains: dict, frames: int) -> list:
    chain = chains.get(frames) or chains.get(None)
    if chain is None:
        have = sorted(k for k in chains if k)
        raise RuntimeError(f"no DiT graph takes {frames} latent frames (the export has {have})")
    return chain
