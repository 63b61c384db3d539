"""runtime/backends/rtxcache.py: TensorRT-RTX's runtime cache on disk, with runtime/gpucheck's
stand-in for its IRuntimeCache (the shapes compiled for; a blob it did not write is refused, as
TensorRT-RTX refuses one from another GPU, driver or version). Where the file lives and what invalidates it,
atomic and change-only saves, a damaged or foreign file ignored and rewritten, two processes saving
at once. The TensorRT backend's use of it (load with the bundle, save as Sessions close, none for
full TensorRT) runs in tests/test_gpucheck.py through a whole Session."""
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runtime.backends import rtxcache
from runtime.backends.rtxcache import MAGIC, RuntimeCache, cache_path
from runtime.gpucheck.standin import RuntimeConfig, StandInTensorRT

REPO = Path(__file__).resolve().parents[1]
# runtime/gpucheck/standin.py's runtime cache: the shapes run, serialized; a blob it did not write is refused
FAKE_TRT = StandInTensorRT


class FakeEngine:
    def create_runtime_config(self):
        return RuntimeConfig()


def manifest(**hashes):
    return {"members": {name: {"size": 1, "sha256": h} for name, h in (hashes or {"encoder.engine": "aa"}).items()}}


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SWIFTVR_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_a_cache_per_engines_gpu_and_version_under_the_user_cache(tmp_path, monkeypatch, cache_dir):
    base = cache_path(manifest(), "NVIDIA GeForce RTX 5090", "1.7.1.116")
    assert base.parent == cache_dir / "tensorrt-rtx" and base.name.endswith("-nvidia-geforce-rtx-5090-1.7.1.116.cache")
    others = [cache_path(manifest(**{"encoder.engine": "ab"}), "NVIDIA GeForce RTX 5090", "1.7.1.116"),   # rebuilt
              cache_path(manifest(), "NVIDIA RTX PRO 6000", "1.7.1.116"),
              cache_path(manifest(), "NVIDIA GeForce RTX 5090", "1.8.0.1")]
    assert len({base, *others}) == 4
    monkeypatch.delenv("SWIFTVR_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_path(manifest(), "g", "1").parent == tmp_path / "xdg" / "swiftvr" / "tensorrt-rtx"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_path(manifest(), "g", "1").parent == tmp_path / "home" / ".cache" / "swiftvr" / "tensorrt-rtx"


def test_kernels_compiled_in_one_run_are_there_in_the_next(cache_dir):
    path = cache_path(manifest(), "gpu", "1")
    first = RuntimeCache(FAKE_TRT, FakeEngine(), path)
    config = first.config(FakeEngine())
    assert config.cache is first.cache and config.dynamic_shapes_kernel_specialization_strategy == StandInTensorRT.DynamicShapesKernelSpecializationStrategy.EAGER
    assert not first.save() and not path.exists()             # nothing compiled yet: nothing written
    first.cache.shapes |= {"encoder T=8", "dit F=3"}        # what contexts compile as they run
    assert first.save() and path.read_bytes().startswith(MAGIC)
    assert [p.name for p in path.parent.iterdir()] == [path.name]        # no temporary file left
    written = path.stat().st_mtime_ns
    time.sleep(0.01)
    assert not first.save() and path.stat().st_mtime_ns == written       # unchanged: not rewritten
    second = RuntimeCache(FAKE_TRT, FakeEngine(), path)                  # the next process
    assert second.cache.shapes == {"encoder T=8", "dit F=3"} and not second.save()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "foreign"])
def test_a_damaged_or_foreign_cache_is_ignored_then_rewritten(cache_dir, caplog, damage):
    path = cache_path(manifest(), "gpu", "1")
    good = RuntimeCache(FAKE_TRT, FakeEngine(), path)
    good.cache.shapes.add("decoder n=2")
    good.save()
    data = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"\x00\xff" * 100)
    elif damage == "truncated":
        path.write_bytes(data[:-3])
    else:                   # whole and ours, but TensorRT-RTX refuses it (another GPU, driver, version)
        blob = b"another driver's kernels"
        path.write_bytes(MAGIC + rtxcache.hashlib.sha256(blob).hexdigest().encode() + b"\n" + blob)
    with caplog.at_level(logging.WARNING, logger=rtxcache.__name__):
        cache = RuntimeCache(FAKE_TRT, FakeEngine(), path)
    assert cache.cache.shapes == set()
    assert ("made for another GPU" if damage == "foreign" else "is damaged") in caplog.text
    assert "will be rewritten" in caplog.text
    cache.cache.shapes.add("decoder n=1")
    assert cache.save()
    assert RuntimeCache(FAKE_TRT, FakeEngine(), path).cache.shapes == {"decoder n=1"}


WRITER = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from runtime.backends.rtxcache import RuntimeCache
from runtime.gpucheck.standin import RuntimeConfig, StandInTensorRT
engine = type("Engine", (), {"create_runtime_config": lambda self: RuntimeConfig()})()
cache = RuntimeCache(StandInTensorRT, engine, Path(sys.argv[1]))
for i in range(60):
    cache.cache.shapes = {f"{sys.argv[2]}-{i}" * 2000}
    cache.save()
"""


def test_two_processes_saving_at_once_leave_one_whole_cache(cache_dir):
    """Last writer wins, and a reader only ever sees a whole file of one writer."""
    path = cache_path(manifest(), "gpu", "1")
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), name, str(REPO)])
               for name in ("a", "b")]
    seen = set()
    while any(w.poll() is None for w in writers):
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue
        blob = rtxcache._blob(data)
        assert blob is not None, "a reader saw a partial or mixed file"
        seen.add(blob[9:10])
    assert [w.wait(60) for w in writers] == [0, 0]
    last = RuntimeCache(FAKE_TRT, FakeEngine(), path).cache.shapes
    assert last in ({"a-59" * 2000}, {"b-59" * 2000})
    assert not [p for p in path.parent.iterdir() if p != path]           # no temporary file left
    assert seen <= {b"a", b"b"}
