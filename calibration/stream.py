"""Running an export's graphs (some of them quantized) over real frames with the chunk protocol,
and recording what each graph is fed on the way: the calibration data.

The stream is export.verify.run_stream (contract.chunks.run_chunk per planned chunk: FIRST, MIDDLE,
LAST, with the ReAE state carried chunk to chunk), so every graph is calibrated on the activations
it sees in a real stream, carried state included.
"""
from pathlib import Path

import numpy as np

from export.verify import OrtGraphs, graph_entries, run_stream


class StreamGraphs(OrtGraphs):
    """OrtGraphs whose files may be replaced (quantized ones) and whose feeds may be recorded.

    `files`: {export.json file name: path of the graph to run instead}. FP8 Q/DQ graphs run at ONNX
    Runtime's basic optimization level: ORT 1.31 fails to create a session for them at the default
    level (float32 scales; fixed in 1.32) and has no FP8 kernels anyway (it dequantizes and runs
    the float op), so they are checked for their numbers here and run fast only in TensorRT.
    """

    def __init__(self, folder: Path, meta: dict, files: dict | None = None, basic_optimizations: bool = False,
                 record: bool = False):
        import onnxruntime as ort
        self.meta, self.widened = meta, meta["precision"] == "bf16"
        self.float = np.float32 if meta["precision"] in ("fp32", "bf16") else np.float16
        from contract.onnxruntime import session_options
        options = session_options(ort, basic_optimizations=basic_optimizations)
        self.sessions = {}
        for _, entry in graph_entries(meta):
            path = (files or {}).get(entry["file"], folder / entry["file"])
            self.sessions[entry["file"]] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.feeds = {entry["file"]: [] for _, entry in graph_entries(meta)} if record else None

    def run(self, entry: dict, values: dict) -> dict:
        if self.feeds is not None:
            self.feeds[entry["file"]].append({t["name"]: np.asarray(values[t["name"]]).astype(
                np.uint8 if t["dtype"] == "uint8" else self.float) for t in entry["inputs"]})
        return super().run(entry, values)


def restore(graphs: StreamGraphs, frames: np.ndarray) -> np.ndarray:
    """The restored frames of one clip, as the runtime would make them."""
    chunk = graphs.meta["chunk"]
    return run_stream(graphs, frames, chunk["clip_len"], chunk["dit_overlap"])[0]


def record_feeds(folder: Path, meta: dict, clips: list[np.ndarray], files: dict | None = None):
    """({graph file: [feeds, one per call]}, restored frames per clip, chunk kinds per clip)."""
    graphs = StreamGraphs(folder, meta, files, record=True)
    outputs, kinds = [], []
    chunk = meta["chunk"]
    for frames in clips:
        out, chunks = run_stream(graphs, frames, chunk["clip_len"], chunk["dit_overlap"])
        outputs.append(out)
        kinds.append("".join(c.kind[0] for c in chunks))
    return graphs.feeds, outputs, kinds
