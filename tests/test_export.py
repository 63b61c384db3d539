"""export/: torch -> ONNX graphs, checked in ONNX Runtime against torch float32.

The tiny preset with seeded random weights, clip_len 8, at two small sizes:
  * fp32, output 70x50 (divisible by neither 16 nor 32), scale 4 (input 18x12), DiT overlap 0
    (latent counts {2, 3}, one dynamic DiT graph set) in 2 parts: the contract, every graph vs
    torch, a 4-chunk stream;
  * an fp16 encoder for output 96x64 at scale 1 (no resize);
  * fp16 and bf16 DiT graphs on their own, with 2x2-token windows so that MFSWA has several windows
    at a test-sized grid (ONNX Runtime has no bf16 kernels: widened run; TensorRT-RTX parse when
    installed).
The full export is made once per session, shared by pytest-xdist workers through a lock.
"""
import contextlib
import fcntl
import json
import os
from pathlib import Path
import pickle

import numpy as np
import onnx
import pytest
import torch

from export.__main__ import main
from export.dit import DiTPart, part_ranges, stream_parts
from export.onnx_graph import save
from export.settings import ExportError, make_settings
from contract.onnxruntime import widen_bf16
from export.verify import TOLERANCES, TorchReference, check_numbers, check_structure, export_chain
from export.weights import checkpoint_source, random_source
from swiftvr.reae import encoder_state_shapes

CLIP_LEN = 8


# ---- shared exports -----------------------------------------------------------------------------

@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _shared_root(tmp_path_factory) -> Path:
    """Under xdist the workers' temp folders share a parent (one per run); else our own temp folder."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def shared_export(tmp_path_factory, name: str, args: list[str]) -> Path:
    """One export per test session, whichever worker asks first."""
    root = _shared_root(tmp_path_factory)
    out = root / name
    with _locked(root / f"{name}.lock"):
        if not (out / "export.json").is_file():
            assert main(["--preset", "tiny", "--random-weights", "0", "--clip-len", str(CLIP_LEN), *args,
                         "--out", str(out), "--quiet"]) == 0
    return out


def shared_numbers(tmp_path_factory, folder: Path) -> list:
    """verify's numeric checks of an export, computed once per session."""
    root = _shared_root(tmp_path_factory)
    cache = root / f"{folder.name}.numbers.pickle"
    with _locked(root / f"{folder.name}.numbers.lock"):
        if not cache.is_file():
            cache.write_bytes(pickle.dumps(check_numbers(folder, manifest(folder))))
    return pickle.loads(cache.read_bytes())


@pytest.fixture(scope="module")
def fp32_export(tmp_path_factory) -> Path:
    return shared_export(tmp_path_factory, "export_fp32",
                         ["--res", "70x50", "--scale", "4", "--precision", "fp32", "--dit-parts", "2"])


def manifest(folder: Path) -> dict:
    return json.loads((folder / "export.json").read_text())


@pytest.fixture(scope="module")
def fp32_numbers(tmp_path_factory, fp32_export):
    return shared_numbers(tmp_path_factory, fp32_export)


def assert_within(results, prefix: str, minimum: int = 1):
    chosen = [r for r in results if r.name.startswith(prefix)]
    assert len(chosen) >= minimum, [r.name for r in results]
    for r in chosen:
        print(f"{r.name}: max {r.max_err:.3g} mean {r.mean_err:.3g} (tolerance {r.tolerance:g}) {r.note}")
        assert r.ok, f"{r.name}: max abs err {r.max_err} > {r.tolerance}"


# ---- graphs on their own (first in the file: under xdist they run while the other worker makes
#      the shared export) ----------------------------------------------------------------------

