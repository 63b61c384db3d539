"""The contract's graphs run for one chunk, written once: the zero state, encode, the DiT part chain,
decode, and the state each graph hands to its next call.

Every driver that executes the graphs goes through GraphChain: the runtime's ONNX Runtime and
TensorRT backends (on their device values), export.verify and calibration (numpy, ONNX Runtime
sessions: contract/onnxruntime.py), engines.verify (numpy, Polygraphy runners). What a backend
supplies is a GraphRunner: run one graph, make a zero array, tell a value's shape.

    chain = GraphChain(contract, runner)
    state = chain.zero_state("encoder")
    latents, state = chain.encode(frames, state)
    restored = chain.dit(latents)                 # the parts for latents' F, chained by tensor name
    frames, decoder_state = chain.decode(restored, chain.zero_state("decoder"))

For numpy values, NumpyChunkOps is the contract.chunks.ChunkOps over a chain and run_stream runs a
whole clip through contract.chunks.run_chunk, as the torch Restorer and the runtime's Session do.

numpy only: the runtime imports this without torch or onnx.
"""
from typing import Any, Protocol

import numpy as np

from .chunks import ChunkPlanner, FrameBuffer, StreamState, run_chunk
from .graphs import FRAMES, LATENTS, RESTORED, Contract, Graph, is_hidden


class GraphRunner(Protocol):
    """What a backend gives GraphChain. Values are the backend's own (numpy arrays, OrtValues,
    CUDA device arrays): GraphChain only passes them by tensor name."""

    def run(self, graph: Graph, inputs: dict) -> dict:
        """Run one graph: `inputs` holds (at least) its input tensors by name; -> its outputs by name."""
    def zeros(self, shape: tuple, dtype: str) -> Any:
        """A zero array; dtype is the contract's numpy name (uint8, float16, bfloat16, float32)."""
    def shape(self, value) -> tuple:
        """The shape of a value this runner made or takes."""
    def slice(self, value, axis: int, start: int, stop: int) -> Any:
        """value[start:stop] along `axis`, as a value of its own (or a view the runner may keep)."""
    def concat(self, values: list, axis: int) -> Any:
        """The values joined along `axis`."""


class GraphChain:
    def __init__(self, contract: Contract, runner: GraphRunner):
        self.contract, self.runner = contract, runner

    def zero_state(self, which: str) -> dict:
        """The "encoder" / "decoder" state at stream start: state_in.* by name, all zeros."""
        return {s.input: self.runner.zeros(s.shape, s.dtype) for s in self.contract.state[which]}

    def encode(self, frames, state: dict) -> tuple[Any, dict]:
        """-> (LQ latents [1, 48, n, h, w], the state for the next chunk). A chunk of more frames than
        the encoder takes per call is encoded in slices, the state carried from one to the next."""
        return self._sliced(self.contract.encoder, FRAMES, 0, self.contract.encoder_frames_per_call,
                            LATENTS, 2, frames, state, "encoder")

    def dit(self, latents):
        """-> restored latents, same shape."""
        return self.dit_boundaries(latents)[0]

    def dit_boundaries(self, latents) -> tuple[Any, dict]:
        """-> (restored latents, every part boundary `hidden.<b>` by name: for checking a split DiT).
        Each part is fed `latents` and every earlier part's outputs; the last gives `restored`."""
        values = {LATENTS: latents}
        for part in self.contract.chain(self.runner.shape(latents)[2]):
            values.update(self.runner.run(part, values))
        return values[RESTORED], {name: v for name, v in values.items() if is_hidden(name)}

    def decode(self, latents, state: dict) -> tuple[Any, dict]:
        """-> (uint8 frames [4n, H, W, 3], the state for the next chunk); in slices as encode."""
        return self._sliced(self.contract.decoder, LATENTS, 2, self.contract.decoder_latents_per_call,
                            FRAMES, 0, latents, state, "decoder")

    def _sliced(self, graph: Graph, takes: str, axis_in: int, per_call: int, gives: str, axis_out: int,
                value, state: dict, which: str) -> tuple[Any, dict]:
        """The ReAE is causal with its boundary state: a chunk run as consecutive slices, each handing
        its state to the next, is the chunk run whole (up to the kernels' choice of algorithm per
        size). Slices bound the activations: the ReAE's memory grows with the frames per call."""
        total = self.runner.shape(value)[axis_in]
        if total <= per_call:
            out = self.runner.run(graph, {takes: value, **state})
            return out[gives], self._next_state(which, out)
        pieces = []
        for start in range(0, total, per_call):
            part = self.runner.slice(value, axis_in, start, min(start + per_call, total))
            out = self.runner.run(graph, {takes: part, **state})
            pieces.append(out[gives])
            state = self._next_state(which, out)
        return self.runner.concat(pieces, axis_out), state

    def _next_state(self, which: str, outputs: dict) -> dict:
        return {s.input: outputs[s.output] for s in self.contract.state[which]}


