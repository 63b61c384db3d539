"""The GPU memory plan and what the runtime allocates: contract/context_memory.py (which contexts share
an activation buffer), engines/fit.py (slices, sharing and weight streaming chosen to fit a budget,
or a refusal before building), the TensorRT backend's user-managed context memory and weight-streaming
budgets, with runtime/gpucheck's stand-ins for TensorRT and CUDA (hostcuda.py). What only a GPU can
show (TensorRT's own activation and scratch figures, the streaming's real cost) is not here: the
plan records the ONNX estimates, and runtime.gpucheck's tensorrt_session runs the same Session path."""
import pytest

from contract.bundle import read_manifest
from contract.context_memory import context_buffers
from engines.fit import BundleTooLarge, fit_bundle
from engines.memory import gpu_plan
from engines.profiles import get_profile

MIB = 2**20

# ------------------------------------------------------------------------------ context buffers


NEEDS = [("encoder", "encoder", 300), ("dit.f3.0", "dit", 50), ("dit.f3.1", "dit", 70), ("dit.f2.0", "dit", 40),
         ("decoder", "decoder", 200)]


def test_overlap_on_gives_a_buffer_per_lane_the_dit_parts_sharing_one():
    buffers = context_buffers(NEEDS, overlap=True)
    assert [(b.engines, b.nbytes) for b in buffers] == [
        (("encoder",), 300), (("dit.f3.0", "dit.f3.1", "dit.f2.0"), 70), (("decoder",), 200)]


def test_overlap_off_gives_one_buffer_for_every_engine():
    buffers = context_buffers(NEEDS, overlap=False)
    assert [(b.engines, b.nbytes) for b in buffers] == [(tuple(n for n, _, _ in NEEDS), 300)]


def test_a_role_no_lane_runs_is_refused():
    with pytest.raises(ValueError, match="engine x: no lane runs role 'vae'"):
        context_buffers([("x", "vae", 1)], overlap=True)


# ------------------------------------------------------------------------------ fitting a budget

def planned_engines(reae_slice, latents=3):
    """A bundle as the plan sees it: encoder and decoder activations grow with the latent frames per
    ReAE call (100 MiB each), two DiT parts of 200 MiB of weights and 50 MiB of activations."""
    n = reae_slice or latents

    def memory(engine, activations, dit=False):
        m = {"engine_bytes": engine, "activation_bytes": None, "activation_estimate_bytes": activations,
             "io_bytes": MIB}
        return {**m, "streamable_bytes": engine, "streaming_scratch_bytes": 2 * MIB} if dit else m
    return [{"name": "encoder", "role": "encoder", "latent_frames": None, "memory": memory(10 * MIB, 100 * MIB * n)},
            {"name": "dit.0", "role": "dit", "latent_frames": 3, "memory": memory(200 * MIB, 50 * MIB, True)},
            {"name": "dit.1", "role": "dit", "latent_frames": 3, "memory": memory(200 * MIB, 50 * MIB, True)},
            {"name": "decoder", "role": "decoder", "latent_frames": None, "memory": memory(10 * MIB, 100 * MIB * n)}]


def fit(budget_mib, fp8_advice=False, slices=(None, 2, 1)):
    return fit_bundle(planned_engines, list(slices), 3, profile=get_profile("rtx4070"), budget_gb=budget_mib / 1024,
                      card_gb=12, where="x for rtx4070", can_stream=True, fp8_advice=fp8_advice)


def test_a_plan_that_fits_takes_no_measure():
    # whole chunks, overlap on: engines 420 + buffers 300, 50, 300 + I/O 4 = 1074 MiB
    f = fit(1074)
    assert (f.reae_slice, f.overlap, f.streaming, f.notes) == (None, True, {}, [])
    assert f.plan["total_bytes"] == 1074 * MIB and f.plan["budget_gb"] == 1074 / 1024