def test_fp16_encoder_at_scale_1(tmp_path):
    """Output 96x64 from a 96x64 input (no resize in the graph), fp16, against torch float32."""
    import onnxruntime as ort
    from export.exporter import encoder_onnx
    settings = make_settings("96x64", scale=1, precision="fp16", clip_len=CLIP_LEN)
    assert settings.geometry.input_size == settings.geometry.output_size == (96, 64)
    reae = random_source("tiny", 0).reae()
    model, dynamic = encoder_onnx(reae.half(), settings)
    assert dynamic == {"T": {"min": 4, "opt": 8, "max": 12}}
    assert "Resize" not in {n.op_type for n in model.graph}
    save(model, tmp_path / "encoder.onnx")
    session = ort.InferenceSession(str(tmp_path / "encoder.onnx"), providers=["CPUExecutionProvider"])
    ref = TorchReference({"model": random_source("tiny", 0).describe(),
                          "input_size": [96, 64], "output_size": [96, 64]})
    rng = np.random.default_rng(4)
    zero = {f"state_in.{name}": np.zeros(shape, np.float32)
            for name, shape in encoder_state_shapes(1, 64, 96).items()}
    _, state = ref.encode(rng.integers(0, 256, (4, 64, 96, 3), dtype=np.uint8), zero)
    frames = rng.integers(0, 256, (8, 64, 96, 3), dtype=np.uint8)
    names = [o.name for o in session.get_outputs()]
    feeds = {"frames": frames, **{k: v.astype(np.float16) for k, v in state.items()}}
    got = dict(zip(names, session.run(names, feeds)))
    want, want_state = ref.encode(frames, state)
    errors = {"latents": np.abs(got["latents"] - want).max()}
    errors.update({k: np.abs(got["state_out." + k[len("state_in."):]] - v).max() for k, v in want_state.items()})
    print({k: f"{v:.3g}" for k, v in errors.items()})
    assert errors.pop("latents") <= TOLERANCES["fp16"]["latents"]
    assert max(errors.values()) <= TOLERANCES["fp16"]["state"]


def small_window_source() -> tuple:
    """tiny with 2x2-token windows (same weights): several MFSWA windows at a test-sized grid."""
    import dataclasses
    from export.weights import WeightSource
    tiny = random_source("tiny", 0)
    cfg = dataclasses.replace(tiny.cfg, self_attn_window_hw=(2, 2))
    source = WeightSource(cfg, tiny.preset, None, tiny.seed)
    model = source.torch_model().transformer
    model.cfg = cfg
    return source, model


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_low_precision_dit_graph(precision, tmp_path):
    """Weights and I/O in the precision, constants folded into it; ONNX Runtime runs fp16 as it is and
    bf16 widened; TensorRT-RTX (when installed) parses it into its attention layers."""
    from export.exporter import dit_onnx
    source, reference = small_window_source()
    settings = make_settings("160x70", precision=precision, clip_len=CLIP_LEN)
    w, h = settings.geometry.latent_size
    shape = (1, 48, 3, h, w)                     # tokens 3 x 3 x 5: 2x2 windows at rows [0, 1], cols [0, 2, 3]
    cond, parts = stream_parts(source, [(0, 3)], settings.dtype)
    model, _ = dit_onnx(source.cfg, next(parts), cond, shape, settings.dtype)
    path = tmp_path / "dit.f3.onnx"
    save(model, path)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    dtype = {"fp16": onnx.TensorProto.FLOAT16, "bf16": onnx.TensorProto.BFLOAT16}[precision]
    assert [v.type.tensor_type.elem_type for v in [*proto.graph.input, *proto.graph.output]] == [dtype, dtype]
    assert sum(n.op_type == "Attention" for n in proto.graph.node) == 6
    indices = {int(np.prod(t.dims)) for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT64}
    assert 6 * 12 in indices, "expected the gather index of 6 windows x 12 tokens (baked in, flattened)"
    big = [t for t in proto.graph.initializer if np.prod(t.dims) >= 1024 and t.data_type != onnx.TensorProto.INT64]
    assert big and all(t.data_type == dtype for t in big)

    import onnxruntime as ort
    runnable = widen_bf16(proto) if precision == "bf16" else proto
    session = ort.InferenceSession(runnable.SerializeToString(), providers=["CPUExecutionProvider"])
    z = torch.randn(shape, generator=torch.Generator().manual_seed(2)).to(settings.dtype)
    got = session.run(None, {"latents": z.float().numpy() if precision == "bf16" else z.numpy()})[0]
    with torch.no_grad():
        want = reference.restore(z.float(), reference.conditioning(source.prompt()),
                                 reference.grid_plan(reference.token_grid(shape), 0)).numpy()
    err = np.abs(got.astype(np.float32) - want).max()
    print(f"{precision} DiT vs torch float32: max abs err {err:.3g}")
    assert err <= TOLERANCES[precision]["latents"], err

    trt = pytest.importorskip("tensorrt_rtx")
    logger = trt.Logger(trt.Logger.ERROR)
    network = trt.Builder(logger).create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    assert parser.parse_from_file(str(path)), [parser.get_error(i).desc() for i in range(parser.num_errors)]
    kinds = [network.get_layer(i).type for i in range(network.num_layers)]
    assert kinds.count(trt.LayerType.ATTENTION_INPUT) == 6


