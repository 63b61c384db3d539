"""calibration/: INT8/FP8 post-training quantization of an export from calibration video.

End to end on the tiny preset (the `cpu_bundle` fixture's fp32 export, 17x16 -> 34x32, clip_len 8):
calibrate INT8 from a real clip of another size, bundle it for `cpu`, inspect it, restore a clip
with runtime.stream. Then the quality measures on arrays with known answers, the bad inputs, the
GPU profiles that refuse FP8, and the bf16 round trip FP8 graphs take for TensorRT.
"""
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from calibration.calibrate import calibrate
from calibration.quality import compare_frames, psnr, ssim
from calibration.video import CalibrationError
from engines.profiles import check_quantization, get_profile
from contract.graphs import read_export_json
from test_runtime import CLIP_LEN, PY, REPO, SIZE, cpu_bundle, make_clip, moving_frames  # noqa: F401 (fixture)

FRAMES = 2 * (2 * CLIP_LEN + 5)     # a calibration half and a held-out half, each FIRST + MIDDLE + LAST


@pytest.fixture(scope="module")
def export_dir(cpu_bundle):
    return cpu_bundle.parent.parent / "export"


@pytest.fixture(scope="module")
def int8_export(export_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("calib")
    clip = root / "calib.mkv"
    make_clip(clip, moving_frames(FRAMES, 2 * SIZE[0] + 6, 2 * SIZE[1], seed=3), audio=False)   # another size
    out = root / "int8"
    # --min-psnr 30: the decision rule is what is tested, not how well random weights quantize.
    record = calibrate(export_dir, [clip], "int8", out, min_psnr=30.0)
    return out, record, clip


def test_int8_export_keeps_the_contract_and_records_the_calibration(export_dir, int8_export):
    out, record, clip = int8_export
    meta, contract = read_export_json(out)
    source, source_contract = read_export_json(export_dir)
    assert [g.to_json() for g in contract.graphs()] == [g.to_json() for g in source_contract.graphs()]
    assert meta["quantization"]["precision"] == "int8" and meta["precision"] == "fp32"
    assert json.loads((out / "calibration.json").read_text()) == record
    videos = record["videos"]
    assert {v["role"] for v in videos} == {"calibration", "held-out"}
    assert all(v["sha256"] == videos[0]["sha256"] and "resized" in " ".join(v["notes"]) for v in videos)
    assert sum(v["frames_used"] for v in videos) == FRAMES
    assert all(set(kinds) >= {"f", "l"} for kinds in record["chunks"])           # FIRST ... LAST, state carried
    # The ReAE ran in slices of one latent frame (4 input frames) per call, as cpu bundles run it: more
    # calls than chunks (what bounds calibration's host memory: calibration/stream.py).
    chunks = sum(len(kinds) for kinds in record["chunks"])
    assert record["method"]["reae_slice"] == 1
    assert record["calls"]["encoder.onnx"] > chunks and record["calls"]["decoder.onnx"] > chunks, record["calls"]
    for d in record["groups"]:                                                   # the rule the record states
        psnr_alone = d["alone_on_calibration"]["psnr_db"]
        if psnr_alone is not None and psnr_alone < 30.0:
            assert not d["quantized"] and "with_groups_before" not in d, d
        else:       # passed alone: kept if the groups kept before it and it still hold 30 dB together
            together = d["with_groups_before"]["psnr_db"]
            assert d["quantized"] == (together is None or together >= 30.0), d
    chosen = {d["group"] for d in record["groups"] if d["quantized"]}
    assert chosen and meta["quantization"]["groups"] == sorted(chosen)
    assert {"dit.patch_embedding", "dit.head"} <= set(record["kept_high_precision"])
    assert any(not f.startswith("dit") for f in record["layers"])     # a ReAE graph is among them
    for file, layers in record["layers"].items():
        model = onnx.load(str(out / file), load_external_data=False)
        assert sum(n.op_type == "QuantizeLinear" for n in model.graph.node) > 0
        assert layers and set(record["ranges"][file])
        assert all(lo <= 0 <= hi and lo < hi for lo, hi in record["ranges"][file].values())
        # the cpu profile's scheme: activations uint8 with a zero point (ONNX Runtime's fast U8S8 path),
        # weights int8 (zero point 0)
        inits = {t.name: t for t in model.graph.initializer}
        zero_points = {inits[n.input[2]].data_type for n in model.graph.node if n.op_type == "QuantizeLinear"}
        weights = {inits[n.input[0]].data_type for n in model.graph.node
                   if n.op_type == "DequantizeLinear" and n.input[0] in inits}
        assert zero_points == {onnx.TensorProto.UINT8} and onnx.TensorProto.INT8 in weights
        # a quantized ReAE graph keeps its activations 8-bit between convolutions: Add/Concat take
        # dequantized inputs (ONNX Runtime runs them as QLinearAdd/QLinearConcat); the DiT's stay float
        from_dq = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
        glue = [n for n in model.graph.node if n.op_type in ("Add", "Concat")]
        glue_quantized = [n for n in glue if all(i in from_dq for i in n.input if i)]
        if file.startswith("dit"):
            assert not glue_quantized
        else:
            assert glue and len(glue_quantized) >= len(glue) // 2, (file, len(glue), len(glue_quantized))
    runs = record["quality"]["runs"]
    assert "not restoration quality" in record["quality"]["note"]
    assert "end_to_end" in runs and any(k.endswith("_only") for k in runs)
    for r in runs.values():
        assert r["frames"] == FRAMES - FRAMES // 2 and 0 < r["ssim"] <= 1 and r["max_level_diff"] >= 0
    assert not list(out.parent.glob(".int8.tmp-*"))


def test_int8_cpu_bundle_inspects_and_restores_a_clip(int8_export, tmp_path, capsys):
    from engines.inspect import main as inspect_main
    from engines.make_bundle import make_bundle
    out, record, _ = int8_export
    bundle, manifest, _ = make_bundle(out, "cpu", out=tmp_path / "int8.plan")
    assert manifest["quantization"]["quality"] == record["quality"]
    assert inspect_main([str(bundle)]) == 0
    text = capsys.readouterr().out
    assert "fp32 + int8 Q/DQ" in text and "quantized int8" in text and "end_to_end" in text
    assert "not restoration quality" in text
    source, target = tmp_path / "in.mkv", tmp_path / "out.mkv"
    make_clip(source, moving_frames(12, *SIZE, seed=5), audio=False)
    done = subprocess.run([PY, "-m", "runtime.stream", "--engine", str(bundle), str(source), "-o", str(target),
                           "--no-progress"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "fp32 + int8 Q/DQ" in done.stderr           # the model line says what runs
    import av
    with av.open(str(target)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 12


def test_calib_res_calibrates_small_and_applies_the_ranges_to_the_larger_export(tmp_path, capsys):
    """make engine RES=66x64 GPU=cpu PRECISION=int8 CALIB=clip CALIB_RES=34x32: two exports, the
    calibration on the small one, its ranges applied to the large one (calibration.apply), which is
    what is bundled: the same layers (paired by module path: some node names differ between the two
    sizes), the same range values, the quality labelled with where it was measured. Then
    `python -m calibration --ranges-from` measures quality at the new size, and the refusals."""
    from calibration.__main__ import main as calibration_main
    from calibration.apply import apply_calibration
    from contract.bundle import read_manifest
    from engines.inspect import main as inspect_main
    clip, exports = tmp_path / "calib.mkv", tmp_path / "exports"
    make_clip(clip, moving_frames(FRAMES, *SIZE, seed=4), audio=False)
    args = [PY, "-m", "engines.make", "--res", "66x64", "--scale", "2", "--clip-len", str(CLIP_LEN), "--gpu", "cpu",
            "--precision", "int8", "--calib", str(clip), "--calib-res", "34x32", "--groups", "encoder.conv", "dit.ffn",
            "--exports", str(exports), "--out", str(tmp_path / "b.plan")]
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    folders = sorted(p.name for p in exports.iterdir())
    assert len(folders) == 4, folders          # 34x32, 34x32 calibrated, 66x64, 66x64 with its ranges
    small, small_q, big, applied = (exports / f for f in folders)
    assert small_q.name.startswith(small.name + "-int8-") and applied.name == f"{big.name}-{small_q.name}"
    source = json.loads((small_q / "calibration.json").read_text())
    record = json.loads((applied / "calibration.json").read_text())
    assert [d["reason"] for d in source["groups"] if not d["quantized"]] == ["left out by --groups"] * 3
    # Groups given are chosen without a trial (one stream per group: 11 minutes each for the 5B DiT);
    # what was chosen is still measured on the held-out frames.
    assert [d["reason"] for d in source["groups"] if d["quantized"]] == ["chosen by --groups"] * 2
    assert all(d["alone_on_calibration"] is None for d in source["groups"])
    assert source["method"]["sensitivity_frames"] is None
    assert source["quality"]["runs"]["end_to_end"]["psnr_db"] is None or source["quality"]["runs"]["end_to_end"]["psnr_db"] > 20
    assert read_export_json(applied)[0]["quantization"]["groups"] == ["dit.ffn", "encoder.conv"]
    for f in source["layers"]:         # node and tensor names may differ between the sizes; the numbers may not
        assert len(record["layers"][f]) == len(source["layers"][f]) > 0
        assert sorted(record["ranges"][f].values()) == sorted(source["ranges"][f].values())
    assert record["ranges_from"]["input_size"] == list(SIZE) and "17x16 input" in record["quality"]["measured_at"]
    manifest = read_manifest(tmp_path / "b.plan")
    assert manifest["sizes"]["input_size"] == [33, 32] and manifest["quantization"]["precision"] == "int8"
    assert inspect_main([str(tmp_path / "b.plan")]) == 0
    text = capsys.readouterr().out
    assert "measured on another export of the same model, 17x16 input" in text and "measured at 17x16 input" in text

    held = tmp_path / "held.mkv"
    make_clip(held, moving_frames(2 * CLIP_LEN + 5, 33, 32, seed=9), audio=False)
    assert calibration_main(["--export", str(big), "--ranges-from", str(small_q), "--holdout", str(held),
                             "--out", str(tmp_path / "q")]) == 0
    measured = json.loads((tmp_path / "q" / "calibration.json").read_text())
    runs = measured["quality"]["runs"]
    assert runs["end_to_end"]["frames"] == 2 * CLIP_LEN + 5 and 0 < runs["end_to_end"]["ssim"] <= 1
    assert "measured_at" not in measured["quality"] and [v["role"] for v in measured["videos"]] == ["calibration",
                                                                                                   "held-out"]
    other = tmp_path / "other-weights"                # the same graphs, other weights: refused
    shutil.copytree(big, other)
    other_meta = json.loads((other / "export.json").read_text())
    other_meta["model"]["checkpoint_sha256"] = "0" * 64
    (other / "export.json").write_text(json.dumps(other_meta))
    for ranges_from, target, message in [(small, big, "is not quantized"), (small_q, other, "different models"),
                                         (small_q, applied, "already quantized")]:
        with pytest.raises(CalibrationError, match=message):
            apply_calibration(ranges_from, target, tmp_path / "refused")
        assert not (tmp_path / "refused").exists() and not list(tmp_path.glob(".refused*"))

    again = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "reusing quantized export" in again.stdout, again.stdout + again.stderr


def test_quality_measures_on_known_differences():
    a = np.full((2, 16, 16, 3), 100, np.uint8)
    b = a + 1                                                     # every value one level off
    assert psnr(a, b) == pytest.approx(20 * np.log10(255), abs=1e-9)   # MSE 1
    r = compare_frames(b, a)
    assert r["max_level_diff"] == 1 and r["frames"] == 2
    assert compare_frames(a, a)["psnr_db"] is None and ssim(a, a) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    noisy = np.clip(a + rng.normal(0, 20, a.shape), 0, 255).astype(np.uint8)
    assert ssim(noisy, a) < 0.5                                   # flat image + noise: structure lost


def test_quality_of_a_long_clip_in_memory_that_does_not_grow_with_it():
    """compare_frames gives the numbers of the whole clip at once (pooled squared error, frame mean of
    SSIM), but holds only a batch of frames in float64: at once, SSIM kept ~10 float64 copies of the
    clip (over 10 GB for calibration's 125-frame held-out clip at 704x576)."""
    import tracemalloc
    rng = np.random.default_rng(1)
    want = rng.integers(0, 256, (200, 48, 64, 3), dtype=np.uint8)
    got = np.clip(want + rng.normal(0, 6, want.shape), 0, 255).astype(np.uint8)
    tracemalloc.start()
    r = compare_frames(got, want)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 4 * want.nbytes, f"{peak / 1e6:.1f} MB traced for {want.nbytes / 1e6:.1f} MB of frames"
    assert r["psnr_db"] == pytest.approx(round(psnr(got, want), 3), abs=1e-3)
    assert r["ssim"] == pytest.approx(round(ssim(got, want), 5), abs=1e-5)
    assert r["max_level_diff"] == int(np.abs(got.astype(int) - want.astype(int)).max()) and r["frames"] == 200


def test_a_calibration_clip_is_what_the_runtime_feeds(tmp_path):
    """read_clip decodes and resizes as the runtime does (video.VideoReader, then video/resize.py's
    stretch, as runtime.stream --resize): calibration sees the frames the graphs will be fed."""
    from calibration.video import read_clip
    from video import VideoReader
    from video.resize import resize_frames
    clip = tmp_path / "big.mkv"
    make_clip(clip, moving_frames(30, 2 * SIZE[0] + 6, 2 * SIZE[1], seed=3), audio=False)
    got = read_clip(clip, SIZE, max_frames=27)
    with VideoReader(clip) as reader:
        want = np.concatenate([resize_frames(reader.read(n), SIZE) for n in (8, 19)])   # any batching
    np.testing.assert_array_equal(got.frames, want)
    assert got.source_size == (40, 32) and got.notes == ["resized from 40x32 to the export's input size 17x16"]


def test_recorded_feeds_live_on_disk_one_file_per_call(tmp_path):
    """Calibration keeps each call's feeds in a file (a call's ReAE state is 94 MB at 704x576) and
    onnxruntime's data reader reads them back one call at a time, in order, values unchanged."""
    from calibration.quantize import FeedReader
    from calibration.stream import FeedFiles
    store = FeedFiles(tmp_path / "feeds")
    calls = [{"frames": np.full((4, 2, 2, 3), i, np.uint8), "state_in.mem_4": np.full((1, 2), i / 3, np.float32)}
             for i in range(3)]
    for call in calls:
        store.append(call)
    assert len(store) == 3 and len(list((tmp_path / "feeds").iterdir())) == 3
    reader = FeedReader(store)
    reader.set_range(1, 3)
    got = [reader.get_next(), reader.get_next(), reader.get_next()]
    assert got[2] is None
    for read, want in zip(got[:2], calls[1:]):
        assert read.keys() == want.keys()
        assert all(read[k].dtype == want[k].dtype and np.array_equal(read[k], want[k]) for k in want)
    assert [int(c["frames"][0, 0, 0, 0]) for c in store] == [0, 1, 2]
    with pytest.raises(IndexError):
        store[3]


def test_bad_inputs_are_refused_and_nothing_is_written(export_dir, tmp_path):
    out = tmp_path / "q"
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all")
    with pytest.raises(CalibrationError, match="unreadable|no video"):
        calibrate(export_dir, [junk], "int8", out)
    short = tmp_path / "short.mkv"
    make_clip(short, moving_frames(2 * CLIP_LEN + 4, *SIZE), audio=False)
    with pytest.raises(CalibrationError, match="too short"):
        calibrate(export_dir, [short], "int8", out)
    with pytest.raises(CalibrationError, match="does not exist"):
        calibrate(export_dir, [tmp_path / "missing.mp4"], "int8", out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.mp4", "short.mkv"]


def test_a_failure_midway_leaves_no_folder(export_dir, tmp_path, monkeypatch):
    import calibration.calibrate as cal
    clip = tmp_path / "c.mkv"
    make_clip(clip, moving_frames(FRAMES, *SIZE), audio=False)

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")
    monkeypatch.setattr(cal, "quantize_graph", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        calibrate(export_dir, [clip], "int8", tmp_path / "q")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.mkv"]


def test_profiles_take_fp8_only_where_the_hardware_has_it():
    for gpu in ("rtx5090", "rtx4090", "h100", "gb10"):
        check_quantization(get_profile(gpu), "fp8")
    check_quantization(get_profile("cpu"), "int8")
    with pytest.raises(ValueError, match="fp8_e4m3"):
        check_quantization(get_profile("rtx3090"), "fp8")
    with pytest.raises(ValueError, match="SM 8.0"):
        check_quantization(get_profile("a100"), "fp8")
    with pytest.raises(ValueError, match="cpu profile"):
        check_quantization(get_profile("rtx5090"), "int8")


def test_make_engine_refuses_fp8_for_ampere_before_exporting(tmp_path):
    done = subprocess.run([PY, "-m", "engines.make", "--gpu", "a100", "--precision", "fp8", "--calib", "x.mp4",
                           "--exports", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "fp8 is not available on a100" in done.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("args, message", [
    (["--precision", "int8", "--calib", "x.mp4", "--groups", "decoder.convs"], "unknown layer groups ['decoder.convs']"),
    (["--min-psnr", "35"], "are for --precision fp8 or int8"),
    (["--groups", "dit.ffn"], "are for --precision fp8 or int8"),
    (["--calib-res", "360p"], "are for --precision fp8 or int8"),
    (["--precision", "int8", "--calib", "x.mp4", "--calib-res", "360p", "--input", "64x36"], "give --scale, not --input"),
    (["--precision", "int8", "--calib", "x.mp4", "--calib-res", "180p"], "size '180p' is neither"),
])
def test_make_engine_refuses_bad_calibration_choices_before_exporting(tmp_path, args, message):
    done = subprocess.run([PY, "-m", "engines.make", "--gpu", "cpu", "--exports", str(tmp_path)] + args,
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert not list(tmp_path.iterdir())


def test_fp8_of_a_bf16_graph_goes_back_to_bf16(tmp_path):
    """A bf16 graph is widened for ONNX Runtime's quantizer and narrowed back: TensorRT then sees
    bf16 I/O and weights with FP8 Q/DQ, as a bf16 export's engines need."""
    from calibration.quantize import narrow_to_bf16, quantize_graph, working_model
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 8)).astype(np.float32)
    weight = onnx.TensorProto(name="w", data_type=TensorProto.BFLOAT16, dims=w.shape,
                              raw_data=(w.view(np.uint32) >> 16).astype(np.uint16).tobytes())
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
                               helper.make_node("Relu", ["h"], ["y"], name="relu")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, ["s7", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, ["s7", 8])], [weight],
                              value_info=[helper.make_tensor_value_info("h", TensorProto.BFLOAT16, ["s7", 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)], ir_version=11)  # ORT 1.31 reads <= 13
    helper.set_model_props(model, {"swiftvr.dim_symbol": json.dumps({"s7": "T"})})
    src = tmp_path / "m.onnx"
    onnx.save(model, str(src))
    (tmp_path / "work").mkdir()
    widened = working_model(src, tmp_path / "work", "bf16")
    feeds = [{"x": rng.standard_normal((4, 16)).astype(np.float32)} for _ in range(3)]
    quantize_graph(widened, tmp_path / "q.onnx", feeds, "fp8", ["mm"], tmp_path / "ranges.json")
    narrowed = narrow_to_bf16(onnx.load(str(tmp_path / "q.onnx")), model)
    onnx.checker.check_model(narrowed, full_check=True)
    g = narrowed.graph
    assert g.input[0].type.tensor_type.elem_type == g.output[0].type.tensor_type.elem_type == TensorProto.BFLOAT16
    inits = {t.name: t.data_type for t in g.initializer}
    scales = [n.input[1] for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert scales and all(inits[s] == TensorProto.BFLOAT16 for s in scales)
    assert TensorProto.FLOAT8E4M3FN in inits.values()
    # The export's shapes and metadata come back: the activation estimate of the quantized graph is
    # the export's (it was 0 bytes for the 5B's FP8 DiT parts, every inner tensor unsized).
    from engines.memory import activation_estimate
    assert [(v.name, v.type.tensor_type.elem_type) for v in g.value_info] == [("h", TensorProto.BFLOAT16)]
    dynamic = {"T": {"min": 1, "opt": 4, "max": 4}}
    assert activation_estimate(narrowed, "dit", dynamic)["peak_bytes"] == \
        activation_estimate(model, "dit", dynamic)["peak_bytes"] == 4 * 8 * 2


def test_quantizing_writes_nothing_beside_the_source_graph(tmp_path, monkeypatch):
    """ONNX Runtime's quantizer writes a shape-inferred copy beside the model it is handed. Handed
    a shared export, two calibrations at once (two users, two test workers) wrote the same file and
    one parsed the other's half-written copy ("Wire format was corrupt", CI stop 18). It must work
    from a private folder: nothing is written beside the source, external weights still load."""
    from calibration.quantize import quantize_graph
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])], [w])
    shared = tmp_path / "export"
    shared.mkdir()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10),
              str(shared / "m.onnx"), save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    before = sorted(shared.iterdir())
    written = []
    infer = onnx.shape_inference.infer_shapes_path
    monkeypatch.setattr(onnx.shape_inference, "infer_shapes_path",
                        lambda src, dst, *a, **k: (written.append(Path(dst).parent), infer(src, dst, *a, **k))[1])
    feeds = [{"x": rng.standard_normal((4, 16)).astype(np.float32)} for _ in range(3)]
    quantize_graph(shared / "m.onnx", tmp_path / "q.onnx", feeds, "int8", ["mm"], tmp_path / "ranges.json")
    assert written and shared not in written
    assert sorted(shared.iterdir()) == before
    q = onnx.load(str(tmp_path / "q.onnx"))
    assert [n.op_type for n in q.graph.node].count("DequantizeLinear") >= 2


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_kept_ranges_quantize_a_graph_whose_names_differ(tmp_path, precision):
    """calibration/ranges.py: ranges measured on one graph, kept per node, quantize another graph of
    the same nodes under other node and tensor names to the same scales (FP8's histogram records
    pass through as well); a graph of other nodes is refused."""
    from calibration.quantize import quantize_graph
    from calibration.ranges import ort_cache_for, read_ranges, write_ranges
    rng = np.random.default_rng(1)
    w1, w2 = (rng.standard_normal(s).astype(np.float32) for s in ((16, 16), (16, 8)))

    def graph(names, ops=("MatMul", "MatMul")):
        x, h, y, n1, n2 = names
        return helper.make_model(helper.make_graph(
            [helper.make_node(ops[0], [x, "w1"], [h], name=n1), helper.make_node(ops[1], [h, "w2"], [y], name=n2)], "g",
            [helper.make_tensor_value_info(x, TensorProto.FLOAT, [4, 16])],
            [helper.make_tensor_value_info(y, TensorProto.FLOAT, [4, 8])],
            [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")]),
            opset_imports=[helper.make_opsetid("", 21)], ir_version=10)

    a, b = graph(["x", "h", "y", "mm1", "mm2"]), graph(["x", "t7", "y", "node_9", "node_12"])
    onnx.save(a, str(tmp_path / "a.onnx"))
    onnx.save(b, str(tmp_path / "b.onnx"))
    feeds = [{"x": rng.standard_normal((4, 16)).astype(np.float32)} for _ in range(4)]
    quantize_graph(tmp_path / "a.onnx", tmp_path / "qa.onnx", feeds, precision, ["mm1", "mm2"], tmp_path / "a.cache")
    write_ranges(tmp_path / "a.cache", a, "dit", tmp_path / "a.ranges.json")
    names = ort_cache_for(read_ranges(tmp_path / "a.ranges.json"), b, "dit", "b.onnx", tmp_path / "b.cache")
    assert names == {"mm1": "node_9", "mm2": "node_12"}
    quantize_graph(tmp_path / "b.onnx", tmp_path / "qb.onnx", [], precision, ["node_9", "node_12"], tmp_path / "b.cache")

    def scales(path):
        m = onnx.load(str(path))
        inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
        return [inits[n.input[1]].tolist() for n in m.graph.node if n.op_type == "QuantizeLinear"]
    assert scales(tmp_path / "qa.onnx") == scales(tmp_path / "qb.onnx") and scales(tmp_path / "qa.onnx")
    with pytest.raises(CalibrationError, match="node 1 differs"):
        ort_cache_for(read_ranges(tmp_path / "a.ranges.json"), graph(["x", "h", "y", "m1", "m2"], ("MatMul", "Gemm")),
                      "dit", "c.onnx", tmp_path / "c.cache")


def test_dit_ranges_pair_across_sizes_whose_index_arithmetic_differs(tmp_path):
    """A 1080p DiT graph has an Add of window-index arithmetic that a 256x144 export of the same
    model has not (seen on the 5B): the DiT's glue ops are never quantized, so its ranges pair by
    its Conv/MatMul/Gemm nodes alone; a ReAE graph, whose glue ops are quantized, is still refused."""
    from calibration.ranges import ort_cache_for, read_ranges, write_ranges

    def graph(extra_add: bool):
        nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm1"),
                 helper.make_node("Add", ["h", "b"], ["y"], name="add1"),
                 helper.make_node("MatMul", ["y", "w"], ["z"], name="mm2")]
        if extra_add:
            nodes.insert(0, helper.make_node("Add", ["i", "i"], ["j"], name="index_add"))
        return helper.make_model(helper.make_graph(
            nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 2]) for n in ("x", "i")],
            [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 2])],
            [numpy_helper.from_array(np.eye(2, dtype=np.float32), n) for n in ("w", "b")]),
            opset_imports=[helper.make_opsetid("", 21)], ir_version=10)

    cache = tmp_path / "small.cache"
    cache.write_text(json.dumps({"CLS": "TensorsData", "calibration_method": "MinMax", "data": {
        t: {"CLS": "TensorData", "lowest": -1.0, "highest": 1.0} for t in ("x", "h", "y", "z")}}))
    for role in ("dit", "decoder"):
        write_ranges(cache, graph(False), role, tmp_path / f"{role}.json")
    assert ort_cache_for(read_ranges(tmp_path / "dit.json"), graph(True), "dit", "big", tmp_path / "c") == \
        {"mm1": "mm1", "mm2": "mm2"}
    with pytest.raises(CalibrationError, match="node 0 differs"):
        ort_cache_for(read_ranges(tmp_path / "decoder.json"), graph(True), "decoder", "big", tmp_path / "c")


