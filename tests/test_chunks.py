"""The chunk protocol: the fixtures' plans, one output frame per input frame, streaming == whole."""
import numpy as np
import pytest

from contract.chunks import (ChunkPlanner, FrameBuffer, OnlineReferencePlanner, StreamState, dit_latent_counts,
                            plan_chunks, run_chunk)


def test_reference_plan_of_pipeline_fixture():
    chunks = plan_chunks(29, clip_len=8, overlap=0, keep_all_frames=False)
    assert [(c.kind, c.start, c.frames) for c in chunks] == [
        ("first", 0, 12), ("middle", 12, 8), ("middle", 20, 8), ("last", 28, 1)]
    assert [c.latents for c in chunks] == [3, 2, 2, 1]
    assert [c.t_offset for c in chunks] == [0, 3, 5, 5]
    assert [c.emit_frames for c in chunks] == [9, 8, 8, 4]
    assert chunks[-1].dit_prefix == 2 and not chunks[-1].prefix_is_zeros


def test_online_reference_plan_of_stream_fixture():
    planner = OnlineReferencePlanner(clip_len=8, overlap=1)
    chunks = [c for n in (8, 8, 8, 6) for c in planner.push(n)] + planner.finish()
    assert [c.emit_frames for c in chunks] == [5, 8, 8, 4, 4]
    assert [c.t_offset for c in chunks] == [0, 1, 3, 5, 6]


@pytest.mark.parametrize("clip_len", [4, 8, 24])
@pytest.mark.parametrize("overlap", [0, 1])
def test_every_frame_comes_out_and_streaming_equals_whole(clip_len, overlap):
    for total in range(1, 80):
        whole = plan_chunks(total, clip_len, overlap)
        assert sum(c.emit_frames for c in whole) == total
        planner = ChunkPlanner(clip_len, overlap)
        streamed = [c for _ in range(total) for c in planner.push(1)] + planner.finish()
        assert streamed == whole
        reference = plan_chunks(total, clip_len, overlap, keep_all_frames=False)
        assert sum(c.emit_frames for c in reference) == 4 * ((total - 1) // 4) + 1
        assert {c.dit_latents for c in whole} <= set(dit_latent_counts(clip_len, overlap))
        assert all(c.encode_frames % 4 == 0 and c.encode_frames <= clip_len + 4 for c in whole)


def test_single_chunk_is_padded_with_zeros():
    (chunk,) = plan_chunks(9, clip_len=24)
    assert chunk.kind == "single" and chunk.prefix_is_zeros and chunk.dit_prefix == 6 - 2


def test_overlap_one_needs_a_single_dit_shape():
    assert dit_latent_counts(24, 1) == [7]
    assert dit_latent_counts(24, 0) == [6, 7]


@pytest.mark.parametrize("clip_len, overlap", [(6, 0), (0, 0), (8, 3), (8, -1)])
def test_bad_settings(clip_len, overlap):
    with pytest.raises(ValueError):
        ChunkPlanner(clip_len, overlap)


class ListOps:
    """run_chunk's ChunkOps on numpy latents [1, 1, n, 1, 1] whose values name the frames they
    were encoded from (the first frame of each group of 4), so the test can read what went where."""

    def __init__(self):
        self.dit_inputs = []

    def encode(self, frames, state):
        return np.asarray(frames[::4], float).reshape(1, 1, -1, 1, 1), (state or 0) + 1

    def dit(self, latents, chunk):
        self.dit_inputs.append(latents.ravel().tolist())
        return latents + 0.5

    def decode(self, latents, state):
        return np.repeat(latents.ravel(), 4), (state or 0) + 1

    def emit(self, frames, start, count):
        return frames[start:start + count]

    def concat(self, a, b, stage):
        return np.concatenate([a, b], axis=2)

    def take_last(self, x, n, stage):
        return x[:, :, -n:]

    def zeros(self, like, n, stage):
        return np.zeros((1, 1, n, 1, 1))


def test_run_chunk_prefixes_from_the_history_and_keeps_only_the_chunks_own_latents():
    chunks = plan_chunks(29, clip_len=8, overlap=0, keep_all_frames=False)
    buffer, ops, state = FrameBuffer(), ListOps(), StreamState()
    buffer.add(range(29))
    out = [run_chunk(c, buffer.take(c), ops, state) for c in chunks]
    # FIRST 12 frames, two MIDDLE of 8, then the LAST (frame 28 + 3 copies) after the 2 latents before it
    assert ops.dit_inputs == [[0, 4, 8], [12, 16], [20, 24], [20, 24, 28]]
    assert [len(o) for o in out] == [c.emit_frames for c in chunks] == [9, 8, 8, 4]
    # the DiT output of the prefix is dropped: the LAST chunk decodes only its own latent
    assert out[-1].tolist() == [28.5] * 4 and state.encoder == state.decoder == 4
    assert state.history.ravel().tolist() == [24, 28] and chunks[-1].history_keep == 2    # clip_len / 4


def test_a_clip_that_is_one_last_chunk_is_prefixed_with_zeros():
    (chunk,) = plan_chunks(5, clip_len=8)
    buffer, ops = FrameBuffer(), ListOps()
    buffer.add(range(5))
    out = run_chunk(chunk, buffer.take(chunk), ops, StreamState())
    assert ops.dit_inputs == [[0, 0, 4]] and len(out) == 5
