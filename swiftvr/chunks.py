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
"""
from dataclasses import dataclass, replace


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

    @property
    def latents(self) -> int:
        return self.encode_frames // 4

    @property
    def dit_latents(self) -> int:
        return self.dit_prefix + self.latents


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
                      emit_frames=frames - (3 if first else 0))
        return self._add(chunk)

    def _last(self, frames: int) -> Chunk:
        assert frames % 4 == 1, frames
        first = not self.chunks
        b = (frames - 1) // 4
        pad = self.n_lat - b
        chunk = Chunk(index=len(self.chunks), kind="single" if first else "last", start=self.planned,
                      frames=frames, encode_frames=frames + 3, dit_prefix=pad, prefix_is_zeros=first,
                      t_offset=max(0, self.latents - pad), trim=3 if first else 0,
                      emit_frames=frames + 3 - (3 if first else 0))
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
        self.overlap = overlap
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
                      emit_frames=encode_frames - (3 if first else 0))
        self.chunks.append(chunk)
        self.planned += frames
        self.latents += chunk.latents
        return chunk


def plan_chunks(total: int, clip_len: int = 24, overlap: int = 0, keep_all_frames: bool = True) -> list[Chunk]:
    planner = ChunkPlanner(clip_len, overlap, keep_all_frames)
    return planner.push(total) + planner.finish()
