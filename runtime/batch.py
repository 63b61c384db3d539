"""Restore many files on a pool of Ray actors, each holding one loaded bundle (load once, many files).

  python -m runtime.batch --engine engines/1080p.plan archive/ --out restored/
  python -m runtime.batch --engine B --input-list files.txt --out restored/ --address auto --workers 8
  python -m runtime.batch --engine B "clips/**/*.mov" --out restored/ --address ray://head:10001

Each file is restored exactly as `runtime.stream` restores it (the same restore_video, the same
frames, exact rate, colour tags and audio) into OUT, keeping its path relative to the inputs'
common folder. Outputs appear atomically: a worker writes a hidden temporary name and renames it
when the file is complete and undamaged. A worker that dies mid-file leaves nothing behind (its
temporary files are removed by name: they carry its process id) and the file goes to another
worker, at most --retries times. A file that is damaged or cannot be decoded fails alone.
A re-run skips files whose output exists (complete by construction), so a killed batch resumes.

Without --address a local Ray cluster is started for this run, with no dashboard, jobs API or
Ray Client server. Ray's endpoints must never face an untrusted network (README).
Exit status: 0 every file ok or skipped; 1 some file failed; 2 bad arguments.
"""
import argparse
import dataclasses
import glob
import json
import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from .errors import RuntimeSetupError

EXIT_FAILED, EXIT_USAGE = 1, 2
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".mov", ".webm", ".avi", ".ts", ".m2ts", ".mts", ".flv", ".m4v", ".mpg",
                    ".mpeg", ".wmv", ".nut")
TEMP_MARK = ".batch-"          # hidden temporary outputs: .<stem>.batch-<pid><ext>


# ---- what to do ----------------------------------------------------------------------------------

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


# ---- one file, on a worker -----------------------------------------------------------------------

def restore_file(model, source: str, target: str, *, codec=None, crf=None, pix_fmt=None, resize=None,
                 in_flight=None, on_frames=None) -> dict:
    """`runtime.stream --engine B SOURCE -o TARGET` with a loaded model, written to a temporary
    name and renamed onto TARGET only when complete. A damaged input raises (VideoError) and
    leaves no output. on_frames(n): called as frames are written (progress, test hooks)."""
    from .resize import output_sample_aspect
    from .restore_video import check_input_size, restore_video
    from .video import VideoError, VideoReader, VideoWriter

    class CountingWriter(VideoWriter):
        def write(self, frames, times=None):
            super().write(frames, times)
            if on_frames:
                on_frames(len(frames))

    spec = model.spec
    os.makedirs(os.path.dirname(target), exist_ok=True)
    temp = temp_target(target, os.getpid())
    with VideoReader(source) as reader:
        info = reader.info
        check_input_size(model, info.width, info.height, resize)
        size = (info.width, info.height)
        resized = resize if resize and size != tuple(spec.input_size) else None
        out_info = dataclasses.replace(info, sample_aspect_ratio=output_sample_aspect(
            size, info.sample_aspect_ratio, spec.output_size, resized))
        writer = CountingWriter(temp, out_info, width=spec.output_size[0], height=spec.output_size[1], codec=codec,
                                crf=crf, pix_fmt=pix_fmt, audio_from=reader if info.has_audio else None)
        in_flight = in_flight or model.default_in_flight
        result = restore_video(model, reader, writer, in_flight=in_flight, resize=resized or False, progress=False)
    if result.input_error or result.interrupted:
        # restore_video keeps a playable partial output for an interactive user; a batch wants
        # all or nothing, so that a re-run does not take the cut file for a finished one.
        os.remove(temp)
        raise VideoError(result.input_error or "interrupted", source=source)
    os.replace(temp, target)
    return {"frames": result.frames_out, "seconds": result.seconds}


