"""Memory (issue 23): the ReAE in slices, and the ONNX Runtime settings that keep the host near the plan."""
import numpy as np
import pytest

from test_runtime import SIZE, UINT8_TOL, UINT8_TOL_FRACTION, cpu_bundle, moving_frames  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def whole_bundle(cpu_bundle, tmp_path_factory):
    """The cpu test bundle's export, bundled with the ReAE on whole chunks (--reae-slice 0); the
    test bundle itself has the cpu default, slices of one latent frame."""
    from contract.bundle import read_manifest
    from engines.make_bundle import make_bundle
    export_dir = cpu_bundle.parent.parent / "export"
    out = tmp_path_factory.mktemp("whole") / "tiny-whole.plan"
    make_bundle(export_dir, "cpu", out=out, reae_slice=0)
    return out, read_manifest(out)


def test_the_slice_is_the_engines_range_and_the_chain_follows_it(whole_bundle, cpu_bundle):
    from contract.graphs import contract_from_manifest
    from contract.bundle import read_manifest
    from engines.make_bundle import CPU_REAE_SLICE
    manifest = read_manifest(cpu_bundle)      # the cpu default
    sliced, whole = contract_from_manifest(manifest, "s"), contract_from_manifest(whole_bundle[1], "w")
    assert CPU_REAE_SLICE == 1 and (sliced.encoder_frames_per_call, sliced.decoder_latents_per_call) == (4, 1)
    assert (whole.encoder_frames_per_call, whole.decoder_latents_per_call) == (12, 3)    # clip_len 8: 8 + 4 frames
    encoder = next(e for e in manifest["engines"] if e["role"] == "encoder")
    assert encoder["dynamic"]["T"] == {"min": 4, "opt": 4, "max": 4} and encoder["inputs"][0]["max"][0] == 4
    # The activations planned are a slice's: less than a whole chunk's.
    assert manifest["memory_plan"]["activation_bytes"] < whole_bundle[1]["memory_plan"]["activation_bytes"]


class CountingRunner:
    """A GraphRunner that counts the calls of each graph (and checks no call exceeds the range)."""

    def __init__(self, runner, contract):
        self.runner, self.contract, self.calls = runner, contract, []

    def run(self, graph, inputs):
        self.calls.append((graph.role, [v.shape for k, v in inputs.items() if k in ("frames", "latents")][0]))
        return self.runner.run(graph, inputs)

    def __getattr__(self, name):
        return getattr(self.runner, name)


def test_sliced_reae_equals_whole_chunks(whole_bundle, cpu_bundle):
    """A FIRST chunk (12 frames, 3 latents) encoded and decoded in three slices, with the state carried,
    against one call each. The same convolutions on fewer frames: only the kernels' blocking differs
    with the size (float32 summation order), so latents and states agree to ONNX Runtime's fp32 rung
    (export.verify: 1e-4; measured ~1e-6) and uint8 frames to +-1 on a few values."""
    from contract.bundle import open_bundle
    from contract.chain import GraphChain
    from contract.graphs import contract_from_manifest
    import onnxruntime as ort
    from contract.onnxruntime import SessionRunner, bundle_session, session_options
    results = {}
    for name, path in (("whole", whole_bundle[0]), ("sliced", cpu_bundle)):
        with open_bundle(path) as bundle:
            contract = contract_from_manifest(bundle.manifest, name)
            sessions = {e["name"]: bundle_session(bundle, e["member"], e["files"], session_options(ort),
                                                  ["CPUExecutionProvider"]) for e in bundle.manifest["engines"]}
            runner = CountingRunner(SessionRunner(sessions), contract)
            chain = GraphChain(contract, runner)
            frames = moving_frames(12, *SIZE)
            latents, encoder_state = chain.encode(frames, chain.zero_state("encoder"))
            restored = chain.dit(latents)
            out, decoder_state = chain.decode(restored, chain.zero_state("decoder"))
            results[name] = (latents, encoder_state, out, decoder_state, runner.calls)
    whole, sliced = results["whole"], results["sliced"]
    roles = [role for role, _ in sliced[4]]
    assert roles == ["encoder"] * 3 + ["dit"] + ["decoder"] * 3, sliced[4]
    assert [role for role, _ in whole[4]] == ["encoder", "dit", "decoder"]
    assert np.abs(sliced[0] - whole[0]).max() < 1e-4
    for a, b in ((sliced[1], whole[1]), (sliced[3], whole[3])):
        assert a.keys() == b.keys() and max(np.abs(a[k] - b[k]).max() for k in a) < 1e-4
    diff = np.abs(sliced[2].astype(int) - whole[2].astype(int))
    assert sliced[2].shape == whole[2].shape == (12, 2 * SIZE[1], 2 * SIZE[0], 3)
    assert diff.max() <= UINT8_TOL and (diff > 0).mean() <= UINT8_TOL_FRACTION