def test_schemes_command_quantizes_times_and_compares_one_graph(export_dir, int8_export, tmp_path):
    """python -m calibration.schemes: the bookkeeping (which layers, the float32 row, closeness
    against the float graph) and its refusals; the speed numbers are docs/benchmarks.md's."""
    from calibration.schemes import compare_schemes, main
    _, _, clip = int8_export
    rows = compare_schemes(export_dir, [clip], [clip], "decoder.onnx", ["u8s8-minmax", "s8s8-minmax"], FRAMES // 2, 1)
    assert [r["scheme"] for r in rows] == ["float32", "u8s8-minmax", "s8s8-minmax"]
    assert rows[0]["speedup"] == 1.0 and all(r["s_per_call"] > 0 for r in rows)
    assert all(r["layers"] > 0 and r["closeness_db"] is not None and 10 < r["closeness_db"] < 100 for r in rows[1:])
    assert main(["--export", str(export_dir), "--video", str(clip), "--holdout", str(clip),
                 "--graph", "nope.onnx"]) == 2
    assert main(["--export", str(export_dir), "--video", str(clip), "--holdout", str(clip),
                 "--schemes", "u4s4"]) == 2


def test_quality_command_compares_two_restored_videos(tmp_path, capsys):
    """python -m calibration.quality GOT WANT over lossless files: the numbers compare_frames gives
    for the whole clip, and a clear refusal when the two do not match frame for frame."""
    from calibration.quality import main
    frames = moving_frames(12, 32, 24, seed=5)
    rng = np.random.default_rng(1)
    noisy = np.clip(frames.astype(np.int16) + rng.integers(-3, 4, frames.shape), 0, 255).astype(np.uint8)
    make_clip(tmp_path / "a.mkv", frames, audio=False)
    make_clip(tmp_path / "b.mkv", noisy, audio=False)
    make_clip(tmp_path / "short.mkv", frames[:7], audio=False)
    assert main([str(tmp_path / "b.mkv"), str(tmp_path / "a.mkv")]) == 0
    got = json.loads(capsys.readouterr().out)
    want = compare_frames(noisy, frames)
    # RGB -> 8-bit YUV 4:4:4 -> RGB moves a level by up to ~2 in each file: the noise's 3 plus 2 x 2
    assert got["frames"] == 12 and abs(got["psnr_db"] - want["psnr_db"]) < 1.5 and got["max_level_diff"] <= 7
    assert main([str(tmp_path / "a.mkv"), str(tmp_path / "a.mkv")]) == 0
    assert json.loads(capsys.readouterr().out)["psnr_db"] is None       # identical
    assert main([str(tmp_path / "short.mkv"), str(tmp_path / "a.mkv")]) == 2
    assert "differ in frame count" in capsys.readouterr().err