class RestoreWorker:
    """A Ray actor (made with ray.remote in start_worker): one loaded model, one file at a time.
    write_delay: a test hook only: seconds to sleep after each written batch, so that a test can
    kill a worker in the middle of a file."""

    def __init__(self, engine: str, backend=None, device=None, threads=None, options=None, write_delay=0.0):
        import socket
        from .load import load_bundle
        self.model = load_bundle(engine, backend, device=device, threads=threads)
        self.options = options or {}
        self.write_delay = write_delay
        self.frames_done = 0
        self.name = f"{os.getpid()}@{socket.gethostname()}"

    def hello(self) -> dict:
        return {"pid": os.getpid(), "name": self.name, "model": self.model.spec.describe()}

    def progress(self) -> int:
        return self.frames_done

    def restore(self, source: str, target: str) -> dict:
        from .video import VideoError
        self.frames_done = 0

        def on_frames(n):
            self.frames_done += n
            if self.write_delay:
                time.sleep(self.write_delay)
        try:
            done = restore_file(self.model, source, target, on_frames=on_frames, **self.options)
        except (VideoError, RuntimeSetupError, ValueError, OSError) as e:
            # The file's own fault: reported, not retried (another worker would fail the same way).
            remove_temporaries(target, os.getpid())
            return {"error": str(e).splitlines()[0], "worker": self.name}
        return {**done, "worker": self.name}


# ---- the pool, on the driver ---------------------------------------------------------------------

@dataclass
class WorkerSlot:
    actor: object
    pid: int | None = None
    name: str = ""
    job: FileJob | None = None
    ref: object = None           # the ObjectRef of the restore in progress
    frames: int = 0              # frames of the current file written so far (polled)


class BatchRun:
    """Drives the pool: a queue of files, one at a time per worker, retries after a worker dies.
    `slots` is public so that callers (and tests) can see which worker holds which file."""

    def __init__(self, engine: str, jobs: list[FileJob], *, workers: int, gpus_per_worker: float = 0,
                 cpus_per_worker: float = 1, retries: int = 2, backend=None, options=None, write_delay=0.0,
                 progress: bool | None = None):
        self.engine, self.jobs, self.retries = str(Path(engine).absolute()), jobs, retries
        self.gpus, self.cpus = gpus_per_worker, cpus_per_worker
        # ONNX Runtime on the CPU: as many threads as the cores Ray gave the actor, not all the node's.
        threads = max(1, int(cpus_per_worker)) if not gpus_per_worker else None
        self.worker_args = (self.engine, backend, None, threads, options or {}, write_delay)
        self.workers, self.progress = workers, progress
        self.slots: list[WorkerSlot] = []
        self.results: list[FileResult] = []
        self.events: list[str] = []      # what happened (deaths, retries), for the summary
        self.seconds = self.ready_seconds = 0.0

    def start_worker(self) -> WorkerSlot:
        import ray
        remote = ray.remote(RestoreWorker).options(num_cpus=self.cpus, num_gpus=self.gpus, max_concurrency=2)
        return WorkerSlot(remote.remote(*self.worker_args))

    def run(self) -> list[FileResult]:
        import ray
        from ray.exceptions import RayActorError, RayTaskError
        from tqdm import tqdm

        start = time.perf_counter()
        todo = deque()
        for job in self.jobs:
            remove_temporaries(job.target)       # left by an earlier, killed batch
            if os.path.exists(job.target):
                self.results.append(FileResult(job.source, job.target, "skipped", "output exists"))
            else:
                todo.append(job)
        disable = None if self.progress is None else not self.progress
        files_bar = tqdm(total=len(self.jobs), initial=len(self.results), unit="file", desc="files", position=0,
                         disable=disable, dynamic_ncols=True)
        frames_bar = tqdm(unit="frame", desc="frames", position=1, disable=disable, dynamic_ncols=True)
        self.slots = [self.start_worker() for _ in range(min(self.workers, len(todo)))]
        # Workers whose model failed to load are not retried: every one would fail the same way.
        for slot in self.slots:
            try:
                hello = ray.get(slot.actor.hello.remote())
            except RayTaskError as e:
                self.shutdown()
                raise RuntimeSetupError(f"a worker could not load {self.engine}: {_cause(e)}") from None
            slot.pid, slot.name = hello["pid"], hello["name"]
        self.ready_seconds = time.perf_counter() - start     # loading the workers' models
        try:
            while todo or any(s.job for s in self.slots):
                for slot in self.slots:
                    if slot.job is None and todo:
                        slot.job, slot.frames = todo.popleft(), 0
                        slot.job.attempts += 1
                        slot.ref = slot.actor.restore.remote(slot.job.source, slot.job.target)
                refs = [s.ref for s in self.slots if s.job]
                ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0.5)
                for slot in [s for s in self.slots if s.job and s.ref in ready]:
                    job, slot.job = slot.job, None
                    frames_bar.update(-slot.frames)      # counted again from the result below
                    try:
                        done = ray.get(slot.ref)
                    except RayActorError:
                        self._worker_died(slot, job, todo)
                        continue
                    except RayTaskError as e:            # a bug in a worker, not a dead worker
                        done = {"error": f"worker error: {_cause(e)}", "worker": slot.name}
                    if "error" in done:
                        self.results.append(FileResult(job.source, job.target, "failed", done["error"],
                                                       attempts=job.attempts, worker=done["worker"]))
                    else:
                        frames_bar.update(done["frames"])
                        self.results.append(FileResult(job.source, job.target, "ok", "; ".join(job.deaths),
                                                       done["frames"], done["seconds"], job.attempts, done["worker"]))
                    files_bar.update(1)
                self._poll_frames(frames_bar)
        finally:
            files_bar.close()
            frames_bar.close()
            self.shutdown()
        self.seconds = time.perf_counter() - start
        order = {job.source: i for i, job in enumerate(self.jobs)}
        self.results.sort(key=lambda r: order[r.source])
        return self.results

    def _worker_died(self, slot: WorkerSlot, job: FileJob, todo: deque) -> None:
        removed = remove_temporaries(job.target, slot.pid)
        note = f"worker {slot.name} died at frame {slot.frames}" + (" (its partial output removed)" if removed else "")
        job.deaths.append(note)
        self.events.append(f"{Path(job.source).name}: {note}")
        if job.attempts > self.retries:
            self.results.append(FileResult(job.source, job.target, "failed",
                                           f"{job.attempts} workers died on it: " + "; ".join(job.deaths),
                                           attempts=job.attempts))
        else:
            todo.appendleft(job)            # next free worker; the dead one is being replaced
        fresh = self.start_worker()
        slot.actor, slot.ref = fresh.actor, None
        slot.pid, slot.name = None, "(starting)"
        import ray
        hello = ray.get(slot.actor.hello.remote())
        slot.pid, slot.name = hello["pid"], hello["name"]

    def _poll_frames(self, frames_bar) -> None:
        import ray
        busy = [s for s in self.slots if s.job]
        refs = [s.actor.progress.remote() for s in busy]
        for slot, ref in zip(busy, refs):
            try:
                frames = ray.get(ref, timeout=5)
            except Exception:          # a dying worker: its restore call will say so
                continue
            frames_bar.update(frames - slot.frames)
            slot.frames = frames

    def shutdown(self) -> None:
        import ray
        for slot in self.slots:
            ray.kill(slot.actor)
        self.slots = []


