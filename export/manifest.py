"""export.json: everything engines/ and runtime/ need, so that no later stage re-derives a shape.
The format is docs/export-format.md; its graphs and state go through contract/graphs.py."""
from datetime import datetime, timezone

from swiftvr.config import PRECISION_DTYPES

from contract import graphs as c
from .settings import OPSET, ExportSettings
from .weights import WeightSource

FORMAT, VERSION = c.FORMAT, c.VERSION


def build_manifest(source: WeightSource, settings: ExportSettings, graphs: dict, state: dict) -> dict:
    """export.json from the exporter's graph entries ({"encoder", "dit": {F: [parts]}, "decoder"});
    the state pairs come from the graphs themselves, `state` must agree with them."""
    g = settings.geometry
    fields = {
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
    }
    contract = c.contract_from_json({**fields, "graphs": graphs, "state": state}, "the export being written")
    return c.export_json(fields, contract)


def state_pairs(graph_entry: dict) -> list[dict]:
    """`state_in.X` -> `state_out.X` pairs of a graph entry, with shape and dtype."""
    graph = c.graph_from_json(graph_entry, "", "the export being written")
    return [p.to_json() for p in c.state_pairs(graph, "the export being written")]
