"""Files every stage writes or checks the same way: content hashes and all-or-nothing writes.

Standard library only. A write goes to a temporary name in the target's folder and is renamed onto
it once complete and synced, so a failed or interrupted write never leaves a half file under the
real name (the temporary file is removed too).
"""
import contextlib
import hashlib
import os
from pathlib import Path

_CHUNK = 1 << 24


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def temp_path(path: Path, pid: int) -> Path:
    """Where process `pid` writes `path` before renaming it into place."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{pid}")


@contextlib.contextmanager
def atomic_file(path):
    """A binary file written under a temporary name and renamed to `path` once complete and synced:
    all or nothing (the temporary file goes if anything fails)."""
    path = Path(path)
    tmp = temp_path(path, os.getpid())
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path, data) -> None:
    """Write bytes (or any buffer) under a temporary name, then rename: all or nothing."""
    with atomic_file(path) as f:
        f.write(data)