@pytest.mark.parametrize("budget, reae_slice", [(1073, 2), (874, 2), (873, 1), (674, 1)])
def test_the_largest_reae_slice_that_fits_is_chosen(budget, reae_slice):
    # slices of 2: 420 + 200 + 50 + 200 + 4 = 874 MiB; of 1: 674 MiB
    f = fit(budget)
    assert (f.reae_slice, f.overlap, f.streaming) == (reae_slice, True, {})
    assert f.notes == [f"x for rtx4070: 1.05 GiB as it stands, budget {budget / 1024:g} GiB; fits at "
                       f"{f.plan['total_bytes'] / 2**30:.2f} GiB with the ReAE in slices of {reae_slice} latent frame"
                       f"{'s' if reae_slice > 1 else ''} ({-(-3 // reae_slice)} encoder and {-(-3 // reae_slice)} "
                       f"decoder calls per 3-latent chunk)"]


def test_overlap_is_turned_off_only_when_no_slice_fits_with_it():
    # overlap on needs 674 MiB at least; off, one buffer of the largest need: slices of 2 give 624
    f = fit(673)
    assert (f.reae_slice, f.overlap, f.streaming) == (2, False, {})
    assert f.plan["contexts"] == [{"engines": ["encoder", "dit.0", "dit.1", "decoder"], "bytes": 200 * MIB}]
    assert "overlap off (one context buffer for every engine" in f.notes[0]


def test_weights_are_streamed_only_when_nothing_else_fits():
    assert not fit(524).streaming       # slices of 1, overlap off: 420 + 100 + 4 MiB
    f = fit(400, fp8_advice=True)
    # every DiT byte streamed needs 20 + 100 (one buffer: the slice's 100 MiB >= DiT 50 + 2 scratch) + 4 MiB;
    # the 276 MiB left are kept on the GPU, shared by the parts in proportion to their weights
    assert (f.reae_slice, f.overlap) == (1, False)
    assert f.streaming == {"dit.0": 138 * MIB, "dit.1": 138 * MIB}
    assert f.plan["streamed_bytes"] == {"dit.0": 62 * MIB, "dit.1": 62 * MIB}
    assert f.plan["streamed_bytes_per_chunk"] == 124 * MIB and f.plan["total_bytes"] <= 400 * MIB
    assert "0.12 GiB of DiT weights streamed from host memory at every DiT call" in f.notes[0]
    # an FP8 DiT (weights 1 byte instead of 2) would fit without streaming: 20 + 200 + 100 + 4 MiB
    assert f.notes[1].startswith("an FP8 DiT (--precision fp8 --calib CLIP) would fit without weight streaming: "
                                 "0.32 GiB with ReAE slices of 1, overlap off")


def test_a_plan_that_cannot_fit_is_refused_with_the_numbers_and_what_would_change_that():
    with pytest.raises(BundleTooLarge) as e:
        fit(100, fp8_advice=True)
    message = str(e.value)
    assert message.startswith("x for rtx4070: even with the ReAE in slices of 1 latent frame (3 encoder and 3 "
                              "decoder calls per 3-latent chunk); overlap off")
    assert ("the bundle needs 0.12 GiB on the GPU (engines 20.0 MiB + activations 100.0 MiB (estimated) + I/O 4.0 MiB) "
            "but rtx4070 (12 GB) has a budget of 100.0 MiB") in message
    # no FP8 advice: streamed, the DiT's weights are not what is left; the GPU: 0.12 GiB + the profile's 1 GiB reserve
    assert "FP8" not in message and message.endswith("a GPU with at least 2 GB")
    assert "a smaller --res or --clip-len (activations and I/O, 0.10 GiB of it" in message
    # when the engines that cannot stream exceed the budget alone, a smaller size would not help: not advised
    with pytest.raises(BundleTooLarge) as e:
        fit(19)
    assert "smaller --res" not in str(e.value)


# ------------------------------------------------------------------------------ the runtime's allocations

@pytest.fixture(scope="module")
def torch_model():
    from runtime import TorchSource, load_torch
    return load_torch(TorchSource(preset="tiny", seed=0), (17, 16), scale=2, clip_len=4, precision="fp32")


