"""What a batch does: the input files, their outputs, and the hidden temporary names of the outputs."""
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
    status: str                  # ok | failed | skipped
    reason: str = ""
    frames: int = 0
    seconds: float = 0.0
    attempts: int = 0
    worker: str = ""

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0


def find_inputs(inputs: list[str], input_list: str | None) -> list[str]:
    """Files from a list file (one path a line, # comments), folders (searched recursively for
    video files) and glob patterns; each once, in a stable order."""
    found = []
    if input_list:
        lines = Path(input_list).read_text().splitlines()
        found += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    for item in inputs:
        if os.path.isdir(item):
            found += sorted(str(p) for p in Path(item).rglob("*")
                            if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS and not p.name.startswith("."))
        elif glob.has_magic(item):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise ValueError(f"{item}: no file matches this pattern")
            found += matches
        else:
            found.append(item)
    unique = list(dict.fromkeys(os.path.abspath(p) for p in found))
    if not unique:
        raise ValueError("no input files: give FILES, a FOLDER, a GLOB or --input-list FILE")
    return unique


def plan_jobs(sources: list[str], out_dir: str, ext: str | None) -> list[FileJob]:
    """Targets keep each source's path below the sources' common folder, so names never collide."""
    root = os.path.commonpath([os.path.dirname(s) for s in sources])
    jobs = []
    for source in sources:
        relative = Path(os.path.relpath(source, root))
        suffix = ext if ext else (relative.suffix or ".mkv")
        jobs.append(FileJob(source, str(Path(out_dir).absolute() / relative.with_suffix(suffix))))
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
