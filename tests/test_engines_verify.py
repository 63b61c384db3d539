"""engines.verify: its comparison and report with cpu bundles (ONNX Runtime against ONNX Runtime), and
its refusal to run GPU engines where there is no GPU. (Running TensorRT engines needs a GPU.)"""
import importlib.util
import os
import shutil

import numpy as np
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


# ---- issue 24: what only a GPU run would show, with fakes where the GPU would be ---------------------

def test_outputs_survive_the_runners_buffer_reuse():
    """TrtRunner fed torch tensors (bf16 bundles) returns each output as a view of one host buffer per
    output name, reused by the next call (polygraphy's resize_or_reallocate and view): what a call
    gave must not change when the next one runs."""
    import torch
    from polygraphy import util
    from polygraphy.datatype import DataType
    from contract.graphs import Graph, Tensor
    from engines.verify import RunnerGraphs

    graph = Graph("decoder", "decoder", "decoder.engine", (Tensor("latents", (1, 48, 1, 2, 2), "bfloat16"),),
                  (Tensor("frames", (4, 4, 4, 3), "uint8"), Tensor("state_out.m", (1, 4), "bfloat16")), {})

    class ReusingRunner:                  # TrtRunner's host side: _get_array_on_cpu, then view
        buffers, calls = {}, 0

        def infer(self, feeds):
            assert feeds["latents"].dtype == torch.bfloat16
            self.calls += 1
            out = {}
            for t in graph.outputs:
                dtype = DataType.from_dtype(np.dtype(t.dtype) if t.dtype != "bfloat16" else torch.bfloat16)
                nbytes = int(np.prod(t.shape)) * dtype.itemsize
                buffer = self.buffers.get(t.name, torch.empty((nbytes,), dtype=torch.uint8))
                self.buffers[t.name] = buffer = util.array.resize_or_reallocate(buffer, (nbytes,))
                out[t.name] = util.array.view(buffer, dtype, t.shape)
                out[t.name].fill_(self.calls)   # the device-to-host copy of this call's result
            return out

    runner = RunnerGraphs({"decoder": ReusingRunner()}, bf16_as_torch=True)
    latents = np.zeros((1, 48, 1, 2, 2), np.float32)
    first, second = runner.run(graph, {"latents": latents}), runner.run(graph, {"latents": latents})
    assert first["frames"].dtype == np.uint8 and first["state_out.m"].dtype == np.float32
    assert (first["frames"] == 1).all() and (first["state_out.m"] == 1).all()
    assert (second["frames"] == 2).all() and (second["state_out.m"] == 2).all()


def test_the_cuda_13_wheels_runtime_is_found_where_polygraphy_looks(tmp_path, monkeypatch):
    """pip's nvidia-cuda-runtime 13 puts libcudart.so.13 in site-packages/nvidia/cu13/lib, which
    Polygraphy (0.53) does not search: use_gpu adds it to LD_LIBRARY_PATH, which it does search."""
    from polygraphy import cuda, util
    from polygraphy.cuda import cuda as polygraphy_cuda
    from engines.verify import use_gpu, wheel_cudart_dirs
    lib = tmp_path / "site-packages" / "nvidia" / "cu13" / "lib"
    lib.mkdir(parents=True)
    (lib / "libcudart.so.13").write_bytes(b"")
    monkeypatch.syspath_prepend(str(tmp_path / "site-packages"))
    monkeypatch.setenv("LD_LIBRARY_PATH", "/nowhere")
    assert wheel_cudart_dirs()[0] == str(lib)
    loaded = []

    class Cudart:                       # what Polygraphy's wrapper() gives: its ctypes handle
        class handle:
            @staticmethod
            def cudaSetDevice(device):
                return 0

    def wrapper():                      # Polygraphy's own search, as Cuda() runs it
        loaded.append(util.find_in_dirs("libcudart.so*", polygraphy_cuda._find_cuda_lib_dirs())[0])
        return Cudart
    monkeypatch.setattr(cuda, "wrapper", wrapper)
    use_gpu(0)
    assert loaded == [str(lib / "libcudart.so.13")]
    assert os.environ["LD_LIBRARY_PATH"] == os.pathsep.join(["/nowhere", str(lib)])


class NotesTheGpu:
    """A runner that notes the GPU current when it is activated (a TrtRunner builds its engine then)."""

    def __init__(self, runner, gpu: dict):
        self.runner, self.gpu, self.activated_on = runner, gpu, None

    def __enter__(self):
        self.activated_on = self.gpu["current"]
        self.runner.__enter__()
        return self

    def __exit__(self, *exc):
        return self.runner.__exit__(*exc)

    def infer(self, feeds):
        return self.runner.infer(feeds)


def test_device_reaches_every_runner(cpu_bundle, export, monkeypatch, capsys):
    """--device 1 with a bundle that looks like TensorRT-RTX engines (its graphs run in ONNX Runtime
    behind runners that note the current GPU): the GPU check, ONNX Runtime's CUDA provider and
    Polygraphy's CUDA runtime (current when the TrtRunners activate) all get GPU 1. Without the CUDA
    runtime library: exit 2, saying what to install."""
    import onnxruntime
    from polygraphy import cuda
    from contract.bundle import open_bundle
    gpu, checked, providers = {"current": 0}, [], []

    class Cudart:
        class handle:
            @staticmethod
            def cudaSetDevice(device):
                gpu["current"] = device.value
                return 0

    class LooksLikeTensorRT:
        def __init__(self, path):
            self.bundle = open_bundle(path)
            self.manifest = {**self.bundle.manifest, "target": {**self.bundle.manifest["target"],
                                                                "flavour": "tensorrt-rtx", "gpu": "rtx5090"}}

        def __getattr__(self, name):
            return getattr(self.bundle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.bundle.close()

    candidates = []

    def runners(bundle):
        made = {name: NotesTheGpu(r, gpu) for name, r in real_bundle_runners(bundle.bundle).items()}
        candidates.extend(made.values())
        return made

    def session(path, options, given, widen):
        providers.append(given)
        return real_graph_session(path, options, ["CPUExecutionProvider"], widen)
    real_bundle_runners, real_graph_session = verify_module.bundle_runners, verify_module.graph_session
    monkeypatch.setattr(verify_module, "open_bundle", LooksLikeTensorRT)
    monkeypatch.setattr(verify_module, "check_gpu", lambda manifest, device: checked.append(device) or "a GPU")
    monkeypatch.setattr(verify_module, "bundle_runners", runners)
    monkeypatch.setattr(verify_module, "graph_session", session)
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(cuda, "wrapper", lambda: Cudart)
    monkeypatch.setenv("LD_LIBRARY_PATH", "")      # use_gpu may add pip's CUDA runtime folder to it

    assert main([str(cpu_bundle), "--export", str(export), "--device", "1"]) == 0
    assert "CUDAExecutionProvider (device 1)" in capsys.readouterr().out
    assert checked == [1]
    assert len(providers) == 4 and all(p[0] == ("CUDAExecutionProvider", {"device_id": 1}) for p in providers)
    assert len(candidates) == 4 and all(r.activated_on == 1 for r in candidates)

    def no_library():
        raise OSError("libcudart.so: cannot open shared object file: No such file or directory")
    monkeypatch.setattr(cuda, "wrapper", no_library)
    assert main([str(cpu_bundle), "--export", str(export), "--device", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Polygraphy's TrtRunner needs the CUDA runtime library") and \
        'pip install "nvidia-cuda-runtime==13.*"' in err and len(err.strip().splitlines()) == 1