# ---- numpy values ------------------------------------------------------------------------------

def host_dtype(dtype: str) -> np.dtype:
    """The numpy dtype a contract tensor is held in on the host: its own, but float32 for bfloat16
    (numpy has no bf16; ONNX Runtime runs bf16 graphs widened to float32, contract/onnxruntime.py)."""
    return np.dtype(np.float32 if dtype == "bfloat16" else dtype)


def host_feeds(graph: Graph, inputs: dict) -> dict:
    """A graph's inputs from `inputs`, as contiguous numpy arrays in their host dtypes."""
    return {t.name: np.ascontiguousarray(inputs[t.name], host_dtype(t.dtype)) for t in graph.inputs}


class HostArrays:
    """GraphRunner's zeros and shape for runners whose values are numpy arrays."""

    def zeros(self, shape: tuple, dtype: str) -> np.ndarray:
        return np.zeros(shape, host_dtype(dtype))

    def shape(self, value) -> tuple:
        return value.shape

    def slice(self, value, axis: int, start: int, stop: int) -> np.ndarray:
        return value[(slice(None),) * axis + (slice(start, stop),)]

    def concat(self, values: list, axis: int) -> np.ndarray:
        return np.concatenate(values, axis=axis)


class NumpyChunkOps:
    """contract.chunks.ChunkOps over a GraphChain whose values are numpy arrays."""

    def __init__(self, chain: GraphChain):
        self.chain = chain

    def encode(self, frames, state):
        return self.chain.encode(frames, state)

    def dit(self, latents, chunk):
        return self.chain.dit(latents)

    def decode(self, latents, state):
        return self.chain.decode(latents, state)

    def emit(self, frames, start: int, count: int):
        return frames[start:start + count]

    def concat(self, a, b, stage: str):
        return np.concatenate([a, b], axis=2)

    def take_last(self, x, n: int, stage: str):
        return x[:, :, -n:]

    def zeros(self, like, n: int, stage: str):
        return np.zeros_like(like[:, :, :1]).repeat(n, axis=2)


def run_stream(chain: GraphChain, video: np.ndarray, clip_len: int, overlap: int) -> tuple[np.ndarray, list]:
    """A whole clip (uint8 [T, H, W, 3]) through the chunk protocol: every chunk ChunkPlanner plans
    (FIRST, MIDDLE..., LAST), each through contract.chunks.run_chunk with the states carried, as the
    torch Restorer and the runtime's Session run it. -> (the restored frames, the chunks)."""
    planner = ChunkPlanner(clip_len, overlap)
    chunks = planner.push(len(video)) + planner.finish()
    buffer, ops = FrameBuffer(), NumpyChunkOps(chain)
    buffer.add(video)
    state = StreamState(chain.zero_state("encoder"), chain.zero_state("decoder"))
    outputs = [run_chunk(chunk, np.stack(buffer.take(chunk)), ops, state) for chunk in chunks]
    return np.concatenate(outputs), chunks
