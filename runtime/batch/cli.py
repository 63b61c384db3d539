"""python -m runtime.batch (runtime/batch/__main__.py runs main()): the command line, the summary table and the JSON report."""
import argparse
import dataclasses
import json
import os
import signal
import sys
from pathlib import Path

from . import __doc__ as DOC
from ..errors import RuntimeSetupError
from .jobs import FileResult, find_inputs, plan_jobs
from .pool import BatchRun, connect_ray

EXIT_FAILED, EXIT_USAGE = 1, 2
STATUSES = ("ok", "failed", "skipped", "stopped")


def summary_table(results: list[FileResult], events: list[str], seconds: float) -> str:
    rows = [("file", "status", "frames", "fps", "seconds", "tries", "reason")]
    for r in results:
        rows.append((Path(r.source).name, r.status, str(r.frames), f"{r.fps:.1f}", f"{r.seconds:.1f}",
                     str(r.attempts), r.reason))
    widths = [max(len(row[i]) for row in rows) for i in range(6)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row[:6], widths)) + "  " + row[6] for row in rows]
    count = {s: sum(r.status == s for r in results) for s in STATUSES}
    frames = sum(r.frames for r in results)
    stopped = f", {count['stopped']} stopped" if count["stopped"] else ""
    lines.append(f"{count['ok']} ok, {count['failed']} failed, {count['skipped']} skipped{stopped}; {frames} frames in "
                 f"{seconds:.1f} s ({frames / seconds if seconds else 0:.1f} frames/s, "
                 f"{count['ok'] / seconds if seconds else 0:.2f} files/s)")
    lines += [f"event: {e}" for e in events]
    return "\n".join(lines)


def report(run: BatchRun, skipped_inputs: list[str]) -> dict:
    ok = [r for r in run.results if r.status == "ok"]
    return {"engine": run.engine, "workers": run.workers, "gpus_per_worker": run.gpus, "seconds": round(run.seconds, 3),
            "workers_ready_seconds": round(run.ready_seconds, 3),
            "files_per_second": round(len(ok) / run.seconds, 4) if run.seconds else 0,
            "counts": {s: sum(r.status == s for r in run.results) for s in STATUSES},
            "stopped": run.stopped, "events": run.events, "inputs_left_out": skipped_inputs,
            "files": [{**dataclasses.asdict(r), "fps": round(r.fps, 3), "seconds": round(r.seconds, 3)}
                      for r in run.results]}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m runtime.batch", description=DOC,
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
    a.report = a.report or str(Path(a.out) / "batch-report.json")
    # Checked here, before Ray starts and the workers load the model: a folder that cannot be
    # written would fail every file, and the report last.
    for folder, what in ((a.out, "--out"), (os.path.dirname(os.path.abspath(a.report)), "the report's folder")):
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            p.error(f"{what} {folder}: cannot make this folder ({e.strerror})")
        if not os.access(folder, os.W_OK | os.X_OK):
            p.error(f"{what} {folder}: not writable")
    if os.path.isdir(a.report):
        p.error(f"--report {a.report} is a folder")
    a.skipped_inputs = []
    try:
        a.sources = find_inputs(a.inputs, a.input_list, exclude=[a.out, a.report], skipped=a.skipped_inputs)
        a.jobs = plan_jobs(a.sources, a.out, a.ext)
    except (ValueError, OSError) as e:
        p.error(str(e))
    return a


def main(argv=None) -> int:
    """Exit status 0, 1 (a file failed, or Ray could not start) or 2 (bad arguments); 128 + N after
    signal N (SIGINT, SIGTERM): the files in progress are abandoned, the summary and report written."""
    a = parse_args(argv)
    import ray
    signals = []            # the signals received, from Ray's start on
    run = None

    def on_signal(signum, frame):
        signals.append(signum)
        if run is not None:
            run.stop(signal.Signals(signum).name)
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    joined = False
    try:
        joined = connect_ray(a.address)
        for signum in previous:          # again: ray.init() put Ray's own handlers in (SIGTERM: exit 1)
            signal.signal(signum, on_signal)
        resources = ray.cluster_resources()
        gpus = a.gpus_per_worker if a.gpus_per_worker is not None else (1 if resources.get("GPU") else 0)
        if gpus and not resources.get("GPU"):
            print("error: --gpus-per-worker > 0 but the Ray cluster has no GPU", file=sys.stderr)
            return EXIT_USAGE
        fits = int(resources.get("GPU", 0) // gpus) if gpus else int(resources.get("CPU", 1) // a.cpus_per_worker)
        workers = a.workers or max(1, fits)
        options = {"codec": a.codec, "crf": a.crf, "pix_fmt": a.pix_fmt, "resize": a.resize}
        run = BatchRun(a.engine, a.jobs, workers=workers, gpus_per_worker=gpus, cpus_per_worker=a.cpus_per_worker,
                       retries=a.retries, backend=a.backend, options=options, progress=a.progress)
        if signals:                                      # while Ray was starting
            run.stop(signal.Signals(signals[0]).name)
        results = run.run()
    except RuntimeSetupError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if joined:
            ray.shutdown()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    events = [f"left out: {why}" for why in a.skipped_inputs] + run.events
    print(summary_table(results, events, run.seconds), file=sys.stderr)
    Path(a.report).write_text(json.dumps(report(run, a.skipped_inputs), indent=1))
    if signals:
        return 128 + signals[0]
    return EXIT_FAILED if any(r.status == "failed" for r in results) else 0
