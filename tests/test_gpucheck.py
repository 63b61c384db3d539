"""python -m runtime.gpucheck --dry: the GPU check's own code, on the CPU with hostcuda.py for CUDA.

This is also the CPU test of the TensorRT backend's whole Session path (bundle loading, execution
contexts with runtime configs, the runtime cache saved as Sessions close and loaded by the next
load, device arrays, row copies, uploads and downloads, states, Sessions in two threads) with
standin.py's engines: frames equal to the torch backend's. What needs a real device is skipped by
the check itself, saying so; the bench check (runtime.bench) is covered by tests/test_bench.py."""
import json
import subprocess
import sys
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_gpu_check_runs_dry_on_the_cpu(tmp_path):
    done = subprocess.run([sys.executable, "-m", "runtime.gpucheck", "--dry", "--out", str(tmp_path), "--chunks", "8",
                           "--only", "cuda_plumbing,tensorrt_session,memory_flat,cudagraph_capture,profile_sharing"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    checks = json.loads((tmp_path / "results.json").read_text())["checks"]
    assert {name: r["status"] for name, r in checks.items()} == {
        "cuda_plumbing": "pass", "tensorrt_session": "pass", "memory_flat": "pass", "cudagraph_capture": "skipped",
        "profile_sharing": "skipped"}
    session = checks["tensorrt_session"]
    assert session["sequential"]["equal"] and session["overlap"]["equal"]
    assert session["runtime_cache"]["written"] and session["runtime_cache"]["loaded_by_next_load"]
    assert "need a GPU" in checks["cudagraph_capture"]["why"]
    assert "needs a GPU" in checks["profile_sharing"]["why"] or "not installed" in checks["profile_sharing"]["why"]
    assert "3 passed, 0 failed, 2 skipped" in (tmp_path / "log.txt").read_text()


def test_a_tensorrt_session_on_device_1_from_another_thread_stays_on_device_1(tmp_path, monkeypatch):
    """Engines deserialized, execution contexts made and every CUDA call issued with the bundle's GPU
    current, whichever thread opens and drives the Session; that thread's own device is left as it was."""
    import numpy as np

    from runtime import Session, TorchSource, load_bundle, load_torch
    from runtime.gpucheck import standin
    from runtime.gpucheck.hostcuda import HOST_DRIVER, HostCudart
    monkeypatch.setenv("SWIFTVR_CACHE_DIR", str(tmp_path / "cache"))
    rt = HostCudart(devices=2)
    monkeypatch.setattr("runtime.backends.cuda.import_cuda", lambda: (rt, HOST_DRIVER))
    torch_model = load_torch(TorchSource(preset="tiny", seed=0), (17, 16), scale=2, clip_len=4, precision="fp32")
    trt = standin.StandInTensorRT(torch_model)
    made_on = []
    create = standin.Engine.create_execution_context
    monkeypatch.setattr(standin.Engine, "create_execution_context",
                        lambda engine, config=None: made_on.append(rt.current()) or create(engine, config))
    loaded_on = []
    deserialize = trt.Runtime.deserialize_cuda_engine
    monkeypatch.setattr(trt.Runtime, "deserialize_cuda_engine",
                        lambda runtime, view: loaded_on.append(rt.current()) or deserialize(runtime, view))
    path = standin.write_standin_bundle(torch_model, trt, tmp_path / "tiny.plan")
    monkeypatch.setattr("runtime.backends.tensorrt.import_tensorrt", lambda flavour: trt)
    model = load_bundle(path, device="cuda:1")
    assert rt.current() == 0 and set(loaded_on) == {1}
    seen = {}

    def replica_thread():
        rt.calls.clear()
        with Session(model, in_flight=2, overlap=True) as session:
            seen["frames"] = len(session.push(np.zeros((9, 16, 17, 3), np.uint8))) + len(session.flush())
        seen["devices"], seen["after"] = {device for _, device in rt.calls}, rt.current()
    worker = threading.Thread(target=replica_thread)
    worker.start()
    worker.join()
    assert seen["frames"] == 9 and set(made_on) == {1} and seen["devices"] == {1} and seen["after"] == 0
