"""python -m runtime.gpucheck --dry: the GPU check's own code, on the CPU with hostcuda.py for CUDA.

This is also the CPU test of the TensorRT backend's whole Session path (bundle loading, execution
contexts with runtime configs, the runtime cache saved as Sessions close and loaded by the next
load, device arrays, row copies, uploads and downloads, states, Sessions in two threads) with
standin.py's engines: frames equal to the torch backend's. What needs a real device is skipped by
the check itself, saying so; the bench check (runtime.bench) is covered by tests/test_bench.py."""
import json
import subprocess
import sys
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
