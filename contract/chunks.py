"""The chunk protocol: which frames each chunk encodes, what its DiT call sees, what it emits.

Free of torch: the torch pipeline and the runtime's backends all follow these plans, so every
backend cuts a video the same way. Two plans:

* `ChunkPlanner` — the reference's offline protocol (SPEC.md e, `restore_video`): a FIRST chunk of
  clip_len+4 frames, MIDDLE chunks of clip_len, a LAST chunk of 4b+1 frames (+3 copies of its last
  frame) whose DiT call is padded in front with earlier low-quality latents. It is streamable with
  one frame of look-ahead: a chunk is emitted as soon as the frames seen prove the offline plan
  would contain it. By default (`keep_all_frames`) a clip of any length is padded at the end with
  copies of its last frame up to the next 4a+1 and the extra outputs are not emitted, so exactly one
  frame comes out per frame in; `keep_all_frames=False` drops the trailing 1-3 frames like the reference.
* `OnlineReferencePlanner` — the reference's `StreamSession`: each push encodes as many groups of 4
  frames as it has; 4*ceil(T/4) - 3 frames come out. Kept for conformance only.

Frame numbering is in the (padded) input stream; output frame i corresponds to input frame i.

`run_chunk` is the one step every driver runs per planned chunk (the torch Restorer, the runtime's
Session, export.verify, runtime.bench): encode with the carried encoder state -> DiT input = the
prefix the plan asks for (zeros, or the last LQ latents) + the chunk's own latents -> DiT -> keep
the chunk's own latents -> decode with the carried decoder state -> emit frames[trim:trim+emit].
Each driver supplies the arithmetic on its own tensors through a `ChunkOps` object; `FrameBuffer`
hands each chunk its input frames (padded with copies of its last real one).
"""
from dataclasses import dataclass, replace
from typing import Any, Protocol


@dataclass(frozen=True)
class Chunk:
    index: int
    kind: str               # "first" | "middle" | "last" | "single" | "group" (online reference)
    start: int              # first input frame of the chunk
    frames: int             # input frames of the chunk, padding copies included
    encode_frames: int      # frames the encoder sees (a multiple of 4): frames + copies of the last one
    dit_prefix: int         # earlier LQ latents put before this chunk's own in its DiT call
    prefix_is_zeros: bool   # the prefix is zeros (a clip that is one LAST chunk has no earlier latents)
    t_offset: int           # RoPE temporal offset the reference uses for this call
    trim: int               # decoded frames dropped at the front (3 on a stream's first chunk)
    emit_frames: int        # frames this chunk outputs (after trim; may be less at the end of a clip)
    history_keep: int       # LQ latents to keep after this chunk: the most a later DiT prefix takes

    @property
    def latents(self) -> int:
        return self.encode_frames // 4

    @property
    def dit_latents(self) -> int:
        return self.dit_prefix + self.latents


