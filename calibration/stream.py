"""Running an export's graphs (some of them quantized) over real frames with the chunk protocol,
and recording what each graph is fed on the way: the calibration data.

The stream is contract/chain.py's run_stream (contract.chunks.run_chunk per planned chunk: FIRST,
MIDDLE, LAST, with the ReAE state carried chunk to chunk) over the sessions of contract/onnxruntime.py,
so every graph is calibrated on the activations it sees in a real stream, carried state included.

FP8 Q/DQ graphs run at ONNX Runtime's basic optimization level: ORT 1.31 fails to create a session
for them at the default level (float32 scales; fixed in 1.32) and has no FP8 kernels anyway (it
dequantizes and runs the float op), so they are checked for their numbers here and run fast only in
TensorRT.

Host memory, whatever the clip's length (issue 23: 24.4 GB and the OOM killer at 704x576 before):
  * the ReAE runs in slices of REAE_SLICE latent frames (contract.graphs.with_reae_slice), as the
    runtime's cpu bundles run it. ONNX Runtime's calibrator runs a graph with every intermediate
    tensor made an output, so one call holds all of its activations at once: a slice's, not a
    whole chunk's. The ReAE is causal with its state, so a slice's activations are exactly the
    whole chunk's frames taken a few at a time: the same ranges (up to float32 rounding).
  * the recorded feeds go to disk (FeedFiles), one file per call: a call's ReAE state alone is
    94 MB at 704x576 output, and a clip makes a call every 4 frames.
"""
from pathlib import Path

import numpy as np

from contract.chain import GraphChain, run_stream
from contract.graphs import contract_from_json, with_reae_slice
from contract.onnxruntime import SessionRunner, export_sessions

REAE_SLICE = 1       # latent frames per ReAE call while calibrating (0: whole chunks)


class FeedFiles:
    """One graph's recorded input feeds, a .npz file per call in `folder`, read back one call at a
    time (what onnxruntime's CalibrationDataReader asks for): a list that lives on disk."""

    def __init__(self, folder: Path):
        self.folder, self.count = Path(folder), 0
        self.folder.mkdir(parents=True, exist_ok=True)

    def append(self, feeds: dict) -> None:
        np.savez(self.folder / f"{self.count:06d}.npz", **feeds)
        self.count += 1

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> dict:
        if not -self.count <= i < self.count:
            raise IndexError(i)
        with np.load(self.folder / f"{i % self.count:06d}.npz") as stored:
            return {name: stored[name] for name in stored.files}

    def __iter__(self):
        return (self[i] for i in range(self.count))


def stream_chain(folder: Path, meta: dict, files: dict | None = None, basic_optimizations: bool = False,
                 record_feeds: bool | dict = False, reae_slice: int = REAE_SLICE) -> GraphChain:
    """The export's graphs in ONNX Runtime (CPU). files: {export.json file name: path of the graph to
    run instead} (quantized ones; for a bf16 export, every graph widened: calibration/quantize.py).
    record_feeds: the runner keeps every call's input feeds (chain.runner.feeds, by graph name; a
    dict of FeedFiles keeps them there). reae_slice: latent frames per ReAE call (0: whole chunks)."""
    contract = contract_from_json(meta, str(Path(folder) / "export.json"))
    if reae_slice:
        contract = with_reae_slice(contract, reae_slice)
    sessions = export_sessions(folder, contract, files=files, basic_optimizations=basic_optimizations)
    return GraphChain(contract, SessionRunner(sessions, record_feeds))


def restore(chain: GraphChain, meta: dict, frames: np.ndarray) -> np.ndarray:
    """The restored frames of one clip, as the runtime would make them."""
    chunk = meta["chunk"]
    return run_stream(chain, frames, chunk["clip_len"], chunk["dit_overlap"])[0]


def record_feeds(folder: Path, meta: dict, clips: list[np.ndarray], files: dict | None = None,
                 spill_to: Path | None = None, reae_slice: int = REAE_SLICE):
    """({graph file: [feeds, one per call]}, restored frames per clip, chunk kinds per clip).
    spill_to: keep the feeds on disk there (FeedFiles per graph) instead of in memory."""
    record = True
    if spill_to is not None:
        contract = contract_from_json(meta, str(Path(folder) / "export.json"))
        record = {g.name: FeedFiles(Path(spill_to) / g.name) for g in contract.graphs()}
    chain = stream_chain(folder, meta, files, record_feeds=record, reae_slice=reae_slice)
    outputs, kinds = [], []
    chunk = meta["chunk"]
    for frames in clips:
        out, chunks = run_stream(chain, frames, chunk["clip_len"], chunk["dit_overlap"])
        outputs.append(out)
        kinds.append("".join(c.kind[0] for c in chunks))
    feeds = {g.file: chain.runner.feeds[g.name] for g in chain.contract.graphs()}
    return feeds, outputs, kinds
