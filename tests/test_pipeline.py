"""The torch pipeline against the official pipeline fixtures, and our guarantees beyond them."""
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import FIXTURES
from swiftvr.pipeline import Restorer, RestoreSettings, restore_clip

# With the reference's own timestep sinusoid injected (the fixtures' official code, same machine and
# model: dit_tiny's), the fixtures README's 1e-5; measured offline 6.1e-6 / 4.2e-6, streaming 5.6e-6 /
# 4.5e-6 (ATEN_CPU_CAPABILITY default / avx2, AMD EPYC).
FLOAT_TOL = 1e-5
# With our own sinusoid, which differs by a few 1e-5 between CPUs and math libraries (see
# test_transformer.py). Measured with the correctly rounded sinusoid (4.1e-5 from the fixture's):
# offline 1.4e-5 / 1.1e-5, streaming 1.3e-5 / 1.1e-5, full protocol 1.3e-5 / 1.1e-5 (default / avx2);
# ~2x room, far below what a wrong chunk or state moves (whole frames change).
END_TO_END_FLOAT_TOL = 3e-5


@pytest.fixture(scope="module")
def offline():
    return load_file(FIXTURES / "pipeline_tiny.safetensors")


@pytest.fixture(scope="module")
def online():
    return load_file(FIXTURES / "pipeline_stream_tiny.safetensors")


@pytest.fixture(scope="module")
def reference_sinusoid():
    return load_file(FIXTURES / "dit_tiny.safetensors")["timestep_sinusoid"]


def err(a, b):
    return (a.double() - b.double()).abs().max().item()


def restorer_with(model, sinusoid, *args, **kwargs):
    """A Restorer whose DiT conditioning uses the given timestep sinusoid (the rest as usual)."""
    restorer = Restorer(model, *args, **kwargs)
    restorer.cond = model.transformer.conditioning(model.prompt_emb, sinusoid)
    return restorer


def test_offline_pipeline_matches_fixture(pipeline_model, offline, reference_sinusoid, record_property):
    settings = RestoreSettings(clip_len=8, dit_overlap=0, protocol="reference")
    restorer = restorer_with(pipeline_model, reference_sinusoid, (78, 45), settings, scale=2, output="float")
    out = torch.cat([restorer.push(offline["input_lq_uint8"]), restorer.flush()])
    e = err(out, offline["output_float"])
    record_property("max_abs_err.pipeline_offline_float", e)
    assert e <= FLOAT_TOL
    assert restorer.t_offsets == offline["dit_rope_t_offsets"].tolist()

    # End to end with our own sinusoid: +-1 where x*255 sits near an integer (3e-4 of values measured
    # with the correctly rounded sinusoid).
    frames = restore_clip(pipeline_model, offline["input_lq_uint8"], settings, scale=2)
    diff = (frames.int() - offline["output_uint8"].int()).abs()
    record_property("max_abs_err.pipeline_offline_uint8", diff.max().item())
    assert frames.shape == offline["output_uint8"].shape
    assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3


def test_online_pipeline_matches_fixture(pipeline_model, online, reference_sinusoid, record_property):
    settings = RestoreSettings(clip_len=8, dit_overlap=1, protocol="reference-online")
    restorer = restorer_with(pipeline_model, reference_sinusoid, (78, 45), settings, scale=2, output="float")
    frames = online["input_lq_uint8"]
    outs = [restorer.push(frames[a:b]) for a, b in [(0, 8), (8, 16), (16, 24), (24, 30)]] + [restorer.flush()]
    assert [len(o) for o in outs] == online["step_output_counts"].tolist()
    assert restorer.t_offsets == online["dit_rope_t_offsets"].tolist()
    e = err(torch.cat(outs), online["output_float"])
    record_property("max_abs_err.pipeline_stream_float", e)
    assert e <= FLOAT_TOL


def test_full_protocol_differs_from_reference_only_where_intended(pipeline_model, offline, record_property):
    """On 29 frames of a size divisible by 8, ours = the reference's float output (RoPE offsets 0
    change only rounding), and uint8 is the rounded value instead of the truncated one. End to end:
    our own sinusoid."""
    frames = offline["input_lq_uint8"][:29, :40, :72]
    ours = restore_clip(pipeline_model, frames, RestoreSettings(clip_len=8), scale=2, output="float")
    e = err(ours, offline["output_float"])
    record_property("max_abs_err.pipeline_full_protocol_float", e)
    assert e <= END_TO_END_FLOAT_TOL
    as_uint8 = restore_clip(pipeline_model, frames, RestoreSettings(clip_len=8), scale=2)
    expected = torch.round(ours.clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1)
    assert (as_uint8.int() - expected.int()).abs().max() <= 1   # float noise at .5 boundaries only
    assert (as_uint8.int() - offline["output_uint8"].int()).float().mean() > 0.3  # rounding, not truncation


def small_clip(frames, height=21, width=35, seed=0):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, frames // 4 + 2, 4, 5, generator=g)
    clip = torch.nn.functional.interpolate(coarse, size=(frames, height, width), mode="trilinear")
    return (clip[0].permute(1, 2, 3, 0) * 255).round().to(torch.uint8)


def test_every_frame_comes_out(pipeline_model):
    """1..40 frames in, exactly as many out. One stream pushed a frame at a time; after each push a
    copy of the restorer (sharing the model) is flushed, which is the clip ending there. 16x16 ->
    32x32 and 4-frame chunks, the smallest, to keep it quick (test_chunks covers other chunk
    lengths); the other tests use odd sizes."""
    import copy
    clip = small_clip(40, height=16, width=16)
    restorer = Restorer(pipeline_model, (16, 16), RestoreSettings(clip_len=4), scale=2)
    emitted = 0
    for total in range(1, 41):
        emitted += len(restorer.push(clip[total - 1:total]))
        ending_here = copy.deepcopy(restorer, memo={id(pipeline_model): pipeline_model})
        out = ending_here.flush()
        assert out.shape[1:] == (32, 32, 3)
        assert emitted + len(out) == total, total


def test_every_pixel_comes_out(pipeline_model):
    """An odd size keeps all its pixels: 35x21 -> 70x42 (the reference would crop to 32x16 first)."""
    out = restore_clip(pipeline_model, small_clip(6), RestoreSettings(clip_len=8), scale=2)
    assert out.shape == (6, 42, 70, 3)


def test_streaming_equals_whole_clip(pipeline_model):
    clip = small_clip(27, seed=1)
    settings = RestoreSettings(clip_len=8, dit_overlap=1)
    whole = restore_clip(pipeline_model, clip, settings, scale=2)
    restorer = Restorer(pipeline_model, (35, 21), settings, scale=2)
    pieces, start = [], 0
    for size in [1, 5, 3, 9, 2, 7]:
        pieces.append(restorer.push(clip[start:start + size]))
        start += size
    pieces.append(restorer.flush())
    assert start == len(clip)
    assert torch.equal(torch.cat(pieces), whole)


def test_rejects_wrong_frames(pipeline_model):
    restorer = Restorer(pipeline_model, (35, 21), RestoreSettings(clip_len=8), scale=2)
    with pytest.raises(ValueError, match="made for 35x21"):
        restorer.push(torch.zeros(4, 20, 35, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8"):
        restorer.push(torch.zeros(4, 21, 35, 3))