# ---- the contract -------------------------------------------------------------------------------

def test_manifest_records_sizes_protocol_and_io(fp32_export):
    m = manifest(fp32_export)
    assert (m["format"], m["version"], m["precision"], m["dtype"]) == ("swiftvr-export", 1, "fp32", "float32")
    sizes = (m["input_size"], m["output_size"], m["padded_size"], m["latent_size"])
    assert sizes == ([18, 12], [70, 50], [96, 64], [6, 4])
    assert m["scale"] == 4.0
    assert m["model"]["preset"] == "tiny" and m["model"]["random_weights_seed"] == 0
    assert len(m["model"]["checkpoint_sha256"]) == 64 and m["model"]["checkpoint_sha256_of"] == "random-weights recipe"
    chunk = m["chunk"]
    assert chunk["dit_latent_frames"] == [2, 3]                       # overlap 0: {n, n+1}
    assert chunk["encoder_frames"] == [4, 8, 12] and chunk["decoder_latent_frames"] == [1, 2, 3]

    g = m["graphs"]
    enc, dec = g["encoder"], g["decoder"]
    assert enc["inputs"][0] == {"name": "frames", "shape": ["T", 12, 18, 3], "dtype": "uint8"}
    assert enc["outputs"][0] == {"name": "latents", "shape": [1, 48, "T/4", 4, 6], "dtype": "float32"}
    assert enc["dynamic"] == {"T": {"min": 4, "opt": 8, "max": 12}}
    assert dec["inputs"][0] == {"name": "latents", "shape": [1, 48, "n", 4, 6], "dtype": "float32"}
    assert dec["outputs"][0] == {"name": "frames", "shape": ["4n", 50, 70, 3], "dtype": "uint8"}
    assert dec["dynamic"] == {"n": {"min": 1, "opt": 2, "max": 3}}

    # One DiT graph set for both counts: the frame dim "F" is dynamic, the boundary's tokens "K" = F * 2 * 3.
    assert sorted(g["dit"]) == ["2-3"]
    parts = g["dit"]["2-3"]
    assert [p["file"] for p in parts] == ["dit.f2-3.0.onnx", "dit.f2-3.1.onnx"]
    assert [p["blocks"] for p in parts] == [[0, 2], [2, 3]]
    latents = {"name": "latents", "shape": [1, 48, "F", 4, 6], "dtype": "float32"}
    hidden = {"name": "hidden.2", "shape": [1, "K", 128], "dtype": "float32"}
    assert (parts[0]["inputs"], parts[0]["outputs"]) == ([latents], [hidden])
    assert (parts[1]["inputs"], parts[1]["outputs"]) == ([hidden, latents], [{**latents, "name": "restored"}])
    frames = {"min": 2, "opt": 2, "max": 3}                         # opt: the MIDDLE chunks' count
    assert all(p["dynamic"] == {"F": frames, "K": {k: 6 * v for k, v in frames.items()}} for p in parts)

    for which, names in (("encoder", [4, 5, 6, 9, 10, 11, 14, 15, 16]), ("decoder", [3, 4, 5, 9, 10, 11, 15, 16, 17])):
        pairs = m["state"][which]
        assert [p["input"] for p in pairs] == [f"state_in.mem_{i}" for i in names]
        assert [p["output"] for p in pairs] == [f"state_out.mem_{i}" for i in names]
        graph_inputs = {t["name"]: t for t in g[which]["inputs"]}
        assert all(graph_inputs[p["input"]]["shape"] == p["shape"] and p["dtype"] == "float32" for p in pairs)
    assert m["state"]["encoder"][0]["shape"] == [1, 1, 64, 64 // 4, 96 // 4]
    assert m["state"]["decoder"][0]["shape"] == [1, 1, 512, 4, 6]


def test_graphs_pass_checker_and_structure(fp32_export):
    m = manifest(fp32_export)
    assert check_structure(fp32_export, m) == []
    files = sorted(p.name for p in fp32_export.iterdir())
    assert files == ["decoder.onnx", "dit.f2-3.0.onnx", "dit.f2-3.1.onnx", "encoder.onnx", "export.json"]
    for name in files[:-1]:
        onnx.checker.check_model(onnx.load(str(fp32_export / name)), full_check=True)
    encoder_ops = {n.op_type for n in onnx.load(str(fp32_export / "encoder.onnx")).graph.node}
    assert "Resize" in encoder_ops and "Cast" in encoder_ops          # 18x12 -> 70x50 happens in the graph


def test_dit_has_one_attention_per_self_and_cross_attention_and_no_mask(fp32_export):
    m = manifest(fp32_export)
    num_layers = m["model"]["transformer_config"]["num_layers"]
    for frames, parts in m["graphs"]["dit"].items():
        total = 0
        for part in parts:
            graph = onnx.load(str(fp32_export / part["file"])).graph
            attention = [n for n in graph.node if n.op_type == "Attention"]
            assert len(attention) == 2 * (part["blocks"][1] - part["blocks"][0])
            assert all(len(n.input) == 3 for n in attention), "Attention with a mask / cache input"
            assert not {n.op_type for n in graph.node} & {"If", "Loop", "Scan", "Dropout"}
            assert len(graph.input) == len(part["inputs"])                  # constants are not inputs
            total += len(attention)
        assert total == 2 * num_layers


# ---- numbers: ONNX Runtime vs torch float32 -----------------------------------------------------

def test_encoder_matches_torch(fp32_numbers):
    assert_within(fp32_numbers, "encoder", minimum=6)


def test_dit_matches_torch(fp32_numbers):
    assert_within(fp32_numbers, "dit F=2", minimum=2)       # hidden.2 and restored
    assert_within(fp32_numbers, "dit F=3", minimum=2)


def test_decoder_matches_torch(fp32_numbers):
    assert_within(fp32_numbers, "decoder", minimum=4)


def test_stream_of_four_chunks_matches_restorer(fp32_numbers):
    stream = [r for r in fp32_numbers if r.name.startswith("stream")]
    assert len(stream) == 1 and "(4 chunks: fmml)" in stream[0].name
    assert stream[0].tolerance == 1
    assert_within(fp32_numbers, "stream")


def test_verify_cli_runs_the_reae_in_slices(fp32_export, capsys):
    """The CLI's default: the ReAE in slices of one latent frame on both sides, the state carried (what
    keeps a 720p or 1080p export's check within a 24 GiB machine: docs/benchmarks.md). Every check
    holds the fp32 tolerances, and the longest chunks ran as slices: 12 frames and 3 latents, 3 calls."""
    from export.verify import main as verify_main
    assert verify_main([str(fp32_export), "--chunks", "3"]) == 0
    out = capsys.readouterr().out
    assert "slices of 1 latent frame per call" in out and out.rstrip().endswith("PASS")
    assert "encoder T=12 (3 calls) latents" in out and "decoder n=3 (3 calls) frames" in out
    with pytest.raises(SystemExit):
        verify_main([str(fp32_export), "--reae-slice", "-1"])
    assert "--reae-slice must be 0" in capsys.readouterr().err


def test_verification_catches_a_wrong_graph(fp32_export, tmp_path):
    """Guards the checks above: a DiT part with one weight changed must fail."""
    m = manifest(fp32_export)
    for path in fp32_export.iterdir():
        (tmp_path / path.name).symlink_to(path)
    part = m["graphs"]["dit"]["2-3"][1]["file"]
    model = onnx.load(str(fp32_export / part))
    weight = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    array = onnx.numpy_helper.to_array(weight) * 1.5
    weight.CopyFrom(onnx.numpy_helper.from_array(array, weight.name))
    (tmp_path / part).unlink()
    onnx.save(model, str(tmp_path / part))
    chain, ref = export_chain(tmp_path, m), TorchReference(m)
    z = np.random.default_rng(0).standard_normal((1, 48, 3, 4, 6)).astype(np.float32)
    got = chain.dit(z)
    want, _ = ref.dit(z, [2])
    assert np.abs(got - want).max() > 100 * TOLERANCES["fp32"]["latents"]


def test_verify_cli_structure_only(fp32_export, tmp_path, capsys):
    from export.verify import main as verify_main
    assert verify_main([str(fp32_export), "--structure-only"]) == 0
    assert "dit.f2-3.1.onnx" in capsys.readouterr().out
    # export.json that disagrees with a graph: caught.
    for path in fp32_export.iterdir():
        if path.name != "export.json":
            (tmp_path / path.name).symlink_to(path)
    bad = manifest(fp32_export)
    bad["graphs"]["decoder"]["outputs"][0]["shape"] = ["4n", 50, 72, 3]
    (tmp_path / "export.json").write_text(json.dumps(bad))
    assert verify_main([str(tmp_path), "--structure-only"]) == 1
    assert "decoder.onnx: outputs" in capsys.readouterr().out
    assert verify_main([str(tmp_path / "nowhere")]) == 2


# ---- pieces -------------------------------------------------------------------------------------

def test_part_ranges():
    assert part_ranges(30, 6) == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 25), (25, 30)]
    assert part_ranges(30, 4) == [(0, 8), (8, 16), (16, 23), (23, 30)]
    assert part_ranges(3, 1) == [(0, 3)] and part_ranges(3, 3) == [(0, 1), (1, 2), (2, 3)]


