"""The bundle: one file per resolution and GPU target, holding every engine and what runs them.

Layout: an uncompressed POSIX (pax) tar archive.
    manifest.json      first member: what the bundle is (engines/make_bundle.py writes its fields),
                       with "format", "format_version" and "members" {name: {size, sha256}}
    manifest.sha256    sha256 of manifest.json, in `sha256sum` format
    encoder.engine, dit.engine | dit.0.engine ..., decoder.engine   (cpu: the .onnx files + data)

Why tar: `tar xf 360p.plan` gives plain engine files for trtexec --loadEngine and friends, while a
runtime reads each member in place: a member's bytes are contiguous at a 512-byte aligned offset,
so `open_bundle` maps the file and hands out zero-copy views. Writing goes to a temporary name in
the same folder and is renamed into place at the end, so a failed or interrupted write leaves
nothing behind and never a half bundle under the real name.

Standard library only: the runtime imports this module and should not need onnx or TensorRT to
read a manifest.
"""
import hashlib
import io
import json
import mmap
import os
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from .files import _CHUNK, atomic_file, sha256_file

FORMAT = "swiftvr-bundle"
FORMAT_VERSION = 1
READABLE_VERSIONS = (1,)
MANIFEST = "manifest.json"
MANIFEST_SHA = "manifest.sha256"


class BundleError(ValueError):
    pass


class _HashingReader:
    """File wrapper that hashes what tarfile copies out of it."""

    def __init__(self, f):
        self.f, self.sha = f, hashlib.sha256()

    def read(self, n=-1):
        block = self.f.read(n)
        self.sha.update(block)
        return block


def _tarinfo(name: str, size: int, mtime: float) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, int(mtime), 0o644
    return info


def write_bundle(path, manifest: dict, members: list[tuple]) -> dict:
    """Write `manifest` (format fields and member hashes are added) and the member files to `path`.

    members: (name in the bundle, file) or (name, file, sha256 when known) in bundle order; a known
    hash saves one read of the file, and is checked while the file is copied in.
    Returns the manifest as written.
    """
    path = Path(path)
    names = [m[0] for m in members]
    if len(set(names)) != len(names) or {MANIFEST, MANIFEST_SHA} & set(names) or any("/" in n for n in names):
        raise BundleError(f"bad member names {names}: they must be unique plain file names")
    entries = {m[0]: {"size": Path(m[1]).stat().st_size, "sha256": m[2] if len(m) > 2 else sha256_file(Path(m[1]))}
               for m in members}
    members = [(m[0], Path(m[1])) for m in members]
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, **manifest, "members": entries}
    manifest_bytes = json.dumps(manifest, indent=1).encode()
    manifest_sha = f"{hashlib.sha256(manifest_bytes).hexdigest()}  {MANIFEST}\n".encode()

    path.parent.mkdir(parents=True, exist_ok=True)
    now = time.time()
    with atomic_file(path) as f:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name, data in ((MANIFEST, manifest_bytes), (MANIFEST_SHA, manifest_sha)):
                tar.addfile(_tarinfo(name, len(data), now), io.BytesIO(data))
            for name, src in members:
                with open(src, "rb") as s:
                    reader = _HashingReader(s)
                    tar.addfile(_tarinfo(name, entries[name]["size"], now), reader)
                if reader.sha.hexdigest() != entries[name]["sha256"]:
                    raise BundleError(f"{src} does not have the sha256 it was given (changed while "
                                      f"being bundled?)")
    return manifest


def _parse_manifest(path: Path, manifest_bytes: bytes, sha_line: bytes) -> dict:
    try:
        manifest = json.loads(manifest_bytes)
    except ValueError as e:
        raise BundleError(f"{path}: {MANIFEST} is damaged (not JSON: {e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path} is not a SwiftVR bundle (manifest format {manifest.get('format')!r}, "
                          f"expected {FORMAT!r})")
    version = manifest.get("format_version")
    if version not in READABLE_VERSIONS:
        raise BundleError(f"{path} is a {FORMAT} version {version}; this code reads versions "
                          f"{', '.join(map(str, READABLE_VERSIONS))}. Rebuild the bundle with this "
                          f"code (python -m engines) or use a matching release.")
    if sha_line.split()[:1] != [hashlib.sha256(manifest_bytes).hexdigest().encode()]:
        raise BundleError(f"{path}: {MANIFEST} is damaged (its sha256 does not match {MANIFEST_SHA})")
    return manifest


