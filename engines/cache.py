"""Engine build cache: one entry per engine, keyed by what the engine is made from.

The key is the sha256 of a canonical JSON of: the graph's content hash (its .onnx and external
data), its export.json entry (I/O, dynamic ranges), the TensorRT flavour and version, the target
compute capabilities and every build setting. File dates play no part. An entry is two files:
<key>.engine and <key>.json (the build record, written last: it is what makes the entry valid).
A hit re-hashes the engine file against the record, so a damaged entry is rebuilt, never bundled.
"""
import hashlib
import json
from pathlib import Path

from contract.files import atomic_write, sha256_file

DEFAULT_CACHE_DIR = Path(__file__).resolve().parent / ".cache"


def cache_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class EngineCache:
    def __init__(self, directory=DEFAULT_CACHE_DIR):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        ignore = self.dir / ".gitignore"   # engines are build outputs, never committed
        if not ignore.exists():
            ignore.write_text("# created by engines/cache.py\n*\n")

    def engine_path(self, key: str) -> Path:
        return self.dir / f"{key}.engine"

    def record_path(self, key: str) -> Path:
        return self.dir / f"{key}.json"

    def lookup(self, key: str) -> dict | None:
        """The build record of a valid entry, or None (missing, partial or damaged)."""
        record_path, engine_path = self.record_path(key), self.engine_path(key)
        if not (record_path.is_file() and engine_path.is_file()):
            return None
        try:
            record = json.loads(record_path.read_text())
        except ValueError:
            return None
        if engine_path.stat().st_size != record.get("size") or sha256_file(engine_path) != record.get("sha256"):
            return None
        return record

    def store(self, key: str, record: dict) -> None:
        """Commit an entry whose engine file is already at engine_path(key)."""
        atomic_write(self.record_path(key), json.dumps(record, indent=1).encode())