def history_keep(clip_len: int, overlap: int) -> int:
    """LQ latents a later chunk's DiT prefix can reach back to (a LAST chunk pads up to clip_len/4,
    a MIDDLE chunk takes `overlap`), so the history of earlier latents never needs more."""
    return max(clip_len // 4, overlap)


def dit_latent_counts(clip_len: int, overlap: int) -> list[int]:
    """Every latent-frame count the offline protocol calls the DiT with (one graph/engine each)."""
    n = clip_len // 4
    counts = {n + 1}                  # FIRST, LAST and single chunks
    counts.add(n + min(overlap, n))   # MIDDLE chunks carry `overlap` latents of context
    return sorted(counts)


def check_settings(clip_len: int, overlap: int) -> None:
    if clip_len < 4 or clip_len % 4:
        raise ValueError(f"clip_len must be a positive multiple of 4, got {clip_len}")
    if not 0 <= overlap <= clip_len // 4:
        raise ValueError(f"dit_overlap must be in 0..{clip_len // 4} for clip_len {clip_len}, got {overlap}")


class ChunkPlanner:
    def __init__(self, clip_len: int = 24, overlap: int = 0, keep_all_frames: bool = True):
        check_settings(clip_len, overlap)
        self.clip_len, self.overlap, self.keep_all_frames = clip_len, overlap, keep_all_frames
        self.n_lat = clip_len // 4
        self.keep = history_keep(clip_len, overlap)
        self.seen = 0          # input frames pushed so far
        self.planned = 0       # input frames covered by emitted chunks
        self.latents = 0       # global latent counter g
        self.chunks: list[Chunk] = []
        self.finished = False

    def push(self, count: int) -> list[Chunk]:
        """`count` more frames arrived; returns the chunks they complete."""
        if self.finished:
            raise RuntimeError("push() after finish()")
        self.seen += count
        out = []
        while True:
            remaining = self.seen - self.planned
            # Strictly more than a chunk must be buffered: with exactly clip_len (+4) frames left the
            # clip could end there, and then those frames form the LAST chunk instead.
            if not self.chunks and remaining > self.clip_len + 4:
                out.append(self._regular(self.clip_len + 4))
            elif self.chunks and remaining > self.clip_len:
                out.append(self._regular(self.clip_len))
            else:
                return out

    def finish(self) -> list[Chunk]:
        """End of the clip: plans the remaining frames (padded per the settings)."""
        if self.finished:
            return []
        self.finished = True
        total = self.seen
        if total == 0:
            return []
        padded = 4 * ((total - 1 + 3) // 4) + 1 if self.keep_all_frames else 4 * ((total - 1) // 4) + 1
        out = []
        if padded <= self.planned:
            return out
        # The offline plan of the padded remainder: regular chunks while more than one remains.
        while True:
            remaining = padded - self.planned
            if not self.chunks and remaining > self.clip_len + 4:
                out.append(self._regular(self.clip_len + 4))
            elif self.chunks and remaining > self.clip_len:
                out.append(self._regular(self.clip_len))
            else:
                break
        out.append(self._last(padded - self.planned))
        # Outputs of padding frames (index >= total) are not emitted; emitted frames so far are all real.
        emitted = sum(c.emit_frames for c in self.chunks[:-len(out)] or [])
        fixed = []
        for chunk in out:
            keep = max(0, min(chunk.emit_frames, total - emitted))
            emitted += keep
            fixed.append(replace(chunk, emit_frames=keep))
        self.chunks[-len(out):] = fixed
        return fixed

    def _regular(self, frames: int) -> Chunk:
        first = not self.chunks
        prefix = 0 if first else self.overlap
        chunk = Chunk(index=len(self.chunks), kind="first" if first else "middle", start=self.planned,
                      frames=frames, encode_frames=frames, dit_prefix=prefix, prefix_is_zeros=False,
                      t_offset=self.latents - prefix, trim=3 if first else 0,
                      emit_frames=frames - (3 if first else 0), history_keep=self.keep)
        return self._add(chunk)

    def _last(self, frames: int) -> Chunk:
        assert frames % 4 == 1, frames
        first = not self.chunks
        b = (frames - 1) // 4
        pad = self.n_lat - b
        chunk = Chunk(index=len(self.chunks), kind="single" if first else "last", start=self.planned,
                      frames=frames, encode_frames=frames + 3, dit_prefix=pad, prefix_is_zeros=first,
                      t_offset=max(0, self.latents - pad), trim=3 if first else 0,
                      emit_frames=frames + 3 - (3 if first else 0), history_keep=self.keep)
        return self._add(chunk)

    def _add(self, chunk: Chunk) -> Chunk:
        self.chunks.append(chunk)
        self.planned += chunk.frames
        self.latents += chunk.latents
        return chunk


class OnlineReferencePlanner:
    """The reference `StreamSession` protocol (conformance only: it loses the last frames)."""

    def __init__(self, clip_len: int = 24, overlap: int = 1):
        check_settings(clip_len, overlap)
        self.overlap, self.keep = overlap, history_keep(clip_len, overlap)
        self.seen = self.planned = self.latents = 0
        self.chunks: list[Chunk] = []
        self.finished = False

    def push(self, count: int) -> list[Chunk]:
        self.seen += count
        frames = (self.seen - self.planned) // 4 * 4
        return [self._group(frames, frames)] if frames else []

    def finish(self) -> list[Chunk]:
        if self.finished:
            return []
        self.finished = True
        rest = self.seen - self.planned
        return [self._group(rest, 4 * ((rest + 3) // 4))] if rest else []

    def _group(self, frames: int, encode_frames: int) -> Chunk:
        first = not self.chunks
        prefix = 0 if first else self.overlap
        chunk = Chunk(index=len(self.chunks), kind="group", start=self.planned, frames=frames,
                      encode_frames=encode_frames, dit_prefix=prefix, prefix_is_zeros=False,
                      t_offset=self.latents - prefix, trim=3 if first else 0,
                      emit_frames=encode_frames - (3 if first else 0), history_keep=self.keep)
        self.chunks.append(chunk)
        self.planned += frames
        self.latents += chunk.latents
        return chunk


def plan_chunks(total: int, clip_len: int = 24, overlap: int = 0, keep_all_frames: bool = True) -> list[Chunk]:
    planner = ChunkPlanner(clip_len, overlap, keep_all_frames)
    return planner.push(total) + planner.finish()


# ---- executing a plan ------------------------------------------------------------------------------
class FrameBuffer:
    """Input frames waiting for their chunk, as a list of single frames (numpy arrays or tensors:
    only list operations are used). `take` lets go of every frame before the next chunk's start."""

    def __init__(self):
        self.frames: list = []      # frames not yet consumed by a chunk
        self.start = 0              # stream index of self.frames[0]
        self.last = None            # the stream's last frame so far (pads a chunk with no real frame)

    def add(self, frames) -> None:
        """`frames`: an iterable of single frames, in stream order."""
        frames = list(frames)
        if frames:
            self.frames.extend(frames)
            self.last = frames[-1]

    def take(self, chunk: Chunk) -> list:
        """The chunk's frames padded to `encode_frames` with copies of its last real frame."""
        begin = chunk.start - self.start
        real = self.frames[begin:begin + chunk.frames]
        pad = [real[-1] if real else self.last] * (chunk.encode_frames - len(real))
        consumed = chunk.start + chunk.frames - self.start
        del self.frames[:consumed]
        self.start += consumed
        return real + pad

    def clear(self) -> None:
        self.frames.clear()


class ChunkOps(Protocol):
    """What `run_chunk` needs from a driver, on the driver's own tensors. Latents are
    [1, 48, frames, h, w] (the DiT layout); `stage` names the stage an array operation serves
    (a driver with per-stage lanes runs it there; others ignore it)."""

    def encode(self, frames, state) -> tuple[Any, Any]: ...          # -> (LQ latents, new state)
    def dit(self, latents, chunk: Chunk) -> Any: ...                 # -> restored latents, same shape
    def decode(self, latents, state) -> tuple[Any, Any]: ...         # -> (frames, new state)
    def emit(self, frames, start: int, count: int) -> Any: ...       # frames[start:start+count], as output
    def concat(self, a, b, stage: str) -> Any: ...                   # along the latent frame axis
    def take_last(self, x, n: int, stage: str) -> Any: ...           # the last n latent frames
    def zeros(self, like, n: int, stage: str) -> Any: ...            # n zero latent frames like `like`


@dataclass
class StreamState:
    """What a stream carries from chunk to chunk."""
    encoder: Any = None         # boundary state of the encoder (None: the driver's zero state)
    decoder: Any = None
    history: Any = None         # the latest LQ latents: where DiT prefixes come from


def run_chunk(chunk: Chunk, frames, ops: ChunkOps, state: StreamState):
    """One chunk of the plan: returns ops.emit(...) of its output frames; updates `state`."""
    lq, state.encoder = ops.encode(frames, state.encoder)
    z = lq
    if chunk.dit_prefix:
        prefix = (ops.zeros(lq, chunk.dit_prefix, "dit") if chunk.prefix_is_zeros
                  else ops.take_last(state.history, chunk.dit_prefix, "dit"))
        z = ops.concat(prefix, lq, "dit")
    hq = ops.dit(z, chunk)
    if chunk.dit_prefix:
        hq = ops.take_last(hq, chunk.latents, "dit")
    # The history is LQ latents (the DiT's inputs, not its outputs), as the reference keeps.
    history = lq if state.history is None else ops.concat(state.history, lq, "encode")
    state.history = ops.take_last(history, chunk.history_keep, "encode")
    decoded, state.decoder = ops.decode(hq, state.decoder)
    return ops.emit(decoded, chunk.trim, chunk.emit_frames)
