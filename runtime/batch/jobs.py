"""What a batch does: the input files, their outputs, and the hidden temporary names of the outputs."""
import errno
import glob
import os
from dataclasses import dataclass, field
from pathlib import Path

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".mov", ".webm", ".avi", ".ts", ".m2ts", ".mts", ".flv", ".m4v", ".mpg",
                    ".mpeg", ".wmv", ".nut")
TEMP_MARK = ".batch-"          # hidden temporary outputs: .<stem>.batch-<pid><ext>


@dataclass
class FileJob:
    source: str
    target: str
    attempts: int = 0
    deaths: list = field(default_factory=list)     # "worker <pid>@<host> died at frame N"


@dataclass
class FileResult:
    source: str
    target: str
    status: str                  # ok | failed | skipped | stopped (the batch was stopped first)
    reason: str = ""
    frames: int = 0
    seconds: float = 0.0
    attempts: int = 0
    worker: str = ""

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0


def find_inputs(inputs: list[str], input_list: str | None, *, exclude: list[str] = (),
                skipped: list[str] | None = None) -> list[str]:
    """Files from a list file (one path a line, # comments), folders (searched recursively for
    video files) and glob patterns; each once, in a stable order. Folders and patterns leave out
    what lies in `exclude` (the output folder, the report: a batch writing into its input folder
    must not take its outputs for inputs). Links that lead nowhere (a loop, a missing file) and
    linked folders (not followed) are left out too, each with a line in `skipped`."""
    found = []
    exclude = [os.path.abspath(p) for p in exclude]
    skipped = [] if skipped is None else skipped
    if input_list:
        lines = Path(input_list).read_text().splitlines()
        found += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    for item in inputs:
        if os.path.isdir(item):
            found += _videos_in(item, exclude, skipped)
        elif glob.has_magic(item):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise ValueError(f"{item}: no file matches this pattern")
            found += [m for m in matches if not _inside(m, exclude) and _usable(m, skipped)]
        else:
            found.append(item)
    unique = list(dict.fromkeys(os.path.abspath(p) for p in found))
    if not unique:
        raise ValueError("no input files: give FILES, a FOLDER, a GLOB or --input-list FILE")
    return unique


def _inside(path: str, folders: list[str]) -> bool:
    path = os.path.abspath(path)
    return any(path == f or path.startswith(f.rstrip(os.sep) + os.sep) for f in folders)


def _usable(path: str, skipped: list[str]) -> bool:
    """A file (through any links); a link that leads nowhere is noted in `skipped`."""
    if os.path.islink(path) and not os.path.exists(path):
        try:
            os.stat(path)
        except OSError as e:
            why = "a symbolic link loop" if e.errno == errno.ELOOP else "a symbolic link to a missing file"
            skipped.append(f"{path}: {why}")
        return False
    return os.path.isfile(path)


def _videos_in(folder: str, exclude: list[str], skipped: list[str]) -> list[str]:
    found = []
    for root, dirs, files in os.walk(folder):        # linked folders are listed, not entered
        for name in sorted(dirs):
            if os.path.islink(os.path.join(root, name)):
                skipped.append(f"{os.path.join(root, name)}: a symbolic link to a folder (not followed)")
        dirs[:] = sorted(d for d in dirs if not _inside(os.path.join(root, d), exclude))
        for name in sorted(files):
            path = os.path.join(root, name)
            if _usable(path, skipped) and Path(name).suffix.lower() in VIDEO_EXTENSIONS \
                    and not name.startswith(".") and not _inside(path, exclude):
                found.append(path)
    return found


def plan_jobs(sources: list[str], out_dir: str, ext: str | None) -> list[FileJob]:
    """Targets keep each source's path below the sources' common folder. Refused (ValueError): two
    sources with one target (a.mp4 and a.mkv with --ext .mkv), and a target that is a source."""
    root = os.path.commonpath([os.path.dirname(s) for s in sources])
    jobs, by_target = [], {}
    for source in sources:
        relative = Path(os.path.relpath(source, root))
        suffix = ext if ext else (relative.suffix or ".mkv")
        job = FileJob(source, str(Path(out_dir).absolute() / relative.with_suffix(suffix)))
        if job.target in by_target:
            raise ValueError(f"{by_target[job.target]} and {source} would both be written to {job.target}: "
                             f"restore one of them in another batch, or into another --out")
        by_target[job.target] = source
        jobs.append(job)
    inputs = set(sources)
    for job in jobs:
        if job.target in inputs:
            raise ValueError(f"the output of {job.source} would replace the input {job.target}: "
                             f"give another --out (or --ext)")
    return jobs


def temp_target(target: str, pid: int) -> str:
    directory, name = os.path.split(target)
    stem, ext = os.path.splitext(name)
    return os.path.join(directory, f".{stem}{TEMP_MARK}{pid}{ext}")


def remove_temporaries(target: str, pid: int | None = None) -> list[str]:
    """The hidden files a worker (any, or the one with `pid`) left while writing `target`:
    .<stem>.batch-<pid><ext> and the VideoWriter's ..<stem>.batch-<pid>.partial-<pid2><ext>."""
    directory, name = os.path.split(target)
    stem, _ = os.path.splitext(name)
    who = str(pid) if pid is not None else "*"
    patterns = [f".{glob.escape(stem)}{TEMP_MARK}{who}.*", f"..{glob.escape(stem)}{TEMP_MARK}{who}.partial-*"]
    removed = []
    for pattern in patterns:
        for path in glob.glob(os.path.join(glob.escape(directory), pattern)):
            os.remove(path)
            removed.append(path)
    return removed
