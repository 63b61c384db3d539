"""Session: one video stream through a loaded model. The only place the chunk logic lives.

    model = load_bundle("engines/360p.plan")        # load once (engines / graphs / weights)
    a, b = Session(model), Session(model)           # any number of streams share them
    out = a.push(frames)                            # uint8 [T, H, W, 3] in -> restored frames out
    out = a.flush()                                 # end of stream: the rest

Every input frame gives exactly one output frame, in order (ChunkPlanner with keep_all_frames):
push() returns the frames of the chunks that are finished, flush() all the rest. Each chunk is
  upload -> encode (encoder state carried) -> DiT, its call prefixed with zeros or earlier LQ
  latents as the plan says -> keep its own latents -> decode (decoder state carried) -> trim
exactly as swiftvr.pipeline.Restorer._restore_chunk does in torch, so every backend gives the
ground truth's frames (up to its arithmetic).

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

from swiftvr.chunks import Chunk, ChunkPlanner

from .backend import LoadedModel
from .errors import InputSizeError
from .lanes import StageStats
from .resize import resize_frames


class Session:
    def __init__(self, model, *, in_flight: int = 1, overlap: bool | None = None, resize: bool = False):
        """model: a LoadedModel (shared with other Sessions) or anything load_bundle() takes.
        in_flight: chunks under way at once (1: push() returns each chunk's frames before it returns).
        overlap: run the stages on their own lanes (threads / CUDA streams); default: in_flight > 1.
        resize: resize frames of another size to the model's input size instead of raising."""
        if not isinstance(model, LoadedModel):
            from .load import load_bundle
            model = load_bundle(model)
        if in_flight < 1:
            raise ValueError(f"in_flight must be >= 1, got {in_flight}")
        self.model, self.spec = model, model.spec
        self.in_flight, self.resize = in_flight, resize
        self.stats = StageStats()
        self.runner = model.new_runner(in_flight > 1 if overlap is None else overlap, self.stats)
        self.planner = ChunkPlanner(self.spec.clip_len, self.spec.dit_overlap, keep_all_frames=True)
        # How many LQ latents a later DiT call can look back to (as the torch Restorer keeps).
        self.keep = max(self.spec.clip_len // 4, self.spec.dit_overlap)
        self.frames: list[np.ndarray] = []    # input frames not yet consumed by a chunk
        self.frames_start = 0                 # stream index of self.frames[0]
        self.last_frame = None
        self.encoder_state = self.runner.zero_state("encoder")
        self.decoder_state = self.runner.zero_state("decoder")
        self.history = None                   # the latest LQ latents: where DiT prefixes come from
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
            self.frames.extend(np.array(frames))
            self.last_frame = frames[-1]
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
            self.runner.close()
            self.pending.clear()
            self.frames.clear()
            self.history = self.encoder_state = self.decoder_state = None

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
            if not self.resize:
                raise InputSizeError(f"frames are {frames.shape[2]}x{frames.shape[1]}, the model takes "
                                     f"{width}x{height} ({self.spec.source}); resize them "
                                     f"(Session(resize=True), --resize) or use a model built for that size")
            frames = resize_frames(frames, (width, height))
        return frames

    def _take_frames(self, chunk: Chunk) -> list[np.ndarray]:
        """The chunk's frames padded with copies of its last real frame; frames before the next
        chunk's start are let go."""
        begin = chunk.start - self.frames_start
        real = self.frames[begin:begin + chunk.frames]
        pad = [real[-1] if real else self.last_frame] * (chunk.encode_frames - len(real))
        consumed = chunk.start + chunk.frames - self.frames_start
        del self.frames[:consumed]
        self.frames_start += consumed
        return real + pad

    def _submit(self, chunk: Chunk) -> None:
        frames = self._take_frames(chunk)
        if chunk.emit_frames == 0:
            # Only padding frames' outputs are left; later chunks of the plan emit nothing either.
            return
        while len(self.pending) >= self.in_flight:       # bound the work (and memory) under way
            self._finish_oldest()
        r = self.runner
        host = r.host_frames(chunk.encode_frames)         # pinned on CUDA: the upload is async
        np.stack(frames, out=host)
        lq, self.encoder_state = r.encode(r.upload(host), self.encoder_state)
        z = lq
        if chunk.dit_prefix:
            prefix = (r.zeros(lq, chunk.dit_prefix, "dit") if chunk.prefix_is_zeros
                      else r.take_last(self.history, chunk.dit_prefix, "dit"))
            z = r.concat(prefix, lq, "dit")
        hq = r.dit(z)
        if chunk.dit_prefix:
            hq = r.take_last(hq, chunk.latents, "dit")
        # The history is LQ latents (the DiT's inputs, not its outputs), as the reference keeps.
        history = lq if self.history is None else r.concat(self.history, lq, "encode")
        self.history = r.take_last(history, self.keep, "encode")
        frames, self.decoder_state = r.decode(hq, self.decoder_state)
        self.pending.append((chunk, r.download(frames, chunk.trim, chunk.emit_frames)))

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
