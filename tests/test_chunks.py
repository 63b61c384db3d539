"""The chunk protocol: the fixtures' plans, one output frame per input frame, streaming == whole."""
import pytest

from swiftvr.chunks import ChunkPlanner, OnlineReferencePlanner, dit_latent_counts, plan_chunks


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
