"""engines/: export folder -> bundle, on small synthetic exports (engines/synthetic.py).

TensorRT-RTX builds these tiny graphs on the CPU in well under a second each; nothing here runs an
engine (that needs a GPU). The cpu bundle's graphs are run with ONNX Runtime.
"""
import importlib.util
import io
import json
import re
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from engines import build as build_module
from contract import bundle as bundle_module
from engines.build import BuildError
from contract.bundle import BundleError, open_bundle, read_manifest, write_bundle
from engines.export_folder import read_export
from engines.inspect import main as inspect_main
from engines.make_bundle import BundleTooLarge, default_out, make_bundle
from engines.profiles import PROFILES, get_profile
from engines.synthetic import SyntheticConfig, write_synthetic_export

requires_rtx = pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx") is None,
                                  reason="needs tensorrt-rtx (pip install tensorrt-rtx)")


@pytest.fixture(scope="module")
def fp16_export(tmp_path_factory):
    """Two chained DiT parts with ONNX Attention, DiT weights in external data."""
    return write_synthetic_export(tmp_path_factory.mktemp("export_fp16"), SyntheticConfig(precision="fp16", dit_parts=2))


@pytest.fixture(scope="module")
def fp32_export(tmp_path_factory):
    return write_synthetic_export(tmp_path_factory.mktemp("export_fp32"), SyntheticConfig(precision="fp32"))


@pytest.fixture(scope="module")
def rtx_bundle(fp16_export, tmp_path_factory):
    """(bundle path, manifest, engine results, cache dir) for rtx5090."""
    cache = tmp_path_factory.mktemp("cache")
    out = tmp_path_factory.mktemp("bundles") / "32p.plan"
    path, manifest, results = make_bundle(fp16_export, "rtx5090", out=out, cache_dir=cache)
    return path, manifest, results, cache


def count_builds(monkeypatch):
    """Count builder calls (and still build)."""
    calls = []
    real = build_module.build_engine_in_subprocess

    def counting(job):
        calls.append(job.name)
        return real(job)
    monkeypatch.setattr(build_module, "build_engine_in_subprocess", counting)
    return calls


def onnx_io(path: Path) -> list:
    model = onnx.load(str(path), load_external_data=False)

    def entry(v):
        t = v.type.tensor_type
        return v.name, str(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)), \
            [d.dim_param or d.dim_value for d in t.shape.dim]
    return [entry(v) for v in model.graph.input], [entry(v) for v in model.graph.output]


# ------------------------------------------------------------------------------------ profiles

def test_profiles():
    assert get_profile("rtx5090").compute_capabilities == ("12.0",)
    assert get_profile("gb10").compute_capabilities == ("12.1",)
    assert "bf16" not in get_profile("rtx2080ti").precisions
    assert get_profile("h100").flavour == get_profile("h200").flavour == "tensorrt"
    assert get_profile("cpu").flavour == "onnx"
    assert all(p.default_precision in p.precisions for p in PROFILES.values())
    with pytest.raises(ValueError, match="unknown GPU profile 'rtx9999'.*rtx5090.*cpu"):
        get_profile("rtx9999")


def test_unknown_gpu_cli(fp16_export, capsys):
    from engines.__main__ import main
    assert main(["--export", str(fp16_export), "--gpu", "titan-x"]) == 1
    assert "unknown GPU profile 'titan-x'; known: rtx5090" in capsys.readouterr().err


