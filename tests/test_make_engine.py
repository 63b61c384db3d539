"""`make engine` end to end on the real tiny export: export -> TensorRT-RTX engines -> bundle."""
import subprocess
import sys

import pytest

from contract.bundle import open_bundle


def make_engine(tmp_path, *extra):
    command = [sys.executable, "-m", "engines.make", "--res", "64x64", "--scale", "2", "--clip-len", "4",
               "--dit-overlap", "1", "--exports", str(tmp_path / "exports"), "--cache", str(tmp_path / "cache"),
               "--out", str(tmp_path / "64.plan"), *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("make_engine")
    first = make_engine(tmp, "--gpu", "rtx5090")
    assert first.returncode == 0, first.stderr[-3000:]
    return tmp, first


def test_tiny_bundle_for_rtx5090(built):
    tmp, first = built
    assert "tiny preset with seeded random weights" in first.stdout
    with open_bundle(tmp / "64.plan") as bundle:
        manifest = bundle.manifest
        assert manifest["target"]["gpu"] == "rtx5090" and manifest["precision"] == "bf16"
        names = [e["name"] for e in manifest["engines"]]
        assert names == ["encoder", "dit.f2", "decoder"]          # overlap 1: one DiT shape (n + 1 = 2)
        dit = manifest["engines"][1]
        # Every self- and cross-attention of the 3 tiny blocks became TensorRT attention.
        assert dit["network"]["onnx_attention_nodes"] == 6
        assert dit["network"]["attention_input_layers"] == 6 and dit["network"]["softmax_layers"] == 0
        assert sorted(bundle.members) == ["decoder.engine", "dit.f2.engine", "encoder.engine"]
        assert manifest["sizes"]["output_size"] == [64, 64] and manifest["sizes"]["input_size"] == [32, 32]


def test_second_run_reuses_export_and_engines(built):
    tmp, _ = built
    again = make_engine(tmp, "--gpu", "rtx5090")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "reusing export" in again.stdout
    assert "exporting" not in again.stdout


def test_bad_requests(tmp_path):
    unknown = make_engine(tmp_path, "--gpu", "rtx9999")
    assert unknown.returncode == 2 and "rtx9999" in unknown.stderr and "rtx5090" in unknown.stderr
    bad_res = make_engine(tmp_path, "--gpu", "rtx5090", "--res", "999q")
    assert bad_res.returncode == 2 and "999q" in bad_res.stderr
    bad_vram = make_engine(tmp_path, "--gpu", "rtx4070", "--vram", "-12")
    assert bad_vram.returncode == 2 and bad_vram.stderr == ("error: --vram -12: give the GPU's memory in GB, a number "
                                                            "above 0 (8, 12, 16...)\n")
    assert not (tmp_path / "64.plan").exists()
