"""One DiT graph set for every latent-frame count (export/dit.py's dynamic frame dim), and the
bundle memory plan (engines/memory.py).

The dynamic graph cuts tables baked for F_max by its input's shape with integer arithmetic only, so
in float32 on ONNX Runtime it must give exactly the static graph's numbers for every F: no
tolerance. Real clips through a dynamic cpu bundle are checked against the torch Restorer in
tests/test_runtime.py (its bundle is exported with the default, dynamic, DiT shapes).
"""
import numpy as np
import onnx
import pytest
import torch

from contract import graphs as c
from export.dit import part_ranges, stream_parts
from export.exporter import dit_onnx
from export.onnx_graph import save
from export.settings import ExportError, make_settings
from export.weights import random_source

CLIP_LEN = 8


def small_window_source():
    """tiny with 2x2-token windows: several MFSWA windows, plain and shifted, at a test-sized grid."""
    import dataclasses
    from export.weights import WeightSource
    tiny = random_source("tiny", 0)
    return WeightSource(dataclasses.replace(tiny.cfg, self_attn_window_hw=(2, 2)), tiny.preset, None, tiny.seed)


def export_chain(source, folder, latent_shape, frames_range=None) -> list:
    """The DiT in 2 parts (blocks [0, 2), [2, 3)) as ONNX files; returns their paths in chain order."""
    cond, parts = stream_parts(source, part_ranges(source.cfg.num_layers, 2), torch.float32)
    paths = []
    for part in parts:
        model, dynamic = dit_onnx(source.cfg, part, cond, latent_shape, torch.float32, frames_range)
        paths.append(folder / f"dit.{part.index}.onnx")
        save(model, paths[-1])
    return paths, dynamic


def run_chain(paths, latents) -> tuple[np.ndarray, np.ndarray]:
    import onnxruntime as ort
    values = {"latents": latents}
    for path in paths:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        values.update(zip(names, session.run(names, {i.name: values[i.name] for i in session.get_inputs()})))
    return values["restored"], values["hidden.2"]


def test_dynamic_graph_equals_the_static_graphs_for_every_count(tmp_path):
    source = small_window_source()
    w, h = make_settings("160x70", precision="fp32", clip_len=CLIP_LEN).geometry.latent_size
    assert (w, h) == (10, 6)          # tokens F x 3 x 5: 2x2 windows at rows [0, 1], cols [0, 2, 3]
    (tmp_path / "dyn").mkdir()
    dynamic, ranges = export_chain(source, tmp_path / "dyn", (1, 48, 3, h, w), (2, 3))
    assert ranges == {"F": {"min": 2, "opt": 2, "max": 3}, "K": {"min": 30, "opt": 30, "max": 45}}
    first = onnx.load(str(dynamic[0]), load_external_data=False)
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]   # noqa: E731
    assert dims(first.graph.input[0]) == [1, 48, "F", h, w] and dims(first.graph.output[0]) == [1, "K", 128]
    for frames in (2, 3):
        (tmp_path / f"f{frames}").mkdir()
        static, _ = export_chain(source, tmp_path / f"f{frames}", (1, 48, frames, h, w))
        z = np.random.default_rng(frames).standard_normal((1, 48, frames, h, w)).astype(np.float32)
        got, got_hidden = run_chain(dynamic, z)
        want, want_hidden = run_chain(static, z)
        assert got.shape == (1, 48, frames, h, w)
        np.testing.assert_array_equal(got_hidden, want_hidden)
        np.testing.assert_array_equal(got, want)


def test_dit_chains_follow_the_chunk_protocol():
    s = make_settings("96x64", scale=1, precision="fp32", clip_len=CLIP_LEN)
    assert s.dit_latent_frames == [2, 3] and s.dit_chains == [(2, 3)]              # overlap 0: one dynamic set
    static = make_settings("96x64", scale=1, precision="fp32", clip_len=CLIP_LEN, dit_shapes="static")
    assert static.dit_chains == [(2, 2), (3, 3)]
    # overlap 1 calls the DiT with one count only (n + 1): its one chain is a static graph either way
    assert make_settings("96x64", scale=1, precision="fp32", clip_len=CLIP_LEN, dit_overlap=1).dit_chains == [(3, 3)]
    with pytest.raises(ExportError, match="--dit-shapes must be one of dynamic, static"):
        make_settings("96x64", scale=1, dit_shapes="both")


