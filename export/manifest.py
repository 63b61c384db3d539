"""export.json: everything engines/ and runtime/ need, so that no later stage re-derives a shape.
The format is docs/export-format.md."""
from datetime import datetime, timezone

from swiftvr.config import PRECISION_DTYPES

from .settings import OPSET, ExportSettings
from .weights import WeightSource

FORMAT, VERSION = "swiftvr-export", 1


def build_manifest(source: WeightSource, settings: ExportSettings, graphs: dict, state: dict) -> dict:
    g = settings.geometry
    return {
        "format": FORMAT, "version": VERSION,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "opset": OPSET,
        "model": source.describe(),
        "precision": settings.precision,
        "dtype": PRECISION_DTYPES[settings.precision],
        "input_size": list(g.input_size), "output_size": list(g.output_size),
        "padded_size": list(g.padded_size), "latent_size": list(g.latent_size),
        "scale": settings.scale,
        "chunk": {
            "clip_len": settings.clip_len, "dit_overlap": settings.dit_overlap,
            "dit_latent_frames": settings.dit_latent_frames,
            "encoder_frames": settings.encoder_frames,
            "decoder_latent_frames": settings.decoder_latent_frames,
            "first_chunk_trim": 3,
            "rope_t_offset": 0,
        },
        "graphs": graphs,
        "state": state,
    }


def state_pairs(graph_entry: dict) -> list[dict]:
    """`state_in.X` -> `state_out.X` pairs of a graph entry, with shape and dtype."""
    outputs = {t["name"]: t for t in graph_entry["outputs"]}
    pairs = []
    for t in graph_entry["inputs"]:
        if t["name"].startswith("state_in."):
            out = "state_out." + t["name"][len("state_in."):]
            assert outputs[out]["shape"] == t["shape"] and outputs[out]["dtype"] == t["dtype"], (t, outputs[out])
            pairs.append({"input": t["name"], "output": out, "shape": t["shape"], "dtype": t["dtype"]})
    return pairs