def test_torch_reae_in_slices_equals_whole_calls():
    """The torch side of the same: encode_in_slices / decode_in_slices (export.verify's reference and
    Restorer's reae_slice) hand the state from slice to slice. 12 frames in 3 calls vs 1, then 3
    latents in 3 calls vs 1: float32 agreement at the fp32 rung (kernel blocking differs with the
    size; measured ~1e-6), and the states equal in the same way."""
    import torch
    from export.weights import random_source
    from swiftvr.pipeline import decode_in_slices, encode_in_slices
    reae = random_source("tiny", 0).reae().eval()
    x = torch.rand(1, 12, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole, whole_state = reae.encode(x, None)
        sliced, sliced_state = encode_in_slices(reae, x, None, 1)
        assert sliced.shape == whole.shape == (1, 3, 48, 2, 3)
        assert (sliced - whole).abs().max() < 1e-4
        assert max((sliced_state[k] - whole_state[k]).abs().max() for k in whole_state) < 1e-4
        frames, frames_state = reae.decode(whole, None)
        frames_sliced, sliced_state = decode_in_slices(reae, whole, None, 1)
        assert frames_sliced.shape == frames.shape == (1, 12, 3, 32, 48)
        assert (frames_sliced - frames).abs().max() < 1e-4
        assert max((sliced_state[k] - frames_state[k]).abs().max() for k in frames_state) < 1e-4
    # Slices change nothing when a call is no longer than a slice, and 0 means whole calls.
    assert encode_in_slices(reae, x[:, :4], None, 1)[0].shape == (1, 1, 48, 2, 3)
    with torch.no_grad():
        assert torch.equal(encode_in_slices(reae, x, None, 0)[0], whole)


def test_a_sliced_bundle_streams_a_clip_like_the_whole_one(whole_bundle, cpu_bundle):
    from runtime import Session, load_bundle
    frames = moving_frames(29, *SIZE, seed=3)          # FIRST, MIDDLE, LAST chunks
    outputs = []
    for path in (whole_bundle[0], cpu_bundle):
        with Session(load_bundle(path)) as session:
            outputs.append(np.concatenate([session.push(frames), session.flush()]))
    diff = np.abs(outputs[0].astype(int) - outputs[1].astype(int))
    assert outputs[0].shape == outputs[1].shape == (29, 2 * SIZE[1], 2 * SIZE[0], 3)
    assert diff.max() <= UINT8_TOL and (diff > 0).mean() <= UINT8_TOL_FRACTION


def test_every_session_allocates_from_one_shared_cpu_arena():
    """An arena per InferenceSession kept three graphs' peaks resident side by side (15.1 GiB at
    704x576 against 2.2 with one arena and slices: docs/benchmarks.md "Host memory"): every session
    the project makes takes its CPU memory from the one arena registered in the environment."""
    import onnxruntime as ort
    from contract.onnxruntime import session_options
    first, second = session_options(ort), session_options(ort, threads=1)
    assert first.get_session_config_entry("session.use_env_allocators") == "1"
    assert second.get_session_config_entry("session.use_env_allocators") == "1"


def test_a_cpu_bundle_carries_its_measured_host_memory_and_inspect_shows_it(cpu_bundle):
    """make_bundle measures a cpu bundle in a child process (loads, then runs the largest chunk) and
    the manifest keeps it: the loaded graphs are at least their weights, the total adds the frames a
    stream holds in flight."""
    import subprocess
    from contract.bundle import read_manifest
    from test_runtime import PY, REPO
    manifest = read_manifest(cpu_bundle)
    host = manifest["host_memory"]
    measured = host["measured"]
    weights = sum(e["memory"]["engine_bytes"] for e in manifest["engines"])
    assert measured["chunk_frames"] == manifest["chunk"]["clip_len"] + 4
    assert measured["peak_bytes"] >= measured["loaded_bytes"] >= weights
    assert host["total_bytes"] == measured["peak_bytes"] + host["frames_bytes"] > measured["peak_bytes"]
    shown = subprocess.run([PY, "-m", "engines.inspect", str(cpu_bundle)], capture_output=True, text=True,
                           cwd=REPO, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert f"memory    host: {host['total_bytes'] / 2**30:.2f} GiB per stream" in shown.stdout
    assert "ONNX estimate" in shown.stdout


def test_host_memory_is_not_measured_where_measuring_could_exhaust_the_machine(monkeypatch, tmp_path):
    from engines import host_memory
    monkeypatch.setattr(host_memory, "available_bytes", lambda: 4 * 2**30)
    plan = host_memory.plan_or_reason(tmp_path, None, {"total_bytes": 2 * 2**30}, 8)
    assert "not_measured" in plan and "--reae-slice 1" in plan["not_measured"]
    # Advice only where it would change the outcome: a bundle already in slices of one gets none.
    assert "--reae-slice" not in host_memory.plan_or_reason(tmp_path, 1, {"total_bytes": 2 * 2**30}, 8)["not_measured"]
    assert host_memory.describe(plan)[0].startswith("memory    host: not measured at build (the ONNX estimate (2.0 GiB)")