# ---- the contract: a chain keyed by a range -------------------------------------------------------

def _graph(name, inputs, outputs, dynamic, blocks, frames):
    return c.Graph(name, "dit", f"{name}.onnx", inputs, outputs, dynamic, blocks, frames)


def range_contract(latents_range=(2, 3), key=(2, 3)) -> c.Contract:
    f32 = "float32"
    dynamic = {"F": {"min": latents_range[0], "opt": latents_range[0], "max": latents_range[1]},
               "K": {"min": 6 * latents_range[0], "opt": 6 * latents_range[0], "max": 6 * latents_range[1]}}
    latents, hidden = c.Tensor("latents", (1, 48, "F", 4, 6), f32), c.Tensor("hidden.2", (1, "K", 128), f32)
    parts = [_graph("dit.f2-3.0", (latents,), (hidden,), dynamic, (0, 2), key),
             _graph("dit.f2-3.1", (hidden, latents), (c.Tensor("restored", latents.shape, f32),), dynamic, (2, 3), key)]
    encoder = c.Graph("encoder", "encoder", "encoder.onnx", (c.Tensor("frames", ("T", 64, 96, 3), "uint8"),),
                      (c.Tensor("latents", (1, 48, "T/4", 4, 6), f32),), {"T": {"min": 4, "opt": 8, "max": 12}})
    decoder = c.Graph("decoder", "decoder", "decoder.onnx", (c.Tensor("latents", (1, 48, "n", 4, 6), f32),),
                      (c.Tensor("frames", ("4n", 64, 96, 3), "uint8"),), {"n": {"min": 1, "opt": 2, "max": 3}})
    return c.make_contract(encoder, {key: parts}, decoder, [2, 3], "range test")


def test_one_chain_serves_every_count_in_its_range():
    contract = range_contract()
    assert contract.chain(2) is contract.chain(3)
    assert [g.name for g in contract.graphs()] == ["encoder", "dit.f2-3.0", "dit.f2-3.1", "decoder"]
    assert contract.chains() == [((2, 3), contract.chain(2))]
    assert "dit F=2-3" in "\n".join(contract.describe())
    graphs, _ = contract.to_json()
    assert list(graphs["dit"]) == ["2-3"]
    entries = [c.engine_entry(g, f"{g.name}.engine") for g in contract.graphs()]
    assert [e["latent_frames"] for e in entries] == [None, [2, 3], [2, 3], None]
    assert entries[1]["inputs"][0]["min"] == [1, 48, 2, 4, 6] and entries[1]["inputs"][0]["max"] == [1, 48, 3, 4, 6]
    manifest = {"chunk": {"dit_latent_frames": [2, 3]}, "state": {"encoder": [], "decoder": []}, "engines": entries}
    back = c.contract_from_manifest(manifest, "manifest")
    assert back.chain(2) is back.chain(3) and [p.name for p in back.chain(3)] == ["dit.f2-3.0", "dit.f2-3.1"]
    with pytest.raises(c.ContractError, match=r"no DiT graph takes 4 latent frames \(the graphs take \[2, 3\]\)"):
        back.chain(4)


def test_a_range_its_latents_do_not_cover_is_refused():
    with pytest.raises(c.ContractError, match=r"DiT chain for 2-4 latent frames, part 0 .*\(F in 2\.\.3\), "
                                              r"not \[1, C, F in 2\.\.4, h, w\]"):
        range_contract(latents_range=(2, 3), key=(2, 4))
    assert c.frames_range("6-7") == (6, 7) and c.frames_range(7) == (7, 7) and c.frames_key(6, 7) == "6-7"


# ---- memory plan -----------------------------------------------------------------------------------