def test_streamed_parts_chain_to_the_model():
    """The parts, built from the weight stream one at a time, are the model (torch, float32)."""
    source, model = small_window_source()
    cond = model.conditioning(source.prompt())
    z = torch.randn(1, 48, 3, 6, 10, generator=torch.Generator().manual_seed(1))
    plan = model.grid_plan(model.token_grid(z.shape), 0)
    const, parts = stream_parts(source, [(0, 1), (1, 2), (2, 3)], torch.float32)
    outputs, names, x = [], [], z
    with torch.no_grad():
        expected = model.restore(z, cond, plan)
        hidden1 = model.run_blocks(model.embed(z), cond, plan, 0, 1)
        for part in parts:
            module = DiTPart(source.cfg, part, const, tuple(z.shape), torch.float32)
            x = module(x, z) if module.projects else module(x)
            outputs.append(x)
            names.append((module.input_names, module.output_names))
    assert names == [(["latents"], ["hidden.1"]), (["hidden.1"], ["hidden.2"]), (["hidden.2", "latents"], ["restored"])]
    assert (outputs[0] - hidden1).abs().max() < 1e-5
    assert (outputs[-1] - expected).abs().max() < 1e-5


def test_checkpoint_streams_the_same_weights(tmp_path):
    from swiftvr.checkpoint import checkpoint_sha256
    from swiftvr.random_checkpoint import write_random_checkpoint
    folder = write_random_checkpoint("tiny", tmp_path / "ckpt", seed=3)
    source = checkpoint_source(folder)
    assert source.preset == "tiny" and source.cfg == random_source("tiny", 3).cfg
    from_file = dict(source.transformer_tensors())
    drawn = dict(random_source("tiny", 3).transformer_tensors())
    assert list(from_file) == list(drawn)
    assert all(torch.equal(from_file[k], drawn[k]) for k in drawn)
    assert torch.equal(source.prompt(), random_source("tiny", 3).prompt())
    description = source.describe()
    assert description["checkpoint_sha256"] == checkpoint_sha256(folder)
    assert description["checkpoint"] == str(folder.resolve())