def _cause(error) -> str:
    cause = getattr(error, "cause", None) or error
    return str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__


# ---- report --------------------------------------------------------------------------------------

def summary_table(results: list[FileResult], events: list[str], seconds: float) -> str:
    rows = [("file", "status", "frames", "fps", "seconds", "tries", "reason")]
    for r in results:
        rows.append((Path(r.source).name, r.status, str(r.frames), f"{r.fps:.1f}", f"{r.seconds:.1f}",
                     str(r.attempts), r.reason))
    widths = [max(len(row[i]) for row in rows) for i in range(6)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row[:6], widths)) + "  " + row[6] for row in rows]
    count = {s: sum(r.status == s for r in results) for s in ("ok", "failed", "skipped")}
    frames = sum(r.frames for r in results)
    lines.append(f"{count['ok']} ok, {count['failed']} failed, {count['skipped']} skipped; {frames} frames in "
                 f"{seconds:.1f} s ({frames / seconds if seconds else 0:.1f} frames/s, "
                 f"{count['ok'] / seconds if seconds else 0:.2f} files/s)")
    lines += [f"event: {e}" for e in events]
    return "\n".join(lines)


def report(run: BatchRun) -> dict:
    ok = [r for r in run.results if r.status == "ok"]
    return {"engine": run.engine, "workers": run.workers, "gpus_per_worker": run.gpus, "seconds": round(run.seconds, 3),
            "workers_ready_seconds": round(run.ready_seconds, 3),
            "files_per_second": round(len(ok) / run.seconds, 4) if run.seconds else 0,
            "counts": {s: sum(r.status == s for r in run.results) for s in ("ok", "failed", "skipped")},
            "events": run.events,
            "files": [{**dataclasses.asdict(r), "fps": round(r.fps, 3), "seconds": round(r.seconds, 3)}
                      for r in run.results]}


