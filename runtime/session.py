"""Session: one video stream through a loaded model.

    model = load_bundle("engines/360p.plan")        # load once (engines / graphs / weights)
    a, b = Session(model), Session(model)           # any number of streams share them
    out = a.push(frames)                            # uint8 [T, H, W, 3] in -> restored frames out
    out = a.flush()                                 # end of stream: the rest

Every input frame gives exactly one output frame, in order (ChunkPlanner with keep_all_frames):
push() returns the frames of the chunks that are finished, flush() all the rest. Each chunk is
uploaded, then run by contract.chunks.run_chunk (the step swiftvr.pipeline.Restorer runs in torch)
with the backend's Runner as its ChunkOps, so every backend gives the ground truth's frames (up to
its arithmetic); the step's output is a download ticket.

The work of a chunk is submitted without waiting (runtime/lanes.py), and up to `in_flight` chunks
are under way at once: with in_flight >= 3 and overlapping lanes, encode of chunk k+1, DiT of
chunk k and decode of chunk k-1 run at the same time. Memory stays flat on streams of any length:
at most `in_flight` chunks of device arrays plus one chunk of pending input frames exist.

Thread safety: a Session is used by one thread at a time. Sessions on the same LoadedModel may run
in different threads: the loaded engines / graphs / weights are only read, and everything a stream
changes (boundary states, latent history, execution contexts, CUDA streams) belongs to its Session.
"""
from collections import deque

import numpy as np

from contract.chunks import Chunk, ChunkPlanner, FrameBuffer, StreamState, run_chunk

from .backend import LoadedModel
from .errors import InputSizeError
from .lanes import StageStats


class Session:
    def __init__(self, model: LoadedModel, *, in_flight: int | None = None, overlap: bool | None = None):
        """model: a LoadedModel (load_bundle, load_torch), shared with other Sessions.
        in_flight: chunks under way at once (1: push() returns each chunk's frames before it returns);
        default: the model's default_in_flight (3 on a GPU, 1 on the CPU).
        overlap: run the stages on their own lanes (threads / CUDA streams); default: in_flight > 1."""
        if not isinstance(model, LoadedModel):
            raise TypeError(f"Session takes a loaded model (runtime.load_bundle(path), runtime.load_torch(...)), "
                            f"not {type(model).__name__}")
        in_flight = model.default_in_flight if in_flight is None else in_flight
        if in_flight < 1:
            raise ValueError(f"in_flight must be >= 1, got {in_flight}")
        self.model, self.spec = model, model.spec
        self.in_flight = in_flight
        self.overlap = in_flight > 1 if overlap is None else overlap
        self.stats = StageStats()
        self.runner = model.new_runner(self.overlap, self.stats)
        self.planner = ChunkPlanner(self.spec.clip_len, self.spec.dit_overlap, keep_all_frames=True)
        self.buffer = FrameBuffer()           # input frames not yet consumed by a chunk
        self.state = StreamState(encoder=self.runner.zero_state("encoder"),
                                 decoder=self.runner.zero_state("decoder"))
        self.pending: deque = deque()         # (chunk, download ticket), oldest first
        self.ready_frames: list = []          # finished chunks' frames not yet returned
        self.frames_in = self.frames_out = 0
        self.chunks_done = 0
        self.closed = False
        self.flushed = False

    # ---- public ------------------------------------------------------------------------------
    def push(self, frames) -> np.ndarray:
        """Frames uint8 [T, H, W, 3] (RGB) in; the restored frames that are ready come out."""
        frames = self._check(frames)
        if len(frames):
            # A copy: the caller may reuse its buffer while these frames wait for their chunk.
            self.buffer.add(np.array(frames))
            self.frames_in += len(frames)
        for chunk in self.planner.push(len(frames)):
            self._submit(chunk)
        return self._collect(wait=False)

    def flush(self) -> np.ndarray:
        """End of the stream: restores the frames still buffered and returns everything left."""
        self._check_open("flush")
        self.flushed = True
        for chunk in self.planner.finish():
            self._submit(chunk)
        return self._collect(wait=True)

    def drain(self) -> np.ndarray:
        """Finishes the chunks already under way and returns their frames; plans nothing new (the
        frames buffered for a next chunk are dropped). For stopping early, e.g. on Ctrl-C."""
        self._check_open("drain")
        return self._collect(wait=True)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            # Let go of the stream's arrays first: closing the runner waits for the lanes' work,
            # then its Kernels free what this stream allocated (all of it, nothing in use remains).
            self.pending.clear()
            self.buffer.clear()
            self.state = None
            self.runner.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- chunks ------------------------------------------------------------------------------
    def _check_open(self, what: str) -> None:
        if self.closed:
            raise RuntimeError(f"{what}() on a closed Session")

    def _check(self, frames) -> np.ndarray:
        self._check_open("push")
        if self.flushed:
            raise RuntimeError("push() after flush(): the stream has ended; start a new Session for more frames")
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"expected uint8 RGB frames [T, H, W, 3], got {frames.dtype} {list(frames.shape)}")
        width, height = self.spec.input_size
        if frames.shape[1:3] != (height, width) and len(frames):
            raise InputSizeError(f"frames are {frames.shape[2]}x{frames.shape[1]}, the model takes "
                                 f"{width}x{height} ({self.spec.source}); resize them (video.resize.resize_frames, "
                                 f"--resize) or use a model built for that size")
        return frames

    def _submit(self, chunk: Chunk) -> None:
        frames = self.buffer.take(chunk)
        if chunk.emit_frames == 0:
            # Only padding frames' outputs are left; later chunks of the plan emit nothing either.
            return
        while len(self.pending) >= self.in_flight:       # bound the work (and memory) under way
            self._finish_oldest()
        host = self.runner.host_frames(chunk.encode_frames)   # pinned on CUDA: the upload is async
        np.stack(frames, out=host)
        ticket = run_chunk(chunk, self.runner.upload(host), self.runner, self.state)
        self.pending.append((chunk, ticket))

    def _finish_oldest(self) -> None:
        chunk, ticket = self.pending.popleft()
        frames = self.runner.result(ticket)
        width, height = self.spec.output_size
        if frames.shape != (chunk.emit_frames, height, width, 3):
            raise RuntimeError(f"chunk {chunk.index}: the backend gave {list(frames.shape)}, expected "
                               f"{[chunk.emit_frames, height, width, 3]}")
        self.frames_out += len(frames)
        self.chunks_done += 1
        self.stats.resolve()          # GPU timings of finished work (lets their events go)
        self.ready_frames.append(frames)

    def _collect(self, wait: bool) -> np.ndarray:
        while self.pending and (wait or self.runner.ready(self.pending[0][1])):
            self._finish_oldest()
        out, self.ready_frames = self.ready_frames, []
        if out:
            return out[0] if len(out) == 1 else np.concatenate(out)
        width, height = self.spec.output_size
        return np.zeros((0, height, width, 3), np.uint8)