def test_checkpoint_with_a_missing_key_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file
    from swiftvr.random_checkpoint import write_random_checkpoint
    folder = write_random_checkpoint("tiny", tmp_path / "ckpt", seed=0)
    weights = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(weights))
    del tensors["blocks.1.ffn.net.2.bias"]
    save_file(tensors, str(weights))
    with pytest.raises(ExportError, match="missing keys: blocks.1.ffn.net.2.bias"):
        checkpoint_source(folder)


def test_settings_derive_sizes():
    s = make_settings("1080p", precision="bf16", dit_parts=6, num_layers=30)
    g = s.geometry
    assert (g.input_size, g.padded_size, g.latent_size) == ((480, 270), (1920, 1088), (120, 68))
    assert s.dit_latent_frames == [6, 7] and s.scale == 4.0
    s = make_settings("1280x720", input_size="640x360", dit_overlap=1)
    assert s.geometry.input_size == (640, 360) and s.scale == 2.0 and s.dit_latent_frames == [7]


# ---- bad requests -------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--res", "999p"], "neither WIDTHxHEIGHT nor one of"),
    (["--res", "720p", "--scale", "5"], "--scale must be between 1 and 4"),
    (["--res", "720p", "--scale", "0.5"], "--scale must be between 1 and 4"),
    (["--res", "16x16", "--scale", "1"], "smaller than one DiT token"),
    (["--res", "100x31", "--scale", "1"], "smaller than one DiT token"),
    (["--res", "96x64", "--dit-parts", "4"], "--dit-parts must be between 1 and"),
    (["--res", "96x64", "--clip-len", "6"], "clip_len must be a positive multiple of 4"),
    (["--res", "96x64", "--dit-overlap", "3", "--clip-len", "8"], "dit_overlap must be in 0..2"),
])
def test_bad_request_is_one_line_and_writes_nothing(args, message, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["--preset", "tiny", "--random-weights", "0", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_argument_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--preset", "tiny", "--random-weights", "0", "--res", "96x64", "--precision", "fp8",
              "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'fp8'" in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_overwrite_swaps_folders(tmp_path):
    from export.exporter import _move_into_place
    out, new = tmp_path / "out", tmp_path / ".out.partial"
    out.mkdir()
    (out / "old.txt").write_text("old")
    new.mkdir()
    (new / "export.json").write_text("{}")
    _move_into_place(new, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and [p.name for p in out.iterdir()] == ["export.json"]


def test_bad_weight_arguments(tmp_path, capsys):
    out = tmp_path / "out"
    cases = [(["--checkpoint", str(tmp_path / "nowhere")], "checkpoint folder"),
             (["--preset", "tiny"], "--random-weights"),
             (["--checkpoint", str(tmp_path), "--preset", "tiny", "--random-weights", "0"], "drop --preset")]
    (tmp_path / "empty_ckpt").mkdir()
    cases.append((["--checkpoint", str(tmp_path / "empty_ckpt")], "reae.safetensors not found"))
    for args, message in cases:
        assert main([*args, "--res", "96x64", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert not out.exists()


def test_existing_output_is_not_overwritten(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main(["--preset", "tiny", "--random-weights", "0", "--res", "96x64", "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_failed_export_leaves_nothing(tmp_path, monkeypatch):
    """The encoder gets written (a stand-in graph, to be quick), then the export fails: nothing stays."""
    import onnx_ir as ir
    import export.exporter as exporter
    calls = []

    def first_then_fail(module, inputs, input_names, output_names, *args):
        calls.append(input_names[0])
        if len(calls) > 1:
            raise RuntimeError("simulated failure after the first graph")
        graph = onnx.helper.make_graph(
            [onnx.helper.make_node("Identity", ["frames"], ["latents"])], "stand_in",
            [onnx.helper.make_tensor_value_info("frames", onnx.TensorProto.UINT8, [4])],
            [onnx.helper.make_tensor_value_info("latents", onnx.TensorProto.UINT8, [4])])
        return ir.serde.deserialize_model(onnx.helper.make_model(graph))

    monkeypatch.setattr(exporter, "to_onnx", first_then_fail)
    settings = make_settings("96x64", scale=1, precision="fp32", clip_len=CLIP_LEN)
    with pytest.raises(RuntimeError, match="simulated"):
        exporter.run_export(random_source("tiny", 0), settings, tmp_path / "out", progress=False)
    assert calls == ["frames", "latents"]
    assert list(tmp_path.iterdir()) == []