def test_activation_estimate_is_the_liveness_peak():
    """a -> x = Relu(a) [F x 1000 float32] -> y = Relu(x) -> out = Add(x, y): x and y live together."""
    from onnx import TensorProto, helper
    from engines.memory import activation_estimate
    shape = ["F", 1000]
    graph = helper.make_graph(
        [helper.make_node("Relu", ["a"], ["x"]), helper.make_node("Relu", ["x"], ["y"]),
         helper.make_node("Add", ["x", "y"], ["out"])], "g",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, shape)],
        value_info=[helper.make_tensor_value_info("x", TensorProto.FLOAT, shape),
                    helper.make_tensor_value_info("y", TensorProto.FLOAT, ["2*s9 - F", 1000])])
    model = helper.make_model(graph)
    model.metadata_props.add(key="swiftvr.dim_symbol", value='{"s9": "F"}')
    got = activation_estimate(model, "dit", {"F": {"min": 1, "opt": 2, "max": 3}})
    assert got == {"peak_bytes": 2 * 3 * 1000 * 4, "io_bytes": 2 * 3 * 1000 * 4, "unsized": 0}


def test_a_bundle_that_does_not_fit_is_refused_with_the_numbers():
    from engines.make_bundle import BundleTooLarge, check_fits
    from engines.memory import describe_plan
    from engines.profiles import get_profile
    gib = 2**30
    entries = [{"engine_bytes": 10 * gib, "activation_bytes": None, "activation_estimate_bytes": 1 * gib,
                "io_bytes": gib // 2}]
    total = check_fits(entries, get_profile("rtx4090"), "x.plan")          # 11.5 GiB in a 22 GiB budget
    assert total["total_bytes"] == int(11.5 * gib) and total["activation_estimated"]
    assert describe_plan(total, get_profile("rtx4090"))[1].endswith("rtx4090 (24 GB): budget 22 GiB: fits (11.50 GiB of 22 GiB)")
    # No advice: one engine with no DiT shapes to share, so nothing named would change the outcome.
    with pytest.raises(BundleTooLarge, match=r"^x.plan: the bundle needs 11.50 GiB on the GPU \(engines 10.00 GiB \+ "
                                             r"activations 1.00 GiB \(estimated\) \+ I/O 0.50 GiB\) but rtx2080ti "
                                             r"\(11 GB\) has a budget of 10 GiB$"):
        check_fits(entries, get_profile("rtx2080ti"), "x.plan")
    assert "WARNING: does not fit" in describe_plan(total, get_profile("rtx2080ti"))[1]


def test_tensorrt_rtx_builds_the_dynamic_dit_with_fused_attention(tmp_path):
    """bf16 (TensorRT-RTX has no fp32 fused attention), built ahead of time for the RTX 5090 with one
    optimization profile over F = 2..3; engines/build.py's check: every ONNX Attention became a
    TensorRT attention and no SoftMax is left outside one."""
    pytest.importorskip("tensorrt_rtx")
    from engines.build import EngineJob, build_engine
    from export.onnx_graph import describe_io
    source = small_window_source()
    w, h = make_settings("160x70", precision="bf16", clip_len=CLIP_LEN).geometry.latent_size
    cond, parts = stream_parts(source, [(0, 3)], torch.bfloat16)
    model, dynamic = dit_onnx(source.cfg, next(parts), cond, (1, 48, 3, h, w), torch.bfloat16, (2, 3))
    inputs, outputs = describe_io(model)
    save(model, tmp_path / "dit.onnx")
    job = EngineJob("dit.f2-3", str(tmp_path / "dit.onnx"), str(tmp_path / "dit.engine"), "tensorrt-rtx", ("12.0",),
                    inputs, outputs, dynamic, 6, True, 3, 1 << 30)
    record = build_engine(job)
    assert record["attention"] == {"onnx_attention_nodes": 6, "attention_input_layers": 6,
                                   "attention_output_layers": 6, "softmax_layers": 0}
    assert record["network"]["inputs"] == [{"name": "latents", "shape": [1, 48, -1, h, w], "dtype": "bfloat16"}]
    assert (tmp_path / "dit.engine").stat().st_size == record["size"] > 0
