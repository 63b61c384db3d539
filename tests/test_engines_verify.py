"""engines.verify: its comparison and report with cpu bundles (ONNX Runtime against ONNX Runtime), and
its refusal to run GPU engines where there is no GPU. (Running TensorRT engines needs a GPU.)"""
import importlib.util
import shutil

import onnx
import pytest
from onnx import numpy_helper

from engines import verify as verify_module
from engines.make_bundle import make_bundle
from engines.synthetic import SyntheticConfig, write_synthetic_export
from engines.verify import CannotRun, main, tolerance_kind, verify_bundle


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """fp32, the DiT in two parts with external data: per graph means something."""
    return write_synthetic_export(tmp_path_factory.mktemp("exports") / "32p-fp32-synthetic",
                                  SyntheticConfig(precision="fp32", dit_parts=2))


@pytest.fixture(scope="module")
def cpu_bundle(export, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bundle")
    path, _, _ = make_bundle(export, "cpu", out=folder / "32p.plan", cache_dir=folder / "cache")
    return path


def perturbed_copy(export, tmp_path):
    """The export with one weight of dit.0 doubled: dit.0 must fail, the graphs after it (fed the
    reference's inputs) must not, and the stream's frames must."""
    copy = shutil.copytree(export, tmp_path / "perturbed")
    model = onnx.load(str(copy / "dit.0.onnx"))
    weight = next(t for t in model.graph.initializer if len(t.dims) == 2)
    weight.CopyFrom(numpy_helper.from_array(2 * numpy_helper.to_array(weight), weight.name))
    (copy / "dit.0.onnx.data").unlink()   # onnx appends to an existing data file
    onnx.save_model(model, str(copy / "dit.0.onnx"), save_as_external_data=True, location="dit.0.onnx.data")
    return copy


def report_rows(text):
    return {line.split()[0] if not line.strip().startswith("end to end") else "end to end": line
            for line in text.splitlines() if line.startswith("  ")}


def test_tolerance_kinds():
    assert [tolerance_kind(n) for n in ("latents", "restored", "hidden.10", "state_out.mem_4", "frames")] == \
        ["latents", "latents", "hidden", "state", "frames"]


def test_cpu_bundle_passes_against_its_export(cpu_bundle, export, capsys):
    """The export found by its export.json hash where `make engine` keeps exports; every graph called."""
    assert verify_bundle(cpu_bundle, search=export.parent)
    out = capsys.readouterr().out
    rows = report_rows(out)
    assert set(rows) == {"graph", "encoder", "dit.0", "dit.1", "decoder", "end to end"}
    assert all(row.split()[-1] == "ok" for name, row in rows.items() if name not in ("graph", "end to end"))
    assert "chunks first middle last" in out and out.rstrip().endswith("PASS") and "NOTE" not in out


def test_perturbed_graph_fails_where_it_is(cpu_bundle, export, tmp_path, capsys):
    assert main([str(cpu_bundle), "--export", str(perturbed_copy(export, tmp_path))]) == 1
    out = capsys.readouterr().out
    rows = report_rows(out)
    assert rows["dit.0"].endswith("FAIL")
    assert all(rows[name].endswith("ok") for name in ("encoder", "dit.1", "decoder"))
    assert "FAIL" in rows["end to end"]
    assert "NOTE: graphs ['dit.0'] are not the ones this bundle was built from" in out
    assert "FAIL: 2 tolerance(s) exceeded" in out


def test_cannot_run_without_export_or_arguments(cpu_bundle, tmp_path, capsys):
    with pytest.raises(CannotRun, match="give it with --export DIR"):
        verify_bundle(cpu_bundle, search=tmp_path)
    assert main([]) == 2
    assert main([str(tmp_path / "missing.plan")]) == 2
    assert "missing.plan" in capsys.readouterr().err


def has_gpu():
    try:
        verify_module._driver_gpu(0)
        return True
    except CannotRun:
        return False


@pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx") is None, reason="needs tensorrt-rtx to build")
@pytest.mark.skipif(has_gpu(), reason="this machine has a GPU: the refusal is for machines without one")
def test_gpu_bundle_refused_without_gpu(tmp_path, capsys):
    export = write_synthetic_export(tmp_path / "export", SyntheticConfig(precision="fp16"))
    bundle, _, _ = make_bundle(export, "rtx5090", out=tmp_path / "32p.plan", cache_dir=tmp_path / "cache")
    capsys.readouterr()
    assert main([str(bundle), "--export", str(export)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert "tensorrt-rtx engines for rtx5090, which run only on an NVIDIA GPU" in err
    assert "no NVIDIA GPU" in err

    # What would run on a GPU: Polygraphy TrtRunners over the engines' bytes, set up for TensorRT-RTX.
    import tensorrt_rtx
    from contract.bundle import open_bundle
    from engines.verify import bundle_runners
    with open_bundle(bundle) as opened:
        runners = bundle_runners(opened)
    assert {name: type(r).__name__ for name, r in runners.items()} == \
        {"encoder": "TrtRunner", "dit": "TrtRunner", "decoder": "TrtRunner"}
    from polygraphy.backend.trt import runner as trt_runner
    assert trt_runner.trt.__version__ == tensorrt_rtx.__version__
