"""Where an output goes, and what writing it must never destroy.

The rules are ffmpeg's:
  * an output that is an input (the same file, a hard or symbolic link to it, or an image
    pattern that would write over input images) is refused, always;
  * an existing output is refused unless the caller allows overwriting (-y/--overwrite);
  * a video file is written under a hidden temporary name beside the target and renamed onto it
    when complete, so an old file stays as it was until then. The temporary name carries the
    process id: a run killed outright (SIGKILL) leaves one behind, and the next run writing
    beside it removes those of processes that no longer exist.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .info import PRINTF_PATTERN, VideoError, classify, _expand_printf_pattern, _list_image_directory

# ffmpeg numbers image sequences from 1; a folder output gets this pattern inside it.
FOLDER_PATTERN = "%08d.png"


def image_pattern(target: str) -> str:
    """The printf pattern an image-sequence output writes: frames/%05d.png, or folder/%08d.png."""
    if PRINTF_PATTERN.search(os.path.basename(target)):
        return target
    return os.path.join(target, FOLDER_PATTERN)


def pattern_files(pattern: str) -> list[Path]:
    """The files that exist under an image pattern, in frame order (none if its folder is missing)."""
    if not os.path.isdir(os.path.dirname(pattern) or "."):
        return []
    return _expand_printf_pattern(pattern)


def frame_number(pattern: str, path: Path) -> int:
    name = os.path.basename(pattern)
    number = PRINTF_PATTERN.search(name)
    return int(re.fullmatch(re.escape(name[: number.start()]) + r"(\d+)" + re.escape(name[number.end() :]), path.name)[1])


def input_files(source: str) -> list[Path]:
    """The files a source reads (none for pipes and URLs)."""
    kind = classify(source)
    if kind == "file" and os.path.exists(source):
        return [Path(source)]
    if kind == "images":
        try:
            return _list_image_directory(Path(source)) if os.path.isdir(source) else pattern_files(source)
        except VideoError:
            return []
    return []


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)  # same inode: the same path, a hard link or a symbolic link
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_target(source: str, target: str, *, overwrite: bool, container_format: str | None = None) -> None:
    """Refuse an output that is the input, and an existing one unless `overwrite`."""
    kind = classify(target, writing=True, container_format=container_format)
    if kind in ("pipe", "url"):
        return
    inputs = input_files(source)
    if kind == "file":
        if any(_same_file(Path(target), path) for path in inputs):
            raise VideoError(f"the output {target} is the input; write to another name", source=target)
        if os.path.lexists(target) and not overwrite:
            raise VideoError(f"the output {target} exists; pass -y/--overwrite to replace it "
                             "(it is kept until the new file is complete)", source=target)
        return
    pattern = image_pattern(target)
    existing = pattern_files(pattern)
    touched = [path for path in existing if any(_same_file(path, own) for own in inputs)]
    if touched:
        raise VideoError(f"the output {pattern} would write over the input's images (e.g. {touched[0]}); "
                         "write to another folder or pattern", source=target)
    if existing and not overwrite:
        raise VideoError(f"the output {pattern} already holds {len(existing)} images (e.g. {existing[0]}); pass "
                         "-y/--overwrite to replace them (old images past the new last frame are removed)",
                         source=target)


def remove_images_after(pattern: str, count: int) -> None:
    """After writing frames 1..count, remove older images of the pattern numbered past them, so the
    folder holds one sequence, not a new one mixed with the tail of an old one."""
    for path in pattern_files(pattern):
        if frame_number(pattern, path) > count:
            path.unlink(missing_ok=True)


# -- temporary files --------------------------------------------------------------------------


def partial_path(target: str) -> str:
    """.<stem>.partial-<pid><ext> beside the target: hidden, and owned by this process."""
    directory, name = os.path.split(os.path.abspath(target))
    stem, ext = os.path.splitext(name)
    return os.path.join(directory, f".{stem}.partial-{os.getpid()}{ext}")


def remove_stale_partials(target: str) -> list[str]:
    """Delete the temporary files of earlier runs writing `target` whose process is gone."""
    directory, name = os.path.split(os.path.abspath(target))
    stem, ext = os.path.splitext(name)
    stale = re.compile(re.escape(f".{stem}.partial-") + r"(\d+)" + re.escape(ext) + "$")
    removed = []
    if not os.path.isdir(directory):
        return removed
    for entry in os.listdir(directory):
        match = stale.match(entry)
        if match and not _process_alive(int(match[1])):
            os.remove(os.path.join(directory, entry))
            removed.append(entry)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own name from an earlier, killed process that had our pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True