@pytest.mark.parametrize("gpu, vram, message", [
    ("rtx5090", "0", "--vram 0: give the GPU's memory in GB, a number above 0 (8, 12, 16...)"),
    ("rtx5090", "nan", "--vram nan: give the GPU's memory in GB"),
    ("rtx5090", "2", "--vram 2: rtx5090 keeps 2 GiB back for the CUDA context, the display and video I/O, which "
                     "leaves nothing"),
    ("cpu", "8", "--vram is for GPU profiles; cpu runs in host memory"),
])
def test_a_bad_vram_is_one_line_and_exit_2(fp16_export, tmp_path, capsys, gpu, vram, message):
    from engines.__main__ import main
    assert main(["--export", str(fp16_export), "--gpu", gpu, "--vram", vram, "--cache", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1 and not (tmp_path / "c").exists()


@pytest.mark.parametrize("gpu, precision, message", [
    ("rtx5090", "fp32", "fused attention kernels need fp16 or bf16"),
    ("h100", "fp32", "fused attention kernels need fp16 or bf16"),
])
def test_fp32_on_gpu_is_refused(fp32_export, gpu, precision, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        make_bundle(fp32_export, gpu, out=tmp_path / "x.plan", cache_dir=tmp_path)
    assert not (tmp_path / "x.plan").exists()


def test_precision_must_match_export(fp16_export, tmp_path):
    with pytest.raises(ValueError, match="exported in fp16.*re-export with --precision bf16"):
        make_bundle(fp16_export, "rtx5090", precision="bf16", out=tmp_path / "x.plan", cache_dir=tmp_path)


def test_bf16_refused_on_turing(tmp_path):
    export = write_synthetic_export(tmp_path / "e", SyntheticConfig(precision="bf16"))
    with pytest.raises(ValueError, match="not available on rtx2080ti.*no bf16"):
        make_bundle(export, "rtx2080ti", out=tmp_path / "x.plan", cache_dir=tmp_path)


def test_default_out_name(fp16_export):
    assert default_out(read_export(fp16_export)).name == "32p.plan"   # output height 32


# ------------------------------------------------------------------------------------ rtx bundle

@requires_rtx
def test_rtx_bundle_matches_graphs(rtx_bundle, fp16_export):
    path, manifest, results, _ = rtx_bundle
    export = json.loads((fp16_export / "export.json").read_text())
    assert [e["name"] for e in manifest["engines"]] == ["encoder", "dit.0", "dit.1", "decoder"]
    assert list(manifest["members"]) == ["encoder.engine", "dit.0.engine", "dit.1.engine", "decoder.engine"]
    assert manifest["target"] == {**manifest["target"], "gpu": "rtx5090", "flavour": "tensorrt-rtx",
                                  "compute_capabilities": ["12.0"]}
    assert manifest["precision"] == "fp16"
    assert manifest["builder"]["module"] == "tensorrt_rtx" and manifest["builder"]["version"]
    assert manifest["chunk"] == export["chunk"] and manifest["state"] == export["state"]
    assert manifest["sizes"]["resolution"] == "32p" and manifest["sizes"]["output_size"] == [32, 32]
    assert manifest["export"]["export_json_sha256"]

    for e in manifest["engines"]:
        ins, outs = onnx_io(fp16_export / f"{e['name']}.onnx")
        assert [(t["name"], t["dtype"], t["shape"]) for t in e["inputs"]] == ins
        assert [(t["name"], t["dtype"], t["shape"]) for t in e["outputs"]] == outs
        # what TensorRT parsed: same names and dtypes, -1 exactly at the dynamic dims
        net_ins = {t["name"]: t for t in e["network"]["inputs"]}
        for name, dtype, shape in ins:
            assert net_ins[name]["dtype"] == dtype
            assert net_ins[name]["shape"] == [-1 if isinstance(d, str) else d for d in shape]
        is_dit = e["role"] == "dit"
        assert e["network"]["onnx_attention_nodes"] == (1 if is_dit else 0)
        assert e["network"]["attention_input_layers"] == e["network"]["attention_output_layers"] == (1 if is_dit else 0)
        assert e["build"]["build_seconds"] > 0 and e["build"]["peak_rss_bytes"] > 0
    frames = manifest["engines"][0]["inputs"][0]
    assert (frames["name"], frames["min"], frames["opt"], frames["max"]) == \
        ("frames", [4, 16, 16, 3], [8, 16, 16, 3], [12, 16, 16, 3])


@requires_rtx
def test_rtx_bundle_members_are_plain_engines(rtx_bundle, tmp_path):
    path, manifest, results, _ = rtx_bundle
    subprocess.run(["tar", "xf", str(path), "-C", str(tmp_path)], check=True)   # what a trtexec user does
    with open_bundle(path) as b:
        for r in results:
            on_disk = (tmp_path / r.member).read_bytes()
            assert on_disk == r.path.read_bytes() == b.read(r.member)
            with b.view(r.member) as v:   # in place: the member's bytes at its offset in the file
                assert v.nbytes == r.size
            assert path.read_bytes()[b.members[r.member].offset:][:16] == on_disk[:16]
    assert json.loads((tmp_path / "manifest.json").read_text()) == manifest
    check = subprocess.run(["sha256sum", "-c", "manifest.sha256"], cwd=tmp_path, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


@requires_rtx
def test_cache_hit_then_rebuilds(rtx_bundle, fp16_export, tmp_path, monkeypatch):
    _, first, _, cache = rtx_bundle
    calls = count_builds(monkeypatch)
    # same inputs and settings: every engine from the cache, no builder call, same engines
    _, again, results = make_bundle(fp16_export, "rtx5090", out=tmp_path / "a.plan", cache_dir=cache)
    assert calls == [] and all(r.cache_hit for r in results)
    assert again["members"] == first["members"]
    # a changed build setting rebuilds every engine
    _, _, results = make_bundle(fp16_export, "rtx5090", out=tmp_path / "b.plan", cache_dir=cache,
                                optimization_level=2)
    assert calls == ["encoder", "dit.0", "dit.1", "decoder"] and not any(r.cache_hit for r in results)
    # a changed graph (same file date or not: content decides) rebuilds that engine only
    copy = tmp_path / "export"
    subprocess.run(["cp", "-a", str(fp16_export), str(copy)], check=True)
    decoder = onnx.load(str(copy / "decoder.onnx"))
    decoder.doc_string = "changed"
    onnx.save(decoder, str(copy / "decoder.onnx"))
    calls.clear()
    make_bundle(copy, "rtx5090", out=tmp_path / "c.plan", cache_dir=cache)
    assert calls == ["decoder"]
    # --force rebuilds even when cached
    calls.clear()
    make_bundle(copy, "rtx5090", out=tmp_path / "d.plan", cache_dir=cache, force=True)
    assert len(calls) == 4


@requires_rtx
def test_damaged_cache_entry_is_rebuilt(rtx_bundle, fp16_export, tmp_path, monkeypatch):
    _, _, results, cache = rtx_bundle
    damaged = tmp_path / "cache"
    subprocess.run(["cp", "-a", str(cache), str(damaged)], check=True)
    engine = damaged / results[1].path.name
    data = bytearray(engine.read_bytes())
    data[len(data) // 2] ^= 0xFF
    engine.write_bytes(bytes(data))
    calls = count_builds(monkeypatch)
    make_bundle(fp16_export, "rtx5090", out=tmp_path / "x.plan", cache_dir=damaged)
    assert calls == ["dit.0"]


@requires_rtx
def test_attention_check_fails_on_decomposed_attention(tmp_path):
    export = write_synthetic_export(tmp_path / "e", SyntheticConfig(precision="fp16", fused_attention=False))
    with pytest.raises(BuildError, match=r"dit: attention check failed: .*no ONNX Attention node.*MatMul/Softmax"
                                         r".*opset 23.*2 SoftMax layers"):
        make_bundle(export, "rtx5090", out=tmp_path / "x.plan", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "x.plan").exists()


@requires_rtx
def test_inspect_rtx_bundle(rtx_bundle, capsys):
    assert inspect_main([str(rtx_bundle[0])]) == 0
    out = capsys.readouterr().out
    assert "rtx5090  tensorrt-rtx  SM 12.0  precision fp16" in out
    assert "dit.0     dit.0.engine" in out and "attention 1 in / 1 out for 1 ONNX Attention" in out
    assert "frames           uint8     [T,16,16,3]  min 4x16x16x3 opt 8x16x16x3 max 12x16x16x3" in out
    assert "engines not checked" in out or "engines deserialized" in out
    # the memory plan: every engine's size and activations, the total against the card
    assert out.count("            memory: engine ") == 4
    assert "on the GPU" in out and "rtx5090 (32 GB): budget 30 GiB: fits (2.7 MiB of 30 GiB)" in out
    # the context buffers (contract/context_memory.py): one per lane, the DiT parts sharing theirs
    assert "context buffers (overlap on: one per lane, the DiT parts share one): encoder 0.0 MiB | dit.0, dit.1 " in out
    plan = rtx_bundle[1]["memory_plan"]
    assert plan["engines_bytes"] == sum(e["memory"]["engine_bytes"] for e in rtx_bundle[1]["engines"])
    assert plan["total_bytes"] == plan["engines_bytes"] + plan["activation_bytes"] + plan["io_bytes"]
    assert plan["activation_bytes"] == sum(b["bytes"] for b in plan["contexts"]) and plan["overlap"]
    assert plan["reae_slice"] is None and plan["streamed_bytes"] == {}     # nothing needed on a 32 GB card


# ------------------------------------------------------------------------------------ cpu bundle

def test_cpu_bundle_runs_in_onnxruntime(fp32_export, tmp_path, capsys):
    path, manifest, _ = make_bundle(fp32_export, "cpu", out=tmp_path / "32p-cpu.plan")
    assert list(manifest["members"]) == ["encoder.onnx", "dit.onnx", "dit.onnx.data", "decoder.onnx"]
    assert manifest["engines"][1]["files"] == ["dit.onnx", "dit.onnx.data"]
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["tar", "xf", str(path), "-C", str(out)], check=True)

    def run_chain(folder):
        rng = np.random.default_rng(0)
        frames = rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)   # 3 latents: one DiT call
        zeros = {s["input"]: np.zeros(s["shape"], np.float32) for s in manifest["state"]["encoder"]}
        enc = ort.InferenceSession(str(folder / "encoder.onnx")).run(None, {"frames": frames, **zeros})
        restored = ort.InferenceSession(str(folder / "dit.onnx")).run(None, {"latents": enc[0]})[0]
        dec = ort.InferenceSession(str(folder / "decoder.onnx")).run(
            None, {"latents": restored, "state_in.mem_0": np.zeros((1, 1, 48, 8, 8), np.float32)})
        return dec[0]
    from_bundle = run_chain(out)
    assert from_bundle.shape == (12, 32, 32, 3) and from_bundle.dtype == np.uint8
    np.testing.assert_array_equal(from_bundle, run_chain(fp32_export))

    assert inspect_main([str(path)]) == 0
    text = capsys.readouterr().out
    assert text.count("I/O matches the manifest") == 3
    assert re.search(r"dit: \d+ nodes, 2 Attention, 0 Softmax", text)


# ------------------------------------------------------------------------------------ bundle file

@pytest.fixture()
def small_bundle(tmp_path):
    a, b = tmp_path / "a.engine", tmp_path / "b.engine"
    a.write_bytes(bytes(range(256)) * 40)
    b.write_bytes(b"\x01" * 3000)
    path = tmp_path / "b.plan"
    write_bundle(path, {"note": "test"}, [("a.engine", a), ("b.engine", b)])
    return path


def test_bundle_roundtrip(small_bundle):
    manifest = read_manifest(small_bundle)
    assert manifest["format"] == "swiftvr-bundle" and manifest["format_version"] == 1
    with open_bundle(small_bundle) as b:
        assert b.read("a.engine") == bytes(range(256)) * 40 and b.read("b.engine") == b"\x01" * 3000
        assert all(m.offset % 512 == 0 for m in b.members.values())


def test_truncated_bundle(small_bundle):
    data = small_bundle.read_bytes()
    for cut in (len(data) - 5000, 700):   # inside the members, inside the manifest
        small_bundle.write_bytes(data[:cut])
        with pytest.raises(BundleError, match="truncated"):
            open_bundle(small_bundle)


def test_tampered_bundle(small_bundle):
    data = bytearray(small_bundle.read_bytes())
    with open_bundle(small_bundle) as b:
        offset = b.members["b.engine"].offset
    data[offset + 100] ^= 0x01
    small_bundle.write_bytes(bytes(data))
    read_manifest(small_bundle)   # the manifest itself is intact
    with pytest.raises(BundleError, match="member b.engine is damaged"):
        open_bundle(small_bundle)


def test_tampered_manifest(small_bundle):
    data = small_bundle.read_bytes()
    small_bundle.write_bytes(data.replace(b'"note": "test"', b'"note": "Test"', 1))
    with pytest.raises(BundleError, match="manifest.json is damaged"):
        read_manifest(small_bundle)


def _rewrite_manifest(path: Path, edit) -> None:
    """Copy the bundle with an edited manifest and a matching manifest.sha256."""
    import hashlib
    with tarfile.open(path) as src:
        members = [(m, src.extractfile(m).read()) for m in src.getmembers()]
    manifest = json.loads(members[0][1])
    edit(manifest)
    data = json.dumps(manifest).encode()
    members[0] = (members[0][0], data)
    members[1] = (members[1][0], f"{hashlib.sha256(data).hexdigest()}  manifest.json\n".encode())
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as dst:
        for info, body in members:
            info.size = len(body)
            dst.addfile(info, io.BytesIO(body))


def test_other_format_version(small_bundle):
    _rewrite_manifest(small_bundle, lambda m: m.update(format_version=2))
    for read in (read_manifest, open_bundle):
        with pytest.raises(BundleError, match="swiftvr-bundle version 2; this code reads versions 1"):
            read(small_bundle)


def test_not_a_bundle(tmp_path):
    (tmp_path / "x.plan").write_bytes(b"\0" * 100)
    with pytest.raises(BundleError, match="not a SwiftVR bundle"):
        open_bundle(tmp_path / "x.plan")


def test_write_is_atomic(tmp_path, monkeypatch):
    src = tmp_path / "big.engine"
    src.write_bytes(b"\x02" * 100_000)
    out = tmp_path / "out" / "b.plan"
    out.parent.mkdir()
    out.write_bytes(b"previous bundle")

    def interrupted(self, n=-1):
        raise KeyboardInterrupt
    monkeypatch.setattr(bundle_module._HashingReader, "read", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_bundle(out, {}, [("big.engine", src)])
    assert out.read_bytes() == b"previous bundle"   # old file untouched, no temp left behind
    assert [p.name for p in out.parent.iterdir()] == ["b.plan"]


def test_full_tensorrt_missing_says_how_to_install(fp16_export, tmp_path):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("full TensorRT is installed here")
    except ImportError:
        pass
    with pytest.raises(ImportError, match=r"pip install \"tensorrt>=10.14\".*NVIDIA's index.*GPU"):
        make_bundle(fp16_export, "h100", out=tmp_path / "x.plan", cache_dir=tmp_path)


@requires_rtx
def test_export_json_must_match_graph(fp16_export, tmp_path):
    copy = tmp_path / "export"
    subprocess.run(["cp", "-a", str(fp16_export), str(copy)], check=True)
    meta = json.loads((copy / "export.json").read_text())
    meta["graphs"]["encoder"]["inputs"][0]["shape"] = [8, 16, 16, 3]   # graph says T is dynamic
    (copy / "export.json").write_text(json.dumps(meta))
    with pytest.raises(BuildError, match=r"encoder: export.json says frames is uint8 \[8, 16, 16, 3\], the ONNX "
                                         r"graph parses to uint8 \[-1, 16, 16, 3\]"):
        make_bundle(copy, "rtx5090", out=tmp_path / "x.plan", cache_dir=tmp_path / "cache")


@requires_rtx
def test_weights_over_memory_budget(fp16_export, tmp_path, monkeypatch):
    import dataclasses
    tiny = dataclasses.replace(get_profile("rtx5090"), name="tiny-gpu", memory_budget_gb=1e-4)
    monkeypatch.setitem(PROFILES, "tiny-gpu", tiny)
    # refused before any build, every measure tried (engines/fit.py), with the plan's numbers and what to change
    with pytest.raises(BundleTooLarge, match=r"for tiny-gpu: even with the ReAE in slices of 1 latent frame .*; overlap "
                                             r"off .*; 0.2 MiB of DiT weights streamed .*, the bundle needs 0.2 MiB on "
                                             r"the GPU \(engines 0.0 MiB \+ activations 0.0 MiB \(estimated\) \+ I/O "
                                             r"0.1 MiB\) but tiny-gpu has a budget of 0.1 MiB. What would change that: "):
        make_bundle(fp16_export, "tiny-gpu", out=tmp_path / "x.plan", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
    # build_engines keeps its own weights check for callers that skip make_bundle
    from engines.build import build_engines
    from engines.export_folder import read_export
    with pytest.raises(BuildError, match=r"weights \(0.0 GiB\) exceed the tiny-gpu memory budget \(0.0001 GiB\)"):
        build_engines(read_export(fp16_export), tiny, tmp_path / "cache")


@requires_rtx
def test_weight_streaming_is_part_of_an_engines_cache_key_only_when_on(rtx_bundle, fp16_export, monkeypatch):
    from engines.build import build_engines, build_settings, engine_key
    from engines.cache import EngineCache
    from engines.export_folder import graph_sha256
    export, profile, cache = read_export(fp16_export), get_profile("rtx5090"), rtx_bundle[3]
    settings = build_settings(profile, rtx_bundle[1]["builder"]["version"], 3)
    for spec in export.graphs:     # off: the key every engine had before weight streaming existed
        old = build_module.cache_key({"graph_sha256": graph_sha256(spec), "graph": spec.entry(), "settings": settings})
        assert engine_key(spec, settings, streaming=False) == old and EngineCache(cache).lookup(old) is not None
        assert engine_key(spec, settings, streaming=True) != old
    calls = count_builds(monkeypatch)
    results, _ = build_engines(export, profile, cache, weight_streaming=frozenset({"dit.1"}))
    assert calls == ["dit.1"]                         # only the streamable engine is another engine
    assert [r.record.get("weight_streaming", False) for r in results] == [False, False, True, False]
