"""Running an export's graphs (some of them quantized) over real frames with the chunk protocol,
and recording what each graph is fed on the way: the calibration data.

The stream is contract/chain.py's run_stream (contract.chunks.run_chunk per planned chunk: FIRST,
MIDDLE, LAST, with the ReAE state carried chunk to chunk) over the sessions of contract/onnxruntime.py,
so every graph is calibrated on the activations it sees in a real stream, carried state included.

FP8 Q/DQ graphs run at ONNX Runtime's basic optimization level: ORT 1.31 fails to create a session
for them at the default level (float32 scales; fixed in 1.32) and has no FP8 kernels anyway (it
dequantizes and runs the float op), so they are checked for their numbers here and run fast only in
TensorRT.
"""
from pathlib import Path

import numpy as np

from contract.chain import GraphChain, run_stream
from contract.graphs import contract_from_json
from contract.onnxruntime import SessionRunner, export_sessions


def stream_chain(folder: Path, meta: dict, files: dict | None = None, basic_optimizations: bool = False,
                 record_feeds: bool = False) -> GraphChain:
    """The export's graphs in ONNX Runtime (CPU). files: {export.json file name: path of the graph to
    run instead} (quantized ones; for a bf16 export, every graph widened: calibration/quantize.py).
    record_feeds: the runner keeps every call's input feeds (chain.runner.feeds, by graph name)."""
    contract = contract_from_json(meta, str(Path(folder) / "export.json"))
    sessions = export_sessions(folder, contract, files=files, basic_optimizations=basic_optimizations)
    return GraphChain(contract, SessionRunner(sessions, record_feeds))


def restore(chain: GraphChain, meta: dict, frames: np.ndarray) -> np.ndarray:
    """The restored frames of one clip, as the runtime would make them."""
    chunk = meta["chunk"]
    return run_stream(chain, frames, chunk["clip_len"], chunk["dit_overlap"])[0]


def record_feeds(folder: Path, meta: dict, clips: list[np.ndarray], files: dict | None = None):
    """({graph file: [feeds, one per call]}, restored frames per clip, chunk kinds per clip)."""
    chain = stream_chain(folder, meta, files, record_feeds=True)
    outputs, kinds = [], []
    chunk = meta["chunk"]
    for frames in clips:
        out, chunks = run_stream(chain, frames, chunk["clip_len"], chunk["dit_overlap"])
        outputs.append(out)
        kinds.append("".join(c.kind[0] for c in chunks))
    feeds = {g.file: chain.runner.feeds[g.name] for g in chain.contract.graphs()}
    return feeds, outputs, kinds