def standin_model(tmp_path, monkeypatch, torch_model, edit=None):
    """(the fake CUDA runtime, the loaded stand-in bundle, its manifest) under runtime/gpucheck's stand-ins."""
    from runtime import load_bundle
    from runtime.gpucheck import standin
    from runtime.gpucheck.hostcuda import HOST_DRIVER, HostCudart
    monkeypatch.setenv("SWIFTVR_CACHE_DIR", str(tmp_path / "cache"))
    rt = HostCudart()
    monkeypatch.setattr("runtime.backends.cuda.import_cuda", lambda: (rt, HOST_DRIVER))
    trt = standin.StandInTensorRT(torch_model)
    path = standin.write_standin_bundle(torch_model, trt, tmp_path / "tiny.plan", edit=edit)
    monkeypatch.setattr("runtime.backends.tensorrt.import_tensorrt", lambda flavour: trt)
    return rt, load_bundle(path), read_manifest(path)


@pytest.mark.parametrize("overlap", [True, False])
def test_a_session_allocates_exactly_the_plans_context_buffers(tmp_path, monkeypatch, torch_model, overlap):
    import numpy as np

    from runtime import Session
    rt, model, manifest = standin_model(tmp_path, monkeypatch, torch_model)
    planned = gpu_plan(manifest["engines"], overlap)["contexts"]
    assert len(planned) == (3 if overlap else 1)
    rt.malloced.clear()
    with Session(model, in_flight=3 if overlap else 1, overlap=overlap) as session:
        allocated = list(rt.malloced)
        # one cudaMalloc per planned buffer, of the planned size, in the plan's order
        assert [n for _, n in allocated] == [b["bytes"] for b in planned]
        contexts = session.runner.kernels.contexts
        for (ptr, nbytes), buffer in zip(allocated, planned):
            assert all(contexts[name].memory == (ptr, nbytes) for name in buffer["engines"])
        assert sorted(n for b in planned for n in b["engines"]) == sorted(contexts)
        frames = len(session.push(np.zeros((9, 16, 17, 3), np.uint8))) + len(session.flush())
    assert frames == 9
    assert all(ptr in rt.freed for ptr, _ in allocated) and len(rt.malloced) == len(allocated)


def test_a_bundle_planned_without_overlap_runs_one_chunk_at_a_time(tmp_path, monkeypatch, torch_model):
    from runtime import Session

    def one_buffer(manifest):
        manifest["memory_plan"] = {"overlap": False}
    rt, model, _ = standin_model(tmp_path, monkeypatch, torch_model, one_buffer)
    with Session(model) as session:
        assert (session.in_flight, session.overlap, len(rt.malloced)) == (1, False, 1)


def with_streaming_budget(manifest):
    for e in manifest["engines"]:
        if e["role"] == "dit":
            e["memory"]["weight_streaming_budget_bytes"] = 1234


def test_the_weight_streaming_budget_is_set_from_the_manifest(tmp_path, monkeypatch, torch_model):
    from runtime.gpucheck import standin
    monkeypatch.setattr(standin.Engine, "streamable_weights_size", 5000)
    _, model, _ = standin_model(tmp_path, monkeypatch, torch_model, with_streaming_budget)
    budgets = {name: e.weight_streaming_budget_v2 for name, e in model.engines.items()}
    assert budgets == {name: 1234 if name.startswith("dit") else 5000 for name in model.engines}


def test_a_budget_on_an_engine_without_streamable_weights_is_refused(tmp_path, monkeypatch, torch_model):
    from runtime.errors import RuntimeSetupError
    with pytest.raises(RuntimeSetupError, match=r"engine dit\.\S+ has a weight-streaming budget but no streamable "
                                                r"weights \(built without BuilderFlag.WEIGHT_STREAMING\)"):
        standin_model(tmp_path, monkeypatch, torch_model, with_streaming_budget)
