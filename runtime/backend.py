"""The backend interface: what TensorRT, ONNX Runtime and torch each provide, and nothing more.

A backend gives two objects:

  LoadedModel  the graphs / engines / weights, loaded once. Shared read-only by any number of
               Sessions, also from several threads. It makes the per-stream objects below.
  Kernels      (a typing.Protocol) one stream's executors (TensorRT execution contexts, CUDA
               streams, torch grid plans...). Owned by one Session, never shared. Its methods work
               on the backend's own device arrays (numpy, torch tensors, CUDA buffers) and never
               move them to the host except in `download`.

The Runner below puts each Kernels call on its stage's lane (runtime/lanes.py), which is where
overlap comes from, and is the contract.chunks.ChunkOps that contract.chunks.run_chunk drives: the
chunk logic itself lives once, there.
"""
from typing import Any, Protocol

import numpy as np

from .lanes import StageStats
from .spec import ModelSpec


class Kernels(Protocol):
    """One stream's stage functions on the backend's device arrays."""

    def host_frames(self, count: int) -> np.ndarray:
        """Host buffer uint8 [count, H_in, W_in, 3] to gather a chunk into (pinned memory on CUDA,
        so the upload is a real async copy)."""
    def upload(self, host: np.ndarray) -> Any:
        """-> the frames on the device."""
    def zero_state(self, which: str) -> Any:
        """-> the "encoder" / "decoder" boundary state at stream start."""
    def encode(self, frames, state) -> tuple[Any, Any]:
        """-> (LQ latents [1, 48, n, h, w], new state)."""
    def dit(self, latents) -> Any:
        """-> restored latents, same shape."""
    def decode(self, latents, state) -> tuple[Any, Any]:
        """-> (uint8 frames [4n, H_out, W_out, 3], new state)."""
    def download(self, frames, start: int, count: int) -> Any:
        """-> host frames[start:start+count] (starts the copy on CUDA)."""
    def finish(self, host) -> np.ndarray:
        """-> the downloaded frames as a numpy array the caller owns."""
    def concat(self, a, b) -> Any:
        """Latents along the frame axis (2)."""
    def take_last(self, x, n: int) -> Any:
        """The last n latent frames (x itself when it has no more)."""
    def zeros(self, like, n: int) -> Any:
        """n zero latent frames shaped like `like`."""
    def close(self) -> None:
        """Let go of what this stream allocated (pinned host buffers...)."""


class LoadedModel:
    spec: ModelSpec

    def kernels(self) -> Kernels:
        raise NotImplementedError

    def lanes(self, overlap: bool, stats: StageStats) -> dict:
        raise NotImplementedError

    def memory(self) -> dict:
        """{"device": str, "in_use_bytes": int | None, "peak_bytes": int | None} (None: cannot tell)."""
        return {"device": self.spec.device, "in_use_bytes": None, "peak_bytes": None}

    def reset_peak_memory(self) -> None:
        pass

    @property
    def default_in_flight(self) -> int:
        """Chunks in flight when the caller does not say. On a GPU the stages run on their own
        streams and overlap (3). On the CPU the stages compete for the same cores: measured on 2
        cores (tiny preset, 96x54 -> 192x108, interleaved runs), 3 chunks in flight on threads gave
        8.96 frames/s with ONNX Runtime against 9.07 one at a time, and torch 6.67 against 6.36:
        no gain worth three chunks of memory and latency, so one at a time."""
        return 3 if self.spec.device.startswith("cuda") or self.spec.backend == "tensorrt" else 1

    def new_runner(self, overlap: bool, stats: StageStats) -> "Runner":
        return Runner(self.kernels(), self.lanes(overlap, stats))

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Runner:
    """A Kernels object with each call routed to its stage's lane. Values passed between calls are
    whatever the lanes make of them (arrays, Futures, arrays plus CUDA events)."""

    def __init__(self, kernels: Kernels, lanes: dict):
        self.kernels, self.lanes = kernels, lanes

    def host_frames(self, count: int) -> np.ndarray:
        return self.kernels.host_frames(count)

    def zero_state(self, which: str):
        return self.lanes["encode" if which == "encoder" else "decode"].submit(self.kernels.zero_state, which, timed=False)

    def upload(self, host: np.ndarray):
        return self.lanes["upload"].submit(self.kernels.upload, host)

    def encode(self, frames, state):
        return self.lanes["encode"].submit(self.kernels.encode, frames, state, outputs=2)

    def dit(self, latents, chunk=None):
        # The chunk's RoPE offset is not needed: every backend uses offset 0 (swiftvr/pipeline.py).
        return self.lanes["dit"].submit(self.kernels.dit, latents)

    def decode(self, latents, state):
        return self.lanes["decode"].submit(self.kernels.decode, latents, state, outputs=2)

    def download(self, frames, start: int, count: int):
        return self.lanes["download"].submit(self.kernels.download, frames, start, count)

    emit = download      # what run_chunk does with a chunk's frames: start their copy to the host

    # array ops run untimed on the lane of the stage that needs them
    def concat(self, a, b, stage: str):
        return self.lanes[stage].submit(self.kernels.concat, a, b, timed=False)

    def take_last(self, x, n: int, stage: str):
        return self.lanes[stage].submit(self.kernels.take_last, x, n, timed=False)

    def zeros(self, like, n: int, stage: str):
        return self.lanes[stage].submit(self.kernels.zeros, like, n, timed=False)

    def ready(self, ticket) -> bool:
        return self.lanes["download"].ready(ticket)

    def result(self, ticket) -> np.ndarray:
        """Wait for a download and return its frames."""
        return self.kernels.finish(self.lanes["download"].wait(ticket))

    def close(self) -> None:
        """Waits for the lanes' work, then lets the Kernels free what they allocated."""
        for lane in self.lanes.values():
            lane.close()
        self.kernels.close()