# ---- command line --------------------------------------------------------------------------------

def connect_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Join a cluster (address "auto" or "ray://host:10001"), or start a private local one with no
    dashboard, jobs API or Ray Client server. Ray's own gRPC ports still listen on every interface
    (Ray offers no localhost-only switch): firewall them (README, "Scale out on Ray")."""
    import ray
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m runtime.batch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="*", help="video files, folders (searched recursively) or glob patterns")
    p.add_argument("--input-list", metavar="FILE", help="a file with one input path a line")
    p.add_argument("--engine", required=True, help="bundle file or export folder, readable on every node")
    p.add_argument("--backend", help="tensorrt, onnxruntime or torch (default: from the bundle)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (shared by the nodes)")
    p.add_argument("--ext", help="output extension, e.g. .mkv (default: the input's)")
    p.add_argument("--address", help="Ray cluster: auto, ray://HOST:10001 (default: a local cluster for this run)")
    p.add_argument("--workers", type=int, help="actors, one loaded model each (default: as many as fit)")
    p.add_argument("--gpus-per-worker", type=float, help="Ray num_gpus per actor (default: 1 if the cluster "
                                                         "has GPUs, else 0)")
    p.add_argument("--cpus-per-worker", type=float, default=1, help="Ray num_cpus per actor (default 1)")
    p.add_argument("--retries", type=int, default=2, help="times a file is retried after its worker died (default 2)")
    p.add_argument("--report", metavar="FILE.json", help="JSON report (default: OUT/batch-report.json)")
    p.add_argument("--codec", help="video encoder (as runtime.stream)")
    p.add_argument("--crf", type=int, help="constant quality (as runtime.stream)")
    p.add_argument("--pix-fmt", help="output pixel format (as runtime.stream)")
    p.add_argument("--resize", nargs="?", const="stretch", choices=["stretch", "pad"], help="as runtime.stream")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars (default: when stderr is a terminal)")
    a = p.parse_args(argv)
    if a.workers is not None and a.workers < 1:
        p.error(f"--workers must be at least 1, got {a.workers}")
    if a.retries < 0:
        p.error(f"--retries must be at least 0, got {a.retries}")
    if a.ext and not a.ext.startswith("."):
        a.ext = "." + a.ext
    try:
        a.sources = find_inputs(a.inputs, a.input_list)
    except (ValueError, OSError) as e:
        p.error(str(e))
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    import ray
    jobs = plan_jobs(a.sources, a.out, a.ext)
    connect_ray(a.address)
    try:
        resources = ray.cluster_resources()
        gpus = a.gpus_per_worker if a.gpus_per_worker is not None else (1 if resources.get("GPU") else 0)
        if gpus and not resources.get("GPU"):
            print("error: --gpus-per-worker > 0 but the Ray cluster has no GPU", file=sys.stderr)
            return EXIT_USAGE
        fits = int(resources.get("GPU", 0) // gpus) if gpus else int(resources.get("CPU", 1) // a.cpus_per_worker)
        workers = a.workers or max(1, fits)
        options = {"codec": a.codec, "crf": a.crf, "pix_fmt": a.pix_fmt, "resize": a.resize}
        run = BatchRun(a.engine, jobs, workers=workers, gpus_per_worker=gpus, cpus_per_worker=a.cpus_per_worker,
                       retries=a.retries, backend=a.backend, options=options, progress=a.progress)
        try:
            results = run.run()
        except RuntimeSetupError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_FAILED
    finally:
        ray.shutdown()
    print(summary_table(results, run.events, run.seconds), file=sys.stderr)
    report_path = Path(a.report or Path(a.out) / "batch-report.json")
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report(run), indent=1))
    return EXIT_FAILED if any(r.status == "failed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