def _read_head(path: Path, f) -> tuple[dict, tarfile.TarFile]:
    try:
        tar = tarfile.open(fileobj=f, mode="r:")
        first = tar.next()
        second = tar.next() if first is not None and first.name == MANIFEST else None
        if first is not None and first.name == MANIFEST and second is None:
            raise BundleError(f"{path} is truncated (it ends after {MANIFEST})")
        if first is None or first.name != MANIFEST or second.name != MANIFEST_SHA:
            raise BundleError(f"{path} is not a SwiftVR bundle: it must start with {MANIFEST} and {MANIFEST_SHA}")
        manifest_bytes, sha_line = tar.extractfile(first).read(), tar.extractfile(second).read()
    except tarfile.TarError as e:
        raise BundleError(f"{path} is not a SwiftVR bundle, or is truncated or damaged ({e})") from None
    if len(manifest_bytes) != first.size or len(sha_line) != second.size:
        raise BundleError(f"{path} is truncated (in its manifest)")
    return _parse_manifest(path, manifest_bytes, sha_line), tar


def read_manifest(path) -> dict:
    """The manifest, checked (format, version, its own sha256); the engines are not read."""
    path = Path(path)
    with open(path, "rb") as f:
        return _read_head(path, f)[0]


@dataclass(frozen=True)
class BundleMember:
    name: str
    offset: int   # of the member's data in the file
    size: int
    sha256: str


class Bundle:
    """An open bundle: the manifest, and each member's bytes as a zero-copy view of the mapped file."""

    def __init__(self, path: Path, manifest: dict, members: dict[str, BundleMember], f, mapped):
        self.path, self.manifest, self.members = path, manifest, members
        self._file, self._map = f, mapped

    def view(self, name: str) -> memoryview:
        """The member's bytes, in place (release the view before close())."""
        m = self.members[name]
        return memoryview(self._map)[m.offset:m.offset + m.size]

    def read(self, name: str) -> bytes:
        return bytes(self.view(name))

    def close(self) -> None:
        try:
            self._map.close()
        except BufferError:
            raise BufferError("release the memoryviews from Bundle.view() before closing the bundle") from None
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_bundle(path, verify=True) -> Bundle:
    """Open a bundle, checking its format version, its layout against the manifest and (verify=True)
    every member's sha256. Any problem raises BundleError naming it."""
    path = Path(path)
    f = open(path, "rb")
    try:
        manifest, tar = _read_head(path, f)
        file_size = os.fstat(f.fileno()).st_size
        want = manifest.get("members", {})
        found, end = {}, 0
        try:
            for info in tar.getmembers()[2:]:   # after the manifest and its hash, read already
                if info.name in found or not info.isfile():
                    raise BundleError(f"{path}: unexpected tar entry {info.name!r}")
                found[info.name] = info
                end = info.offset_data + info.size
        except tarfile.TarError as e:
            where = f"after the member {list(found)[-1]!r}" if found else "right after its manifest"
            raise BundleError(f"{path} is truncated or damaged {where} ({e}); copy or build it again") from None
        missing = [n for n in want if n not in found]
        extra = [n for n in found if n not in want]
        if missing:
            raise BundleError(f"{path} is truncated or damaged: members {missing} listed in the manifest are "
                              f"missing (file is {file_size} bytes)")
        if extra:
            raise BundleError(f"{path}: members {extra} are not in the manifest")
        # a tar ends with two zero blocks after the last member's 512-byte padded data
        if file_size < -(-end // 512) * 512 + 1024:
            raise BundleError(f"{path} is truncated: {file_size} bytes, the archive needs at least "
                              f"{-(-end // 512) * 512 + 1024}")
        members = {}
        for name, entry in want.items():
            info = found[name]
            if info.size != entry["size"]:
                raise BundleError(f"{path}: member {name} is {info.size} bytes, the manifest says {entry['size']}")
            members[name] = BundleMember(name, info.offset_data, info.size, entry["sha256"])
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        bundle = Bundle(path, manifest, members, f, mapped)
        if verify:
            for m in members.values():
                h = hashlib.sha256()
                with bundle.view(m.name) as v:
                    for i in range(0, m.size, _CHUNK):
                        h.update(v[i:i + _CHUNK])
                if h.hexdigest() != m.sha256:
                    bundle.close()
                    raise BundleError(f"{path}: member {m.name} is damaged (sha256 {h.hexdigest()[:16]}... "
                                      f"!= {m.sha256[:16]}... in the manifest)")
        return bundle
    except BaseException:
        if not f.closed:
            f.close()
        raise
