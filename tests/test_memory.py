"""Memory (issue 23): the ReAE in slices, and the ONNX Runtime settings that keep the host near the plan."""
import numpy as np
import pytest

from test_runtime import SIZE, UINT8_TOL, UINT8_TOL_FRACTION, cpu_bundle, moving_frames  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def sliced_bundle(cpu_bundle, tmp_path_factory):
    """The cpu test bundle's export, bundled with the ReAE in slices of one latent frame."""
    from contract.bundle import read_manifest
    from engines.make_bundle import make_bundle
    export_dir = cpu_bundle.parent.parent / "export"
    out = tmp_path_factory.mktemp("sliced") / "tiny-s1.plan"
    make_bundle(export_dir, "cpu", out=out, reae_slice=1)
    return out, read_manifest(out)


def test_the_slice_is_the_engines_range_and_the_chain_follows_it(sliced_bundle, cpu_bundle):
    from contract.graphs import contract_from_manifest
    from contract.bundle import read_manifest
    out, manifest = sliced_bundle
    sliced, whole = contract_from_manifest(manifest, "s"), contract_from_manifest(read_manifest(cpu_bundle), "w")
    assert (sliced.encoder_frames_per_call, sliced.decoder_latents_per_call) == (4, 1)
    assert (whole.encoder_frames_per_call, whole.decoder_latents_per_call) == (12, 3)    # clip_len 8: 8 + 4 frames
    encoder = next(e for e in manifest["engines"] if e["role"] == "encoder")
    assert encoder["dynamic"]["T"] == {"min": 4, "opt": 4, "max": 4} and encoder["inputs"][0]["max"][0] == 4
    # The activations planned are a slice's: less than a whole chunk's.
    whole_plan = read_manifest(cpu_bundle)["memory_plan"]["activation_bytes"]
    assert manifest["memory_plan"]["activation_bytes"] < whole_plan


class CountingRunner:
    """A GraphRunner that counts the calls of each graph (and checks no call exceeds the range)."""

    def __init__(self, runner, contract):
        self.runner, self.contract, self.calls = runner, contract, []

    def run(self, graph, inputs):
        self.calls.append((graph.role, [v.shape for k, v in inputs.items() if k in ("frames", "latents")][0]))
        return self.runner.run(graph, inputs)

    def __getattr__(self, name):
        return getattr(self.runner, name)


def test_sliced_reae_equals_whole_chunks(sliced_bundle, cpu_bundle):
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
    for name, path in (("whole", cpu_bundle), ("sliced", sliced_bundle[0])):
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


def test_a_sliced_bundle_streams_a_clip_like_the_whole_one(sliced_bundle, cpu_bundle):
    from runtime import Session, load_bundle
    frames = moving_frames(29, *SIZE, seed=3)          # FIRST, MIDDLE, LAST chunks
    outputs = []
    for path in (cpu_bundle, sliced_bundle[0]):
        with Session(load_bundle(path)) as session:
            outputs.append(np.concatenate([session.push(frames), session.flush()]))
    diff = np.abs(outputs[0].astype(int) - outputs[1].astype(int))
    assert outputs[0].shape == outputs[1].shape == (29, 2 * SIZE[1], 2 * SIZE[0], 3)
    assert diff.max() <= UINT8_TOL and (diff > 0).mean() <= UINT8_TOL_FRACTION
