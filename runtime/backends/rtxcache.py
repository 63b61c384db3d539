"""TensorRT-RTX's runtime cache on disk: the kernels it compiles at run time, kept between runs.

TensorRT-RTX builds engines ahead of time without a GPU and compiles their kernels for the GPU it
finds when a context is created, and (dynamic shapes) a specialised kernel set for each new shape.
Without a cache every process pays that again. One cache serves a loaded bundle: every execution
context of every Session gets a runtime config holding it, with kernels specialised EAGERly (at the
first call with a shape, not in the background while slower fallback kernels run), so that once
every shape a stream uses has run (runtime.throughput's warm-up does that) nothing compiles again.

Where: $SWIFTVR_CACHE_DIR, else $XDG_CACHE_HOME/swiftvr, else ~/.cache/swiftvr, in
`tensorrt-rtx/<engines key>-<GPU>-<TensorRT-RTX version>.cache`. Not beside the bundle: bundles are
often read-only or shared by machines with other GPUs and drivers. The engines key is the sha256 of
the bundle's member hashes, so a rebuilt bundle gets a new cache; TensorRT-RTX checks the rest itself
(GPU, driver, CUDA, its own version) and refuses a blob that does not fit: the cache then starts
empty and the file is rewritten. Clearing it (`rm -r ~/.cache/swiftvr/tensorrt-rtx`) only costs
compilation time.

The file is the blob behind a header with its sha256, so a damaged file is found before TensorRT
reads it (ignored, then rewritten). It is loaded when the bundle loads and saved, when it changed,
as each Session closes. Writes go to a temporary file renamed into place (contract.files), so a
reader only ever sees a whole file. Two processes saving the same cache: the last rename wins, with
no lock: each file is complete and valid on its own, and the loser's kernels only compile again next
time, while a lock file would make one process wait on another (or on a dead one's stale lock) and
is unreliable on network file systems.
"""
import hashlib
import json
import logging
import os
import re
import threading
from pathlib import Path

from contract.files import atomic_write

MAGIC = b"swiftvr tensorrt-rtx runtime cache 1\n"
_SAVING = threading.Lock()       # one writer at a time in this process (the temporary name is per process)
log = logging.getLogger(__name__)


def cache_root() -> Path:
    if os.environ.get("SWIFTVR_CACHE_DIR"):
        return Path(os.environ["SWIFTVR_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "swiftvr"


def cache_path(manifest: dict, gpu: str, version: str) -> Path:
    """The cache file of a bundle's engines (manifest "members") on a GPU (its name) with a TensorRT-RTX version."""
    members = json.dumps({name: m["sha256"] for name, m in manifest["members"].items()}, sort_keys=True)
    key = hashlib.sha256(members.encode()).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", gpu).strip("-").lower()
    return cache_root() / "tensorrt-rtx" / f"{key}-{slug}-{version}.cache"


def _blob(data: bytes) -> bytes | None:
    """The blob of a cache file, or None when the file is not one of ours or is damaged."""
    head, _, rest = data.partition(b"\n")
    digest, _, blob = rest.partition(b"\n")
    if head + b"\n" != MAGIC or hashlib.sha256(blob).hexdigest().encode() != digest:
        return None
    return blob


class RuntimeCache:
    """One loaded bundle's IRuntimeCache, read from and written back to `path`."""

    def __init__(self, trt, engine, path: Path):
        self.trt, self.path = trt, Path(path)
        self.cache = engine.create_runtime_config().create_runtime_cache()
        self.saved = self._load()        # sha256 of what the file holds; None: the file must be rewritten

    def _serialized(self) -> tuple[bytes, str]:
        blob = bytes(memoryview(self.cache.serialize()))
        return blob, hashlib.sha256(blob).hexdigest()

    def _load(self) -> str | None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return self._serialized()[1]     # nothing to write until something is compiled
        except OSError as e:
            log.warning("cannot read the TensorRT-RTX runtime cache %s (%s): kernels compile again", self.path, e)
            return None
        blob = _blob(data)
        if blob is None:
            log.warning("the TensorRT-RTX runtime cache %s is damaged: ignored, it will be rewritten", self.path)
            return None
        if not self.cache.deserialize(blob):
            log.warning("the TensorRT-RTX runtime cache %s was made for another GPU, driver or TensorRT-RTX: "
                        "ignored, it will be rewritten", self.path)
            return None
        return hashlib.sha256(blob).hexdigest()

    def config(self, engine):
        """A runtime config for `engine`'s execution contexts: this cache, eager specialisation."""
        config = engine.create_runtime_config()
        if not config.set_runtime_cache(self.cache):
            raise RuntimeError("TensorRT-RTX refused the runtime cache for an execution context")
        config.dynamic_shapes_kernel_specialization_strategy = \
            self.trt.DynamicShapesKernelSpecializationStrategy.EAGER
        return config

    def save(self) -> bool:
        """Write the cache if it changed since it was loaded or last saved; False when nothing was written."""
        with _SAVING:
            blob, digest = self._serialized()
            if digest == self.saved:
                return False
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(self.path, MAGIC + digest.encode() + b"\n" + blob)
            except OSError as e:
                log.warning("cannot write the TensorRT-RTX runtime cache %s (%s); set SWIFTVR_CACHE_DIR to a "
                            "writable folder", self.path, e)
            self.saved = digest          # tried: not again for the same kernels
            return self.path.is_file()
